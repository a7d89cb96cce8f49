"""What parallel teacher calls buy a cascade whose teacher is slow: the digits run of
`benchmarks/serve-digits.yaml`, its teacher slowed to `--latency-ms` per call (a stand-in for a
remote API's latency: the MLP itself answers in well under a millisecond), served with
`teacher_calls` 1, 2, 4, 8 under uvicorn on 127.0.0.1, each from an empty answers store, loaded with
distinct test inputs (one per request) so that every fallback is a new, paid call.

    OMP_NUM_THREADS=1 python scripts/cascade_parallel.py bench-out/serve-digits --json benchmarks/cascade-parallel.jsonl
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

if importlib.util.find_spec("mentor") is None:  # not installed: this checkout (PYTHONPATH wins otherwise)
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class Slowed:
    """The run's teacher, `latency_s` slower per call, or per example in it (an LLM asked one
    prompt per example); thread-safe (a sleep, then a read-only forward)."""

    def __init__(self, teacher, latency_s: float, per_example: bool):
        self.teacher, self.latency_s, self.per_example = teacher, latency_s, per_example
        self.fingerprint, self.n_classes = teacher.fingerprint, teacher.n_classes
        self.cost_per_example = float(getattr(teacher, "cost_per_example", 0.0) or 0.0)

    def predict_proba(self, inputs, ids=None):
        time.sleep(self.latency_s * (len(inputs) if self.per_example else 1))
        return self.teacher.predict_proba(inputs, ids)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", type=Path)
    ap.add_argument("--latency-ms", type=float, default=200.0)
    ap.add_argument("--calls", default="1,2,4,8")
    ap.add_argument("--per", choices=("call", "example"), default="example",
                    help="the latency is per call (an endpoint that takes a batch) or per example in it")
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--code", default="", help="a label for the code measured (kept in the rows)")
    args = ap.parse_args()
    import uvicorn

    from mentor.bench.serve import load_test
    from mentor.pipeline import open_run
    from mentor.serve import Cascade, cascade_from_run, create_app, load_served_model
    from mentor.store import TeacherStore
    from mentor.teachers.llm.llamacpp import free_port
    model = load_served_model(args.run / "model")
    base = cascade_from_run(model, args.run)
    teacher = Slowed(base.teacher, args.latency_ms / 1000, args.per == "example")
    ctx = open_run(args.run)
    x = np.asarray(ctx.data.features[ctx.splits.test], dtype=np.float64)
    bodies = [{"inputs": [row.tolist()]} for row in x]
    rows = []
    for calls in [int(c) for c in args.calls.split(",")]:
        tmp = Path(tempfile.mkdtemp(prefix="cascade-parallel-"))
        store = TeacherStore(tmp / "answers", fingerprint=teacher.fingerprint, n_classes=ctx.n_classes)
        # teacher_calls only where it is more than 1: the same script runs on code from before it existed
        cascade = Cascade(model, teacher, base.threshold, answers=store, **({"teacher_calls": calls} if calls > 1 else {}))
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(create_app(cascade), host="127.0.0.1", port=port, log_level="error"))
        th = threading.Thread(target=server.run, daemon=True)
        th.start()
        while not server.started:
            time.sleep(0.02)
        n = min(args.requests, len(bodies) - 10)
        res = load_test(f"http://127.0.0.1:{port}/predict", bodies, concurrency=args.concurrency, n_requests=n)
        server.should_exit = True
        th.join(30)
        row = {"teacher_calls": calls, "latency_ms": args.latency_ms, "latency_per": args.per, "code": args.code, **res, **{k: cascade.counts[k] for k in
               ("teacher", "teacher_paid", "teacher_from_store", "fallback_failed")},
               "threshold": base.threshold}
        rows.append(row)
        print(f"teacher_calls {calls}: {res['requests_per_s']:6.1f} req/s  p50 {res['p50_ms']:7.1f} ms  "
              f"p95 {res['p95_ms']:7.1f} ms  p99 {res['p99_ms']:7.1f} ms  errors {res['errors']}  "
              f"paid {cascade.counts['teacher_paid']}", flush=True)
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        with args.json.open("a") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)


if __name__ == "__main__":
    main()
