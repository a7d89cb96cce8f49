"""Peak memory of `mentor run` with a TF-IDF student on a large synthetic text pool, for this
checkout and for an older commit (before TF-IDF stayed sparse), measured in one run.

    PYTHONPATH=. .venv/bin/python scripts/tfidf_memory.py --n 100000 --before 31711df

Writes a Parquet text file (`--n` texts of 20-40 words from a 30,000-word Zipf vocabulary, 5
classes) and a teacher file once, then runs `python -m mentor.cli run` on it as a fresh process
per source tree (the older tree is `git archive`d into a temporary folder) and reads each child's
peak RSS from the kernel (`os.wait4`). One epoch, no baseline: the pool's featurized matrix is
what differs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def write_data(folder: Path, n: int, seed: int = 0) -> tuple[Path, Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    data, teacher = folder / f"texts-{n}.parquet", folder / f"teacher-{n}.parquet"
    if data.exists() and teacher.exists():
        return data, teacher
    rng = np.random.default_rng(seed)
    vocab = np.array([f"w{i}" for i in range(30000)])
    zipf = 1.0 / np.arange(1, len(vocab) + 1)
    y = rng.integers(0, 5, n)
    lengths = rng.integers(20, 41, n)
    texts = [""] * n
    for c in range(5):  # each class prefers its own fifth of the vocabulary
        rows = np.flatnonzero(y == c)
        p = zipf * np.where(np.arange(len(vocab)) % 5 == c, 4.0, 1.0)
        words = rng.choice(len(vocab), size=int(lengths[rows].sum()), p=p / p.sum())
        for r, chunk in zip(rows, np.split(words, np.cumsum(lengths[rows])[:-1])):
            texts[r] = " ".join(vocab[chunk])
    ids = [f"x{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "text": texts, "label": y.tolist()}), data)
    probs = np.full((n, 5), 0.04) + 0.8 * np.eye(5)[np.where(rng.uniform(size=n) < 0.8, y, rng.integers(0, 5, n))]
    pq.write_table(pa.table({"id": ids, "probs": [list(p) for p in probs]}), teacher)
    return data, teacher


def run_tree(tree: Path, config: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    t0 = time.perf_counter()
    with open(config.with_suffix(".log"), "w") as log:
        # cwd = the tree: `python -m` puts the working folder first on sys.path, before PYTHONPATH
        proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "run", str(config), "--force"], env=env,
                                cwd=tree, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit(f"{tree}: mentor run failed ({status}); see {config.with_suffix('.log')}")
    return {"tree": str(tree), "peak_rss_mb": usage.ru_maxrss / 1024, "seconds": time.perf_counter() - t0}


def matrix_sizes(data: Path) -> None:
    """Child mode: fit the TF-IDF featurizer on the texts (A ∪ U in the run) and print the pool
    matrix's size as CSR and as a dense float32 array; the parent reads this process's peak RSS."""
    import pyarrow.parquet as pq
    from mentor.students.models import Featurizer
    texts = pq.read_table(data, columns=["text"]).column("text").to_pylist()
    x = Featurizer("tfidf").fit(texts).transform(texts[4000:])
    print(json.dumps({"pool_rows": x.shape[0], "features": x.shape[1], "nonzeros_per_row": x.nnz / x.shape[0],
                      "csr_mb": (x.data.nbytes + x.indices.nbytes + x.indptr.nbytes) / 2 ** 20,
                      "dense_mb": x.shape[0] * x.shape[1] * 4 / 2 ** 20}))


def fit_peak(data: Path) -> dict:
    proc = subprocess.Popen([sys.executable, __file__, "--matrix-of", str(data)], cwd=ROOT, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, text=True)
    out = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    if status != 0:
        raise SystemExit("the featurizer-only process failed")
    return {**json.loads(out.strip().splitlines()[-1]), "fit_and_transform_peak_rss_mb": usage.ru_maxrss / 1024}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--before", default=None, help="a commit of this repository to compare with (e.g. 31711df)")
    ap.add_argument("--work-dir", type=Path, default=Path(tempfile.gettempdir()) / "mentor-tfidf-memory")
    ap.add_argument("--matrix-of", type=Path, help=argparse.SUPPRESS)  # child mode, see matrix_sizes
    args = ap.parse_args()
    if args.matrix_of:
        return matrix_sizes(args.matrix_of)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    data, teacher = write_data(args.work_dir, args.n)
    trees = [("after (this checkout)", ROOT)]
    if args.before:
        old = args.work_dir / f"tree-{args.before}"
        if not old.exists():
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(ROOT), "archive", args.before, "mentor"], check=True,
                                     capture_output=True).stdout
            subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
        trees.insert(0, (f"before ({args.before})", old))
    rows = []
    for name, tree in trees:
        cfg = {"output_dir": str(args.work_dir / f"run-{tree.name}"), "method": "vanilla-soft", "baseline": False,
               "data": {"path": str(data)}, "split": {"n_labeled": 1000, "n_val": 1000, "n_test": 2000},
               "teacher": {"kind": "file", "path": str(teacher)}, "student": {"kind": "tfidf"},
               "train": {"epochs": 1, "min_steps": 0, "device": "cpu"}}
        path = args.work_dir / f"config-{tree.name}.yaml"
        path.write_text(json.dumps(cfg))
        row = {"version": name, "n_texts": args.n, **run_tree(tree, path)}
        m = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
        row["test_accuracy"] = m["test_accuracy"]
        rows.append(row)
        print(json.dumps(row))
    print("\n| version | texts | peak RSS (MB) | seconds | test accuracy |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['version']} | {r['n_texts']:,} | {r['peak_rss_mb']:.0f} | {r['seconds']:.0f} | "
              f"{100 * r['test_accuracy']:.2f} |")
    print("\nthe featurizer alone (fit on all texts, transform the pool), in a fresh process:",
          json.dumps(fit_peak(data)))
    if len(rows) == 2:
        print(f"\npeak RSS before / after: {rows[0]['peak_rss_mb'] / rows[1]['peak_rss_mb']:.2f}x")


if __name__ == "__main__":
    main()
