"""`mentor bench students`: students a user can ship, side by side, from the same teacher outputs.

    mentor bench students --suite smoke|standard --seeds N --json OUT

A suite is a runner in `SUITES` (suite name -> function), so other suites (e.g. `memory`) plug in
beside these. The `smoke` and `standard` suites run *entries*: one data set, one split, one teacher
trained on A and labeled once per seed into the run's store; then every (student, method) of the
entry is trained from those same stored outputs, scored on test, and written as a model folder
(mentor.students.export: safetensors + JSON + model.onnx checked within 1e-4, CPU latency).
The `llm` suite's entries have the LLM teacher of `bench llm --suite standard` (SmolLM2, zero-shot,
label likelihood): its answers do not depend on the seed, so every seed shares one store
(<work_dir>/llm/<entry>/store) and a text in several seeds' splits, or a rerun, is paid once.

One JSON row per (entry, student, method, seed) with dataset, student, method, seed,
test_accuracy, teacher_accuracy, params, size_mb (weights file; the transformer's is its
save_pretrained folder), latency_ms_torch and latency_ms_onnx ({"b1", "b64"}: median ms per example at
batch 1 and batch 64, CPU, the model alone — the featurizer (TF-IDF, the frozen encoder of the
embedding student, the tokenizer) is not included; also flat as latency_ms_torch_b1, ..._b64),
onnx_max_abs_diff (max |p_onnx − p_torch| on V; null with onnx_note when the student does not
export to a feature-matrix graph), train_seconds (the `train` call: featurising, auto's candidate
trainings, the final training), peak_rss_mb (the largest resident set of this process sampled every
20 ms while the row trained, scored and exported; it includes what the process already held: the
data, the encoder, earlier rows' caches).

The `memory` suite: peak RSS of training from disk (`train.data_path: stream`) vs the in-memory path
at pool sizes of 100k, 1M and 3M synthetic examples (rows `pool_size`, `path`, `peak_rss_mb`; the
rows file is a JSON list); `memory-sparse`: the same with TF-IDF-like sparse rows (16,384 columns,
30 nonzero), a CSR matrix in memory and sparse rows on disk. Every measurement runs in a fresh subprocess (`python -m
mentor.bench.students memory-worker`), so peak RSS is that of one training run and nothing else.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import ConfigError
from .quality import _append_row, _mean_std, labeled_seed

# vanilla-soft, vanilla-hard and auto for every student (the issue's evidence grid)
METHODS = ["vanilla-soft", "vanilla-hard", "auto"]
# auto's candidates where a training costs minutes on CPU (the fine-tuned CNN and transformer): the
# candidates every row of the grid has, plus the student that never sees the pool; the default
# candidate list (mentor.methods.AUTO_CANDIDATES, 9 candidates, 2-fold cross-fitting) is used elsewhere
CHEAP_AUTO = {"auto_candidates": ["labeled-only", "vanilla-soft", "vanilla-hard"], "auto_folds": 1}
LABELED_ONLY = "labeled-only"  # a --methods entry: the student trained on A alone (no teacher)


def cheap_auto(overrides: dict | None) -> dict:
    """CHEAP_AUTO; cross-fitted (2 folds) when train.select_on lets each student choose its epoch on V,
    so that the V examples that chose a candidate's epoch do not also judge it."""
    selects = str((overrides or {}).get("train.select_on", "last")) != "last"
    return {**CHEAP_AUTO, "auto_folds": 2} if selects else CHEAP_AUTO


def _method_names() -> list[str]:
    from ..methods import METHODS as registered
    return list(registered)


def _entries(suite: str) -> dict[str, dict]:
    """Entry name -> {"base": config (data, split, teacher), "students": {name: config overrides},
    "methods", "slow": students whose auto uses CHEAP_AUTO, "default_students": those run unless
    --students names others (default all)}.

    standard is sized for a 2-core CPU, reduced from the quality suite: Fashion-MNIST with A=1000, a
    pool of 1,500 and 2,000 test images (the EfficientNet sees 48 px images, 2 epochs); fortunes and
    fine-foods with A=500 and the pool capped at 2,000 (the transformer: max_length 48, the embeddings and
    first 3 of its 6 layers frozen, 1 epoch)."""
    effnet = {"student": {"kind": "efficientnet-lite0", "image_size": 48},
              "train": {"epochs": 2, "min_steps": 0, "batch_size": 64, "lr": 1e-3}}
    mlp = {"student": {"kind": "mlp", "hidden": [256, 256]}, "train": {"epochs": 10}}
    text_students = {
        "tfidf": {"student": {"kind": "tfidf"}, "train": {"epochs": 20}},
        "embedding": {"student": {"kind": "embedding"}, "train": {"epochs": 20}},
        "transformer": {"student": {"kind": "transformer", "max_length": 48, "freeze_layers": 3},
                        "train": {"epochs": 1, "min_steps": 0, "batch_size": 32}},  # as measured (BENCHMARKS)
    }
    if suite == "smoke":  # one cheap entry, seconds: digits, a logistic teacher, an MLP student, the three methods
        return {"digits": {
            "base": {"data": {"name": "digits"}, "split": {"n_labeled": 60, "n_val": 60, "n_test": 200, "n_pool": 300},
                     "teacher": {"kind": "logistic"}},
            "students": {"mlp": {"student": {"kind": "mlp", "hidden": [32]}, "train": {"epochs": 20, "min_steps": 0}},
                         "efficientnet-lite0": {"student": {"kind": "efficientnet-lite0", "image_size": 40},
                                                "train": {"epochs": 1, "min_steps": 0, "batch_size": 32}}},
            "methods": METHODS, "slow": ["efficientnet-lite0"], "default_students": ["mlp"]}}
    if suite == "standard":
        text_split = {"n_labeled": 500, "n_val": 500, "n_test": 1000, "n_pool": 2000}
        return {
            "fashion-mnist/A1000": {
                "base": {"data": {"name": "fashion-mnist"},
                         "split": {"n_labeled": 1000, "n_val": 500, "n_test": 2000, "n_pool": 1500},
                         "teacher": {"kind": "cnn", "epochs": 30}},
                "students": {"mlp": mlp, "efficientnet-lite0": effnet}, "methods": METHODS,
                "slow": ["efficientnet-lite0"]},
            "fortunes/A500": {
                "base": {"data": {"name": "fortunes"}, "split": text_split, "teacher": {"kind": "minilm"}},
                "students": text_students, "methods": METHODS, "slow": ["transformer"]},
            "fine-foods/A500": {
                "base": {"data": {"name": "fine-foods"}, "split": {**text_split, "n_pool": 2000},
                         "teacher": {"kind": "minilm"}},
                "students": text_students, "methods": METHODS, "slow": ["transformer"]},
        }
    if suite == "llm":  # the LLM teacher of `bench llm --suite standard`, distilled into every text student
        from .llm import llm_suite, student_config
        spec = llm_suite("standard")
        return {name: {"base": {k: v for k, v in student_config(spec, name, Path()).items()
                                if k not in ("student", "train", "store")},
                       "students": text_students, "methods": METHODS, "slow": ["transformer"], "shared_store": True}
                for name in ("fortunes4", "fine-foods")}
    raise ConfigError(f"unknown students suite {suite!r}; choose one of {', '.join(SUITES)}.")


class PeakRSS:
    """The largest resident set size (MB) of this process while the block runs, sampled from /proc."""

    def __init__(self, every_s: float = 0.02):
        self.every_s, self.peak_mb = every_s, 0.0
        self._stop = threading.Event()

    @staticmethod
    def now_mb() -> float:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
        except OSError:  # not Linux: the high-water mark of the whole process
            import resource
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def _watch(self):
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self.now_mb())
            self._stop.wait(self.every_s)

    def __enter__(self):
        self.peak_mb = self.now_mb()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, self.now_mb())


def _latency(lat: dict, runtime: str) -> dict | None:
    if f"{runtime}_b1_ms" not in lat:
        return None
    return {"b1": lat[f"{runtime}_b1_ms"], "b64": lat[f"{runtime}_b64_ms"]}


def _with(config: dict, overrides: dict | None, students: bool = True) -> dict:
    """A deep copy of an entry's config with dotted overrides applied (student.* and train.* only when
    `students`: the teacher's labeling run keeps its own)."""
    import copy
    from ..config import _set_dotted
    out = copy.deepcopy(config)
    for key, value in (overrides or {}).items():
        if students or key.split(".")[0] not in ("student", "train"):
            _set_dotted(out, key, value)
    return out


def run_entries(suite: str, *, seeds: int = 2, first_seed: int = 0, entries: list[str] | None = None,
                students: list[str] | None = None, methods: list[str] | None = None, json_out: Path | None = None,
                work_dir: Path = Path("bench-out/students"), overrides: dict | None = None,
                log: Callable = print) -> list[dict]:
    """Run the suite's entries (all, or those named) for seeds first_seed .. first_seed+seeds-1.

    `overrides` (dotted keys, as `--set`) change the suite's settings, e.g. {"student.max_length": 128,
    "train.epochs": 3} for a longer transformer run on a GPU: `student.*` and `train.*` keys apply to
    every student run, the others (split, teacher, data) also to the teacher's labeling run."""
    from ..config import parse_config
    from ..evaluate import accuracy
    from ..pipeline import RunContext, student_test_probs, train, write_model_folder
    configs = _entries(suite)
    unknown = sorted(set(entries or []) - set(configs))
    if unknown:
        raise ConfigError(f"unknown entries {unknown} in suite {suite!r}; it has {sorted(configs)}.")
    bad = sorted(set(methods or []) - set(METHODS) - {LABELED_ONLY} - set(_method_names()))
    if bad:
        raise ConfigError(f"unknown methods {bad} for bench students; use {', '.join(METHODS)}, {LABELED_ONLY} (the "
                          "student trained on A alone) or another method of `mentor methods`.")
    for entry in entries or list(configs):  # a misspelt --set fails here, before any teacher is trained
        spec = configs[entry]
        parse_config(_with(spec["base"], overrides, students=False))
        for over in spec["students"].values():
            parse_config(_with({**spec["base"], **over}, overrides))
    rows = []
    for entry in entries or list(configs):
        spec = configs[entry]
        for seed in range(first_seed, first_seed + seeds):
            out_dir = Path(work_dir) / suite / entry.replace("/", "-") / f"seed-{seed}"
            shared = ({"store": {"path": str(Path(work_dir) / suite / entry.replace("/", "-") / "store")}}
                      if spec.get("shared_store") else {})
            base = parse_config(_with(spec["base"], overrides, students=False) | {
                "seed": seed, "baseline": False, "output_dir": str(out_dir)} | shared)
            t0 = time.perf_counter()
            ctx, store, t_acc = labeled_seed(base)
            y_test = ctx.data.labels[ctx.splits.test]
            log(f"{entry} seed {seed}: teacher {base.teacher.kind} test accuracy {100 * t_acc:.2f} "
                f"(setup {time.perf_counter() - t0:.0f} s)")
            for student, over in spec["students"].items():
                if student not in (students or spec.get("default_students") or spec["students"]):
                    continue
                for method in methods or spec["methods"]:
                    options = cheap_auto(overrides) if method == "auto" and student in spec.get("slow", ()) else {}
                    cfg = parse_config(_with({**spec["base"], **over}, overrides) | {
                        "seed": seed, "baseline": False, "output_dir": str(out_dir),
                        "method": "vanilla-soft" if method == LABELED_ONLY else method,
                        "method_options": options} | shared)
                    sctx = RunContext(cfg, ctx.data, ctx.splits, ctx.out)
                    name = f"{student}-{method}"
                    with PeakRSS() as rss:
                        t1 = time.perf_counter()
                        info = (train(sctx, name=name, labeled_only=True) if method == LABELED_ONLY else
                                train(sctx, store, method=method, name=name))
                        train_s = time.perf_counter() - t1
                        acc = accuracy(student_test_probs(sctx, name), y_test)
                        rec = write_model_folder(sctx, path=out_dir / "models" / name, name=name, onnx="auto")
                        onnx = rec.get("onnx") or {}
                        diff, note = onnx.get("max_abs_diff"), None if onnx.get("exported") else onnx.get("why")
                    lat = rec.get("latency_ms_per_example") or {}
                    row = {"suite": suite, "dataset": entry, "student": student, "method": method, "seed": seed,
                           "test_accuracy": acc, "teacher_accuracy": t_acc, "params": rec["params"],
                           "size_mb": rec["size_mb"]["weights"], "folder_mb": rec["size_mb"]["folder"],
                           "latency_ms_torch": _latency(lat, "torch"), "latency_ms_onnx": _latency(lat, "onnx"),
                           **{f"latency_ms_{k[:-3]}": v for k, v in lat.items() if k.endswith("_ms")},
                           "latency_threads": lat.get("threads"), "onnx_max_abs_diff": diff, "onnx_note": note,
                           "train_seconds": train_s, "peak_rss_mb": rss.peak_mb,
                           "auto_chosen": (info.get("auto") or {}).get("chosen"), "method_options": options,
                           "epochs": info.get("epochs"), "best_epoch": info.get("best_epoch"),
                           "epochs_trained": info.get("epochs_trained"), "n_labeled": len(ctx.splits.labeled),
                           "n_val": len(ctx.splits.val), "n_pool": len(ctx.splits.pool), "n_test": len(y_test),
                           "student_config": cfg.student.model_dump(), "train_config": cfg.train.model_dump(),
                           "overrides": overrides or {}, "teacher_fingerprint": store.fingerprint,
                           "store_rows": len(store), "store_calls": store.n_calls}
                    rows.append(row)
                    _append_row(json_out, row)
                    log(f"{entry} seed {seed} {student:18s} {method:12s} test {100 * acc:6.2f}  train {train_s:6.1f} s"
                        f"  onnx diff {diff if diff is None else f'{diff:.1e}'}  rss {rss.peak_mb:.0f} MB")
    return rows


def summarize(rows: list[dict], baseline: str = "vanilla-soft") -> str:
    """Markdown: per entry and student, test accuracy per method (mean ± std over seeds), the teacher,
    auto − vanilla-soft paired by seed, and size/latency/ONNX of the vanilla-soft student. Columns: the
    three methods, and labeled-only or other methods when the rows have them."""
    cols = METHODS + [m for m in dict.fromkeys(r["method"] for r in rows) if m not in METHODS]
    out = ["| data | student | teacher | " + " | ".join(cols) + f" | auto − {baseline} (paired) | auto chose | "
           "params | MB | torch ms b1 / b64 | onnx ms b1 / b64 | onnx diff | train s (" + " / ".join(cols) + ") | "
           "peak RSS MB |",
           "|---|---|---|" + "---|" * len(cols) + "---|---|---|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["dataset"], r["student"]) for r in rows))
    for data, student in keys:
        mine = [r for r in rows if r["dataset"] == data and r["student"] == student]
        by = {m: {r["seed"]: r for r in mine if r["method"] == m} for m in cols}
        teacher = _mean_std([100 * r["teacher_accuracy"] for r in {r["seed"]: r for r in mine}.values()])
        cells = [_mean_std([100 * r["test_accuracy"] for r in by[m].values()]) if by[m] else "" for m in cols]
        seeds = sorted(set(by["auto"]) & set(by[baseline]))
        paired = _mean_std([100 * (by["auto"][s]["test_accuracy"] - by[baseline][s]["test_accuracy"]) for s in seeds],
                           signed=True) if seeds else ""
        ref = next(iter(by[baseline].values()), mine[0])
        lat = lambda k: ("" if ref.get(k) is None else f"{ref[k]['b1']:.3g} / {ref[k]['b64']:.3g}")  # noqa: E731
        diff = ref.get("onnx_max_abs_diff")
        train_s = " / ".join(f"{sum(r['train_seconds'] for r in by[m].values()) / len(by[m]):.0f}" if by[m] else "-"
                             for m in cols)  # mean over seeds
        chose = ", ".join(str(by["auto"][s].get("auto_chosen")) for s in sorted(by["auto"]))
        out.append(f"| {data} | {student} | {teacher} | " + " | ".join(cells) + f" | {paired} | {chose} | "
                   f"{ref['params']:,} | "
                   f"{ref['size_mb']:.3g} | {lat('latency_ms_torch')} | {lat('latency_ms_onnx')} | "
                   f"{'' if diff is None else f'{diff:.1e}'} | "
                   f"{train_s} | {max(r['peak_rss_mb'] for r in mine):.0f} |")
    return "\n".join(out + _paired_students(rows))


def _paired_students(rows: list[dict]) -> list[str]:
    """Each student against the entry's first student (e.g. transformer − tfidf), per method, paired by
    seed: the same split, teacher outputs and labels, so the difference is the student's alone."""
    out = []
    for data in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == data]
        names = list(dict.fromkeys(r["student"] for r in mine))
        acc = {(r["student"], r["method"], r["seed"]): 100 * r["test_accuracy"] for r in mine}
        for other in names[1:]:
            for m in METHODS:
                seeds = sorted(s for (st, me, s) in acc if st == other and me == m and (names[0], m, s) in acc)
                if seeds:
                    diffs = [acc[(other, m, s)] - acc[(names[0], m, s)] for s in seeds]
                    out.append(f"- {data}, {m}: {other} − {names[0]} {_mean_std(diffs, signed=True)} "
                               f"(seeds {', '.join(map(str, seeds))}: " + ", ".join(f"{d:+.2f}" for d in diffs) + ")")
    return ([""] if out else []) + out


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


SPARSE_COLUMNS, SPARSE_NONZERO, SPARSE_BLOCK = 16384, 30, 1000  # a TF-IDF-like vocabulary; class c's words: block c


def _synthetic_sparse(n: int, seed: int, offset: int = 0):
    """Sparse rows like TF-IDF (SPARSE_NONZERO words of SPARSE_COLUMNS, l2-normalised; each word
    from the row's class block with probability 0.4), true labels and a noisy teacher (chunk-stable)."""
    import scipy.sparse as sp
    rng = np.random.default_rng([seed, offset, 7])
    y = rng.integers(0, MEMORY_CLASSES, n)
    topical = rng.uniform(size=(n, SPARSE_NONZERO)) < 0.4
    cols = np.where(topical, y[:, None] * SPARSE_BLOCK + rng.integers(0, SPARSE_BLOCK, (n, SPARSE_NONZERO)),
                    rng.integers(0, SPARSE_COLUMNS, (n, SPARSE_NONZERO)))
    x = sp.csr_matrix((np.full(n * SPARSE_NONZERO, SPARSE_NONZERO ** -0.5, np.float32), cols.reshape(-1),
                       np.arange(0, n * SPARSE_NONZERO + 1, SPARSE_NONZERO)), shape=(n, SPARSE_COLUMNS))
    x.sum_duplicates()
    counts = np.stack([((cols // SPARSE_BLOCK) == c).sum(1) for c in range(MEMORY_CLASSES)], 1).astype(np.float32)
    noisy = counts / 2 + rng.normal(scale=1.5, size=counts.shape).astype(np.float32)
    t = np.exp(noisy - noisy.max(1, keepdims=True))
    return x, y, (t / t.sum(1, keepdims=True)).astype(np.float32)


def _task(kind: str):
    return _synthetic_sparse if kind == "sparse" else _synthetic


def _n_features(kind: str) -> int:
    return SPARSE_COLUMNS if kind == "sparse" else MEMORY_FEATURES


def _ids(start: int, n: int) -> np.ndarray:
    return np.char.add("u", np.arange(start, start + n).astype(str))


def memory_data(work_dir: Path, n: int, chunk: int = 65536, kind: str = "dense") -> tuple[Path, Path]:
    """The pool Parquet file and its teacher store for pool size `n`, written once a chunk at a time
    (`kind` sparse: TF-IDF-like rows, kept sparse)."""
    from ..store import TeacherStore
    from ..students.stream import write_pool_chunks
    folder = _pool_folder(work_dir, n, kind)
    pool, store = folder / "pool.parquet", folder / "store"
    if (folder / "_done").exists():
        return pool, store
    import shutil
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    st = TeacherStore(store, fingerprint="synthetic-linear-teacher", n_classes=MEMORY_CLASSES, shard_size=chunk)

    def chunks():
        for s in range(0, n, chunk):
            x, _, t = _task(kind)(min(chunk, n - s), seed=0, offset=s)
            st.write(_ids(s, len(t)), t)
            yield _ids(s, len(t)), x
    write_pool_chunks(pool, chunks())
    st.close()
    (folder / "_done").write_text("")
    return pool, store


def _pool_folder(work_dir, n: int, kind: str) -> Path:
    return Path(work_dir) / (f"pool-{n}" if kind == "dense" else f"pool-{kind}-{n}")


def _small_sets(kind: str = "dense"):
    """A (labeled) and V (labeled, with teacher outputs): small, in memory on both paths."""
    xa, ya, _ = _task(kind)(MEMORY_LABELED, seed=1)
    xv, yv, tv = _task(kind)(MEMORY_VAL, seed=2)
    return xa, ya, xv, yv, tv


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def memory_worker(pool_file: Path, store_path: Path, path: str, work_dir: Path, kind: str = "dense") -> dict:
    """One training run on one path, in this process; returns its timings and peak RSS."""
    import torch

    from ..methods import MethodContext, plan_method, train_with_plan
    from ..store import TeacherStore
    from ..students.models import build_model
    from ..students.train import TrainConfig
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    xa, ya, xv, yv, tv = _small_sets(kind)
    cfg = TrainConfig(**MEMORY_TRAIN, seed=0, device="cpu")
    torch.manual_seed(0)
    model = build_model("mlp", in_features=_n_features(kind), n_classes=MEMORY_CLASSES, hidden=(64,))
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

        from ..students.stream import features_of, layout
        table = pq.read_table(pool_file)
        ids = np.asarray(table.column("id").to_numpy(zero_copy_only=False), dtype=str)
        x_pool = features_of(table, *layout(table.schema))  # float rows, or a CSR matrix
        del table
        t_pool = store.read(ids)
        row["prepare_seconds"] = round(time.perf_counter() - t0, 2)
        plan = plan_method(MEMORY_METHOD, MethodContext(n_classes=MEMORY_CLASSES, teacher_probs_pool=t_pool,
                                                        teacher_probs_val=tv, val_labels=yv, n_epochs=1))
        row["peak_rss_after_prepare_mb"] = round(_peak_mb(), 1)
        result = train_with_plan(model, xa, ya, x_pool, t_pool, plan, cfg)
    from ..students.train import predict_proba
    xt, yt, _ = _task(kind)(20000, seed=3)
    acc = float((predict_proba(model, xt, batch_size=1000, device="cpu").argmax(1) == yt).mean())
    return {**row, "train_seconds": round(result.seconds, 2), "epochs": len(result.history),
            "test_accuracy": round(acc, 4), "peak_rss_mb": round(_peak_mb(), 1)}


def _estimate_in_memory_mb(n: int, kind: str = "dense") -> float:
    """A generous estimate of the in-memory path's peak: features, teacher outputs and ids, a few copies."""
    row_bytes = SPARSE_NONZERO * 8 if kind == "sparse" else MEMORY_FEATURES * 4
    return n * (row_bytes + MEMORY_CLASSES * 4 + 64) * 4 / 2 ** 20 + 1024


def bench_memory(*, work_dir: Path, sizes=MEMORY_SIZES, paths=("in-memory", "stream"), kind: str = "dense",
                 **_) -> list[dict]:
    """Peak RSS of one training epoch (weighted-margin, MLP d-64-10) per pool size and path; `kind`
    sparse: TF-IDF-like rows of 16,384 columns (30 nonzero), CSR in memory, sparse on disk."""
    rows = []
    suite = "memory" if kind == "dense" else f"memory-{kind}"
    for n in sizes:
        pool_file, store_path = memory_data(work_dir, n, kind=kind)
        for path in paths:
            row = {"suite": suite, "pool_size": n, "path": path, "features": _n_features(kind),
                   **({"nonzero_per_row": SPARSE_NONZERO} if kind == "sparse" else {}),
                   "classes": MEMORY_CLASSES, "labeled": MEMORY_LABELED, "method": MEMORY_METHOD, **MEMORY_TRAIN}
            if path == "in-memory" and _estimate_in_memory_mb(n, kind) > MEMORY_LIMIT_MB:
                rows.append({**row, "peak_rss_mb": None, "note": "not run: does not fit in 24 GB"})
                continue
            if path == "stream":  # the join is part of what is measured
                import shutil
                shutil.rmtree(_pool_folder(work_dir, n, kind) / "joined", ignore_errors=True)
            cmd = [sys.executable, "-m", "mentor.bench.students", "memory-worker", str(pool_file), str(store_path),
                   path, str(_pool_folder(work_dir, n, kind)), kind]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                rows.append({**row, "peak_rss_mb": None, "error": out.stderr.strip().splitlines()[-1:]})
            else:
                rows.append({**row, **json.loads(out.stdout.strip().splitlines()[-1])})
            print(json.dumps(rows[-1]), file=sys.stderr)
    return rows


def memory_suite(*, json_out: Path | None = None, work_dir: Path = Path("bench-out/students"), sizes=MEMORY_SIZES,
                 kind: str = "dense", **_) -> list[dict]:
    """The memory suite's rows (with the machine), written to `json_out` as one JSON list."""
    rows = bench_memory(work_dir=Path(work_dir), sizes=sizes, kind=kind)
    machine = {"python": platform.python_version(), "machine": platform.machine(), "cpus": _cpus()}
    rows = [{**r, "machine": machine} for r in rows]
    if json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        Path(json_out).write_text(json.dumps(rows, indent=2))
    return rows


def _cpus() -> int:
    import os
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


SUITES: dict[str, Callable[..., list[dict]]] = {
    "smoke": lambda **kw: run_entries("smoke", **kw),
    "standard": lambda **kw: run_entries("standard", **kw),
    "llm": lambda **kw: run_entries("llm", **kw),
    "memory": memory_suite,
    "memory-sparse": lambda **kw: memory_suite(kind="sparse", **kw),
}


def bench_students(suite: str = "smoke", **kwargs) -> list[dict]:
    """Dispatch to the suite's runner (SUITES); its keyword arguments pass through."""
    if suite not in SUITES:
        raise ConfigError(f"unknown students suite {suite!r}; choose one of {', '.join(SUITES)}.")
    return SUITES[suite](**kwargs)


def read_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


if __name__ == "__main__" and len(sys.argv) in (6, 7) and sys.argv[1] == "memory-worker":
    print(json.dumps(memory_worker(Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4], Path(sys.argv[5]),
                                   *sys.argv[6:])))
