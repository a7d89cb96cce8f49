"""Fine-tuned MiniLM student vs the TF-IDF student on fortunes, same teacher and labels.

    python -m mentor.bench.transformer_student --seeds 2 --n-pool 2000 --max-length 48 --freeze-layers 3 \
        --epochs 1 --json rows.jsonl

Per seed: one split and one MiniLM+head teacher trained on A (the `fortunes/A500` entry of the
quality suite), its outputs stored once; then each student is distilled with `vanilla-soft` from
those same stored outputs. Rows: dataset, student, method, seed, test_accuracy, teacher_accuracy,
train_seconds (and for the transformer, the ONNX export's largest probability difference on V).
The summary pairs the two students by seed (same split, teacher and labels).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from ..config import parse_config
from .quality import _append_row, _mean_std, labeled_seed, suite_configs


def student_configs(*, max_length: int, epochs: int, batch_size: int, freeze_layers: int) -> dict[str, dict]:
    """The two students compared: TF-IDF + logistic (the suite's settings) and fine-tuned MiniLM."""
    return {"tfidf": {"student": {"kind": "tfidf"}, "train": {"epochs": 20}},
            "transformer": {"student": {"kind": "transformer", "max_length": max_length,
                                        "freeze_layers": freeze_layers},
                            "train": {"epochs": epochs, "batch_size": batch_size}}}


def run(seeds: int = 2, *, first_seed: int = 0, max_length: int = 64, epochs: int = 2, batch_size: int = 32,
        freeze_layers: int = 0, method: str = "vanilla-soft", n_pool: int | None = None, onnx: bool = True, json_out: Path | None = None,
        work_dir: Path = Path("bench-out/transformer-student"), log=print) -> list[dict]:
    from ..evaluate import accuracy
    from ..pipeline import RunContext, load_student, student_test_probs, train
    template = suite_configs("standard")["fortunes/A500"]
    if n_pool:
        template = {**template, "split": {**template["split"], "n_pool": n_pool}}
    students = student_configs(max_length=max_length, epochs=epochs, batch_size=batch_size,
                               freeze_layers=freeze_layers)
    if json_out is not None and Path(json_out).exists() and first_seed == 0:  # later seeds append
        Path(json_out).unlink()
    rows = []
    for seed in range(first_seed, first_seed + seeds):
        base_cfg = parse_config({**template, **students["tfidf"], "seed": seed, "baseline": False,
                                 "output_dir": str(Path(work_dir) / f"seed-{seed}")})
        t0 = time.perf_counter()
        ctx, store, t_acc = labeled_seed(base_cfg)
        y_test = ctx.data.labels[ctx.splits.test]
        log(f"seed {seed}: teacher (MiniLM + head on {len(ctx.splits.labeled)} labels) test accuracy "
            f"{100 * t_acc:.2f}; setup {time.perf_counter() - t0:.0f} s")
        for name, over in students.items():
            # same data, split, store and run folder; only the student and its training differ
            cfg = parse_config({**template, **over, "seed": seed, "baseline": False, "output_dir": base_cfg.output_dir,
                                "method": method})
            sctx = RunContext(cfg, ctx.data, ctx.splits, ctx.out)
            t1 = time.perf_counter()
            info = train(sctx, store, method=method, name=f"{name}-{method}")
            train_s = time.perf_counter() - t1
            probs = student_test_probs(sctx, f"{name}-{method}")
            row = {"dataset": "fortunes/A500", "student": name, "method": method, "seed": seed,
                   "test_accuracy": accuracy(probs, y_test), "teacher_accuracy": t_acc, "train_seconds": train_s,
                   "epochs": info.get("epochs"), "n_labeled": len(ctx.splits.labeled), "n_pool": len(ctx.splits.pool),
                   "n_test": len(y_test), "student_config": cfg.student.model_dump(), "train_config": cfg.train.model_dump()}
            if name == "transformer" and onnx:
                row["onnx_max_abs_diff"] = _onnx_diff(sctx, f"{name}-{method}", load_student)
            rows.append(row)
            _append_row(json_out, row)
            log(f"seed {seed} {name:12s} {method} test_accuracy={100 * row['test_accuracy']:.2f} "
                f"train {train_s:.0f} s" + (f" onnx diff {row['onnx_max_abs_diff']:.1e}" if "onnx_max_abs_diff" in row
                                            else ""))
    return rows


def _onnx_diff(ctx, name: str, load_student) -> float | None:
    """Export the trained transformer student to ONNX and compare probabilities on V (None without onnxruntime)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return None
    from ..students.hf import check_onnx_hf, export_onnx_hf
    model, feat, _ = load_student(ctx, name)
    path = export_onnx_hf(model, ctx.out / f"{name}.onnx")
    return check_onnx_hf(path, model, feat.transform(ctx.data.features[ctx.splits.val]))


def summarize(rows: list[dict]) -> str:
    """Markdown: test accuracy and train seconds per student (mean ± std over seeds), and the
    transformer − TF-IDF difference paired by seed."""
    by = {}
    for r in rows:
        by.setdefault(r["student"], {})[r["seed"]] = r
    teacher = [r["teacher_accuracy"] * 100 for r in by.get("tfidf", by.get("transformer", {})).values()]
    out = ["| student | test accuracy (%) | train seconds | seeds |", "|---|---|---|---|",
           f"| teacher (MiniLM + logistic head) | {_mean_std(teacher)} | | {len(teacher)} |"]
    for name, per in by.items():
        out.append(f"| {name} | {_mean_std([100 * r['test_accuracy'] for r in per.values()])} | "
                   f"{_mean_std([r['train_seconds'] for r in per.values()])} | {len(per)} |")
    if "tfidf" in by and "transformer" in by:
        seeds = sorted(set(by["tfidf"]) & set(by["transformer"]))
        diff = [100 * (by["transformer"][s]["test_accuracy"] - by["tfidf"][s]["test_accuracy"]) for s in seeds]
        out.append(f"\ntransformer − tfidf, paired by seed: {_mean_std(diff, signed=True)} points "
                   f"(per seed: {', '.join(f'{d:+.2f}' for d in diff)})")
    return "\n".join(out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1")
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--freeze-layers", type=int, default=0)
    p.add_argument("--method", default="vanilla-soft")
    p.add_argument("--n-pool", type=int, default=None, help="cap the pool (default: all of fortunes left)")
    p.add_argument("--no-onnx", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--work-dir", type=Path, default=Path("bench-out/transformer-student"))
    a = p.parse_args(argv)
    rows = run(a.seeds, first_seed=a.first_seed, max_length=a.max_length, epochs=a.epochs, batch_size=a.batch_size,
               freeze_layers=a.freeze_layers, method=a.method, n_pool=a.n_pool, onnx=not a.no_onnx,
               json_out=a.json, work_dir=a.work_dir)
    if a.json and a.first_seed:  # the summary of every row in the file (earlier seeds appended there)
        rows = [json.loads(line) for line in a.json.read_text().splitlines() if line.strip()]
    print(summarize(rows))
    if a.json:
        print(f"rows: {a.json} ({len(rows)})")


if __name__ == "__main__":
    main()

