"""`mentor bench students --suite ...`: students you can ship, and training them from disk.

One entry point (`bench_students`) dispatches on the suite; each suite is its own function in
SUITES, returning JSON-ready rows:

- `memory`: peak RSS of training from disk (`train.data_path: stream`) vs the in-memory path at
  pool sizes of 100k, 1M and 3M synthetic examples (rows `pool_size`, `path`, `peak_rss_mb`).
  Every measurement runs in a fresh subprocess (`python -m mentor.bench.students memory-worker`),
  so peak RSS is that of one training run and nothing else.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from ..errors import ConfigError

# ---------------------------------------------------------------------------------------------- suite: memory

MEMORY_SIZES = (100_000, 1_000_000, 3_000_000)
MEMORY_FEATURES, MEMORY_CLASSES, MEMORY_LABELED, MEMORY_VAL = 32, 10, 1000, 2000
MEMORY_LIMIT_MB = 24 * 1024  # the in-memory path is run only where its estimate fits this
MEMORY_TRAIN = {"epochs": 1, "min_steps": 0, "batch_size": 512, "lr": 1e-3}
MEMORY_METHOD = "weighted-margin"  # per-example weights from the reliability curve, per batch when streaming


def _synthetic(n: int, seed: int, offset: int = 0):
    """Features, true labels and teacher probabilities of a fixed random linear task (chunk-stable)."""
    w = np.random.default_rng(1234).normal(size=(MEMORY_FEATURES, MEMORY_CLASSES)).astype(np.float32)
    x = np.random.default_rng([seed, offset]).normal(size=(n, MEMORY_FEATURES)).astype(np.float32)
    logits = x @ w
    y = logits.argmax(1)
    noisy = logits + np.random.default_rng([seed, offset, 1]).normal(scale=1.0, size=logits.shape).astype(np.float32)
    t = np.exp(noisy - noisy.max(1, keepdims=True))
    return x, y, (t / t.sum(1, keepdims=True)).astype(np.float32)


def _ids(start: int, n: int) -> np.ndarray:
    return np.char.add("u", np.arange(start, start + n).astype(str))


def memory_data(work_dir: Path, n: int, chunk: int = 65536) -> tuple[Path, Path]:
    """The pool Parquet file and its teacher store for pool size `n`, written once a chunk at a time."""
    from ..store import TeacherStore
    from ..students.stream import write_pool_chunks
    folder = Path(work_dir) / f"pool-{n}"
    pool, store = folder / "pool.parquet", folder / "store"
    if (folder / "_done").exists():
        return pool, store
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    st = TeacherStore(store, fingerprint="synthetic-linear-teacher", n_classes=MEMORY_CLASSES, shard_size=chunk)

    def chunks():
        for s in range(0, n, chunk):
            x, _, t = _synthetic(min(chunk, n - s), seed=0, offset=s)
            st.write(_ids(s, len(x)), t)
            yield _ids(s, len(x)), x
    write_pool_chunks(pool, chunks())
    st.close()
    (folder / "_done").write_text("")
    return pool, store


def _small_sets():
    """A (labeled) and V (labeled, with teacher outputs): small, in memory on both paths."""
    xa, ya, _ = _synthetic(MEMORY_LABELED, seed=1)
    xv, yv, tv = _synthetic(MEMORY_VAL, seed=2)
    return xa, ya, xv, yv, tv


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_worker(pool_file: Path, store_path: Path, path: str, work_dir: Path) -> dict:
    """One training run on one path, in this process; returns its timings and peak RSS."""
    import torch

    from ..methods import MethodContext, plan_method, train_with_plan
    from ..store import TeacherStore
    from ..students.models import build_model
    from ..students.train import TrainConfig
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    xa, ya, xv, yv, tv = _small_sets()
    cfg = TrainConfig(**MEMORY_TRAIN, seed=0, device="cpu")
    torch.manual_seed(0)
    model = build_model("mlp", in_features=MEMORY_FEATURES, n_classes=MEMORY_CLASSES, hidden=(64,))
    store = TeacherStore.open(store_path)
    row = {"peak_rss_after_store_open_mb": round(_peak_mb(), 1)}
    if path == "stream":
        from ..students.stream import StreamingPool, join_pool, stream_plan, train_student_stream
        joined = join_pool(pool_file, store, Path(work_dir) / "joined")
        row["prepare_seconds"] = round(time.perf_counter() - t0, 2)
        plan = stream_plan(MEMORY_METHOD, n_classes=MEMORY_CLASSES, joined_dir=joined, teacher_probs_val=tv,
                           val_labels=yv, n_epochs=1)
        pool = StreamingPool(joined, xa, ya, batch_size=cfg.batch_size, seed=cfg.seed)
        row["peak_rss_after_prepare_mb"] = round(_peak_mb(), 1)
        result = train_student_stream(model, pool, plan=plan, config=cfg)
    else:
        import pyarrow.parquet as pq

        from ..students.stream import FEATURES, batch_features
        table = pq.read_table(pool_file)
        ids = np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=str)
        x_pool = batch_features(table, [FEATURES])
        del table
        t_pool = store.read(ids)
        row["prepare_seconds"] = round(time.perf_counter() - t0, 2)
        plan = plan_method(MEMORY_METHOD, MethodContext(n_classes=MEMORY_CLASSES, teacher_probs_pool=t_pool,
                                                        teacher_probs_val=tv, val_labels=yv, n_epochs=1))
        row["peak_rss_after_prepare_mb"] = round(_peak_mb(), 1)
        result = train_with_plan(model, xa, ya, x_pool, t_pool, plan, cfg)
    with torch.no_grad():
        xt, yt, _ = _synthetic(20000, seed=3)
        acc = float((model(torch.from_numpy(xt)).argmax(1).numpy() == yt).mean())
    return {**row, "train_seconds": round(result.seconds, 2), "epochs": len(result.history),
            "test_accuracy": round(acc, 4), "peak_rss_mb": round(_peak_mb(), 1)}


def _estimate_in_memory_mb(n: int) -> float:
    """A generous estimate of the in-memory path's peak: features, teacher outputs and ids, a few copies."""
    return n * (MEMORY_FEATURES * 4 + MEMORY_CLASSES * 4 + 64) * 4 / 2 ** 20 + 1024


def bench_memory(*, work_dir: Path, sizes=MEMORY_SIZES, paths=("in-memory", "stream"), **_) -> list[dict]:
    """Peak RSS of one training epoch (weighted-margin, MLP 32-64-10) per pool size and path."""
    rows = []
    for n in sizes:
        pool_file, store_path = memory_data(work_dir, n)
        for path in paths:
            row = {"suite": "memory", "pool_size": n, "path": path, "features": MEMORY_FEATURES,
                   "classes": MEMORY_CLASSES, "labeled": MEMORY_LABELED, "method": MEMORY_METHOD, **MEMORY_TRAIN}
            if path == "in-memory" and _estimate_in_memory_mb(n) > MEMORY_LIMIT_MB:
                rows.append({**row, "peak_rss_mb": None, "note": "not run: does not fit in 24 GB"})
                continue
            if path == "stream":  # the join is part of what is measured
                import shutil
                shutil.rmtree(Path(work_dir) / f"pool-{n}" / "joined", ignore_errors=True)
            cmd = [sys.executable, "-m", "mentor.bench.students", "memory-worker", str(pool_file), str(store_path),
                   path, str(Path(work_dir) / f"pool-{n}")]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({**row, "peak_rss_mb": None, "error": out.stderr.strip().splitlines()[-1:]})
            else:
                rows.append({**row, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


# ---------------------------------------------------------------------------------------------- dispatch

SUITES = {"memory": bench_memory}


def bench_students(suite: str, *, seeds: int = 1, json_out: Path | None = None,
                   work_dir: Path = Path("bench-out/students"), **options) -> list[dict]:
    """Run one suite of `mentor bench students`; rows are also written to `json_out` (JSON list)."""
    if suite not in SUITES:
        raise ConfigError(f"unknown students suite {suite!r}; choose one of {', '.join(sorted(SUITES))}.")
    rows = SUITES[suite](work_dir=Path(work_dir), seeds=seeds, **options)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()}
    rows = [{**r, "machine": machine} for r in rows]
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(rows, indent=2))
    return rows


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "memory-worker":
    print(json.dumps(memory_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5]))))
