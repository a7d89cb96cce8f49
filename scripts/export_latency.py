"""Torch vs ONNX latency of shipped students on this machine: the digits MLP and the fortunes
(17 topics) TF-IDF student, each trained by `mentor.pipeline.run` and read back from its model folder.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/export_latency.py [--work-dir bench-out/export] [--rounds 3]

Prints, per student: params, size, max |p_onnx - p_torch| on V, and milliseconds per example at
batch 1 and 64 for torch and onnxruntime (model only), plus the featurizer's own time (it runs in
Python before either), and the seconds writing the model folder takes once the exporter is imported
(ONNX export + check + latency + card). Each number is the median over --rounds interleaved rounds of
`measure_latency` (itself a median over ~1 s of calls), all in this one process.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch


def _fortunes_teacher(root: Path) -> tuple[str, list[str]]:
    """A file teacher for all 17 fortunes topics: TF-IDF + logistic regression fitted on 1,000 texts
    (latency depends on the student's architecture only; the teacher just has to cover the pool)."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from mentor.data import load_fortunes
    d = load_fortunes()
    texts = [str(t) for t in d.features]
    vec = TfidfVectorizer(sublinear_tf=True).fit(texts)
    fit = np.random.default_rng(0).permutation(len(texts))[:1000]
    probs = LogisticRegression(max_iter=500).fit(vec.transform(texts)[fit], d.labels[fit]).predict_proba(
        vec.transform(texts))
    path = root / "fortunes-teacher.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in d.ids], "probs": [list(r) for r in probs]}), path)
    return str(path), list(d.class_names)


def _configs(work: Path) -> dict:
    teacher_path, topics = _fortunes_teacher(work)
    return {
        "digits MLP": {"seed": 0, "output_dir": str(work / "digits"), "data": {"name": "digits"},
                       "split": {"n_labeled": 100, "n_val": 300},
                       "teacher": {"kind": "mlp"}, "student": {"kind": "mlp"}},
        "fortunes TF-IDF": {"seed": 0, "output_dir": str(work / "fortunes"), "data": {"name": "fortunes"},
                            "split": {"n_labeled": 500, "n_val": 300},
                            "teacher": {"kind": "file", "path": teacher_path, "classes": topics},
                            "student": {"kind": "tfidf"}},
    }


def _featurizer_ms(feat, raw, batch: int, budget_s: float) -> float:
    rows = [raw[i % len(raw)] for i in range(batch)]
    rows = np.array(rows, dtype=object) if raw.dtype == object else np.stack(rows)
    feat.transform(rows)
    times, end = [], time.perf_counter() + budget_s
    while len(times) < 5 or time.perf_counter() < end:
        t0 = time.perf_counter()
        feat.transform(rows)
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times) / batch


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work-dir", type=Path, default=Path("bench-out/export"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--budget", type=float, default=1.0, help="seconds of calls per measurement")
    args = ap.parse_args()
    args.work_dir.mkdir(parents=True, exist_ok=True)
    from mentor.config import parse_config
    from mentor.pipeline import open_run, run, write_model_folder
    from mentor.students.export import load_student_folder, measure_latency

    results = {}
    for name, cfg in _configs(args.work_dir).items():
        t0 = time.perf_counter()
        metrics = run(parse_config(cfg), force=True)
        folder = Path(cfg["output_dir"]) / "model"
        model, feat, rec = load_student_folder(folder)
        ctx = open_run(cfg["output_dir"])
        t1 = time.perf_counter()
        write_model_folder(ctx, path=args.work_dir / "again")  # exporter already imported: the warm cost
        folder_seconds = time.perf_counter() - t1
        raw = ctx.data.features[ctx.splits.val]
        x = feat.transform(raw)
        rounds = [measure_latency(model, x, folder / "model.onnx", budget_s=args.budget) for _ in range(args.rounds)]
        lat = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k.endswith("_ms")}
        lat.update({f"featurizer_b{b}_ms": _featurizer_ms(feat, raw, b, args.budget) for b in (1, 64)})
        results[name] = {"test_accuracy": metrics["test_accuracy"], "params": rec["params"],
                         "weights_mb": rec["size_mb"]["weights"], "onnx_mb": rec["size_mb"]["onnx"],
                         "onnx_max_abs_diff": rec["onnx"]["max_abs_diff"], "in_features": x.shape[1],
                         "threads": torch.get_num_threads(), **lat, "run_seconds": t1 - t0,
                         "folder_seconds_warm": folder_seconds}
    print(json.dumps(results, indent=2))
    print("\nms per example (median), model only; the featurizer runs before either runtime")
    print(f"| student | params | torch b1 | ONNX b1 | torch b64 | ONNX b64 | featurizer b1 | featurizer b64 | "
          "max diff |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        ms = [f"{r[k]:.3g}" for k in ("torch_b1_ms", "onnx_b1_ms", "torch_b64_ms", "onnx_b64_ms", "featurizer_b1_ms",
                                      "featurizer_b64_ms")]
        print(f"| {name} | {r['params']:,} | {' | '.join(ms)} | {r['onnx_max_abs_diff']:.1e} |")
    for name, r in results.items():
        print(f"{name}: ONNX/torch time ratio, batch 1: {r['onnx_b1_ms'] / r['torch_b1_ms']:.2f}, "
              f"batch 64: {r['onnx_b64_ms'] / r['torch_b64_ms']:.2f}; test accuracy {r['test_accuracy']:.3f}; "
              f"writing the model folder (warm): {r['folder_seconds_warm']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
