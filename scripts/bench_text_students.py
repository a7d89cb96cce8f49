"""Text students side by side: TF-IDF + logistic vs MiniLM embedding + head, same teacher, split and
methods (the standard suite's fortunes entry: MiniLM + logistic teacher trained on A).

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/bench_text_students.py \
        --seeds 3 --labeled 500 --json benchmarks/students-text.jsonl

Rows are `mentor bench quality` rows (one per data set, student, method, seed) with a `student`
column; the printed table gives test accuracy (mean ± std over seeds) per student and method and
the embedding student's gain over TF-IDF paired by seed (same split, teacher and store).
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from mentor.bench.quality import quality, suite_configs
from mentor.students.embedding import ENCODED

METHODS = ["teacher", "labeled-only", "vanilla-soft", "vanilla-hard", "auto"]


def configs(labeled: int, work_dir: Path, head: str, min_steps: int | None = None,
            store: Path | None = None) -> dict[str, dict]:
    base = {**suite_configs("standard")["fortunes/A500"]}
    base["split"] = {**base["split"], "n_labeled": labeled}
    if min_steps is not None:
        base["train"] = {**base["train"], "min_steps": min_steps}
    if store is not None:  # one seed: both students read the teacher outputs stored once
        base["store"] = {"path": str(store.resolve())}
    embedding = {"kind": "embedding", "head": head, "embedding_cache": str((work_dir / "embedding-cache").resolve())}
    if head == "mlp":
        embedding["hidden"] = [256]
    return {f"fortunes/A{labeled}/tfidf": base,
            f"fortunes/A{labeled}/embedding-{head}": {**base, "student": embedding}}


def table(rows: list[dict]) -> str:
    students = list(dict.fromkeys(r["dataset"] for r in rows))
    cell = {(r["dataset"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in rows}
    out = ["| method | " + " | ".join(s.rsplit("/", 1)[1] for s in students) + " | "
           + f"{students[-1].rsplit('/', 1)[1]} − {students[0].rsplit('/', 1)[1]} (paired) |",
           "|---|" + "---|" * (len(students) + 1)]
    for m in METHODS:
        vals, seeds = [], sorted({s for (d, mm, s) in cell if mm == m})
        for d in students:
            a = np.array([cell[d, m, s] for s in seeds if (d, m, s) in cell])
            vals.append(f"{a.mean():.2f} ± {a.std(ddof=1) if len(a) > 1 else 0:.2f}" if len(a) else "")
        diff = np.array([cell[students[-1], m, s] - cell[students[0], m, s] for s in seeds
                         if (students[-1], m, s) in cell and (students[0], m, s) in cell])
        paired = f"{diff.mean():+.2f} ± {diff.std(ddof=1) if len(diff) > 1 else 0:.2f}" if m != "teacher" else ""
        out.append(f"| {m} | " + " | ".join(vals) + f" | {paired} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed + seeds - 1 "
                    "(one process per seed side by side; concatenate their --json files)")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of " + ",".join(METHODS))
    ap.add_argument("--min-steps", type=int, default=None, help="train.min_steps (default: the suite's, 2000)")
    ap.add_argument("--labeled", type=int, default=500)
    ap.add_argument("--head", choices=["logistic", "mlp"], default="logistic")
    ap.add_argument("--json", type=Path, default=Path("benchmarks/students-text.jsonl"))
    ap.add_argument("--work-dir", type=Path, default=Path("bench-out/students"))
    ap.add_argument("--students", default="tfidf,embedding", help="which of tfidf,embedding to run (processes "
                    "running one each can be side by side; concatenate their --json files for the table)")
    ap.add_argument("--table", type=Path, nargs="*", help="only print the table of these row files")
    args = ap.parse_args()
    if args.table:
        print(table([json.loads(line) for p in args.table for line in p.read_text().splitlines() if line.strip()]))
        return
    t0 = time.perf_counter()
    wanted = args.students.split(",")
    store = args.work_dir / f"store-seed-{args.first_seed}" if args.seeds == 1 else None
    chosen = {k: v for k, v in configs(args.labeled, args.work_dir, args.head, args.min_steps, store).items()
              if k.rsplit("/", 1)[1].split("-")[0] in wanted}
    rows = quality("standard", seeds=args.seeds, methods=args.methods.split(","), json_out=args.json, work_dir=args.work_dir,
                   configs=chosen, first_seed=args.first_seed)
    print(table(rows))
    print(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "texts_encoded_by_student_and_teacher": ENCODED,
                      "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}"}))


if __name__ == "__main__":
    main()
