"""DepRound ("pairs") against systematic rounding, and optionally against DepRound at an earlier
revision (a Python loop over the pairs), on RAD's probabilities for a pool of --n candidates.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/depround_speed.py [--before 853e62e] [--json out.json]

The probabilities are `rad_probabilities(rad_gains(p), b, 0.1·n)` for random 10-class p (as in
`mentor bench speed`); the variants run interleaved, best of --repeats, so load from other
processes hits each alike. Prints seconds and ratios measured in this one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from selection_speed_ab import load_before  # noqa: E402


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", help="git revision whose mentor/active/selection.py is timed too")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--b", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from mentor.active import selection as now
    rng = np.random.default_rng(0)
    z = rng.normal(size=(a.n, 10)).astype(np.float32) * 2
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    q = now.rad_probabilities(now.rad_gains(probs), a.b, 0.1 * a.n)
    impls = {"systematic": lambda r: now.dep_round(q, r, method="systematic"),
             "pairs": lambda r: now.dep_round(q, r, method="pairs")}
    if a.before:
        before = load_before(a.before, "mentor/active/selection.py", "mentor.active")
        impls["pairs-before"] = lambda r: before.dep_round(q, r, method="pairs")
    times: dict[str, list[float]] = {k: [] for k in impls}
    for r in range(a.repeats):
        for k, fn in impls.items():
            t0 = time.perf_counter()
            picks = fn(r)
            times[k].append(time.perf_counter() - t0)
            assert len(picks) == a.b == len(np.unique(picks)), k
    best = {k: min(v) for k, v in times.items()}
    res = {"n": a.n, "b": a.b, "support": int((q > 0).sum()), "repeats": a.repeats, "before_rev": a.before,
           "seconds": best, "pairs_over_systematic": best["pairs"] / best["systematic"]}
    if a.before:
        res["pairs_before_over_pairs"] = best["pairs-before"] / best["pairs"]
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
