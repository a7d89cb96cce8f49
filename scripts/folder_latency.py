"""Time a model folder's torch and ONNX runtimes on real inputs, CPU, per example at batch 1 and 64.

    OMP_NUM_THREADS=1 python scripts/folder_latency.py FOLDER [FOLDER ...] --data fine-foods --rows 200 --json OUT

For folders written before their kind exported to ONNX (transformer folders before 257d53c), the graph
is exported here into a temporary file with the current exporter and checked against torch on the
same rows (max |p_onnx − p_torch|), then timed with the same code a new folder uses
(`mentor.students.export.measure_latency`: the model alone, the featurizer not included). The rows
are the first `--rows` inputs of the named built-in data set (inputs only; no labels are read).
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch


def measure(folder: Path, inputs, budget_s: float = 0.25) -> dict:
    from mentor.students.export import (ONNX_FILE, format_for, load_student_folder, measure_latency, onnx_probs,
                                        onnx_session, torch_probs)
    model, feat, rec = load_student_folder(folder)
    kind = rec["student"]["kind"]
    fmt = format_for(kind)
    feed = fmt.feed(rec["student"].get("args", {}))
    x = feat.transform(inputs)
    with tempfile.TemporaryDirectory() as tmp:
        onnx_file = folder / ONNX_FILE
        exported_here = not onnx_file.is_file()
        if exported_here:
            if fmt.onnx is None:
                raise SystemExit(f"{folder}: a {kind} student has no ONNX exporter ({fmt.why_no_onnx})")
            onnx_file = Path(tmp) / ONNX_FILE
            fmt.onnx(model, x[:2], onnx_file)
        diff = float(np.abs(onnx_probs(onnx_session(onnx_file), x, feed=feed)
                            - (fmt.probs or torch_probs)(model, x)).max())
        lat = measure_latency(model, x, onnx_file, budget_s, probs=fmt.probs, feed=feed)
    return {"folder": str(folder), "kind": kind, "params": rec.get("params"), "rows": len(inputs),
            "onnx_exported_here": exported_here, "onnx_max_abs_diff": diff,
            "latency_ms_torch": {"b1": lat["torch_b1_ms"], "b64": lat["torch_b64_ms"]},
            "latency_ms_onnx": {"b1": lat["onnx_b1_ms"], "b64": lat["onnx_b64_ms"]}, "threads": lat["threads"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--data", required=True, help="a built-in data set (mentor.data.LOADERS), e.g. fine-foods")
    ap.add_argument("--rows", type=int, default=200)
    ap.add_argument("--json", type=Path, help="append one JSON row per folder here")
    args = ap.parse_args()
    from mentor.data import load_dataset
    inputs = load_dataset(args.data).features[:args.rows]
    for folder in args.folders:
        row = {**measure(folder, inputs), "data": args.data}
        print(json.dumps(row))
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
