"""Memory a long-running writer keeps per teacher call: `TeacherStore.label(..., checkpoint=False)`
with one answer per call, as `mentor serve --cascade` stores each fallback. Python allocations
still held after N more calls (tracemalloc, from one flush to another, fsync switched off: what is
measured is memory), divided by N; the biggest holders are listed.

    python scripts/store_call_memory.py --calls 8192
"""

from __future__ import annotations

import argparse
import gc
import os
import sys
import tempfile
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from mentor.store import TeacherStore  # noqa: E402


class Uniform:
    fingerprint, cost_per_example = "call-memory", 0.001

    def predict_proba(self, inputs, ids=None):
        return np.full((len(ids), 4), 0.25, np.float32)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=8192, help="calls measured (a multiple of the shard size)")
    ap.add_argument("--top", type=int, default=6)
    args = ap.parse_args()
    store = TeacherStore(tempfile.mkdtemp(prefix="call-memory-"), fingerprint="call-memory", n_classes=4,
                         shard_size=4096)
    os.fsync = lambda fd: None

    def calls(a, b):
        for i in range(a, b):
            store.label(Uniform(), [(np.array([f"q{i}"]), np.zeros((1, 1)))], checkpoint=False)

    calls(0, 4096)  # up to the first flush: the same point of the cycle before and after
    gc.collect()
    tracemalloc.start(4)
    before = tracemalloc.take_snapshot()
    calls(4096, 4096 + args.calls)
    gc.collect()
    diff = tracemalloc.take_snapshot().compare_to(before, "traceback")
    print(f"{sum(d.size_diff for d in diff) / args.calls:.0f} bytes held per call over {args.calls} calls")
    for d in diff[:args.top]:
        print(f"  {d.size_diff / args.calls:6.0f} B/call  {d.traceback[-1].filename}:{d.traceback[-1].lineno}")


if __name__ == "__main__":
    main()
