"""Uncertainty selection: mentor against the active-learning libraries, in one process.

The same 1M x 10 float32 probabilities (a student's softmax over the pool, computed once), the b
most uncertain picked by margin, entropy and least confidence:

- mentor: `mentor.active.selection.select(name, candidates, b, probs=...)` (input checks included);
- modAL: `margin_sampling`, `entropy_sampling`, `uncertainty_sampling` with a classifier whose
  `predict_proba` returns the probabilities (so only the library's own work is timed);
- small-text: `BreakingTies`, `PredictionEntropy`, `LeastConfidence` `.query(...)`, the same way.
  Its margin and entropy run a Python function per row (`np.apply_along_axis`; entropy through
  `scipy.stats.entropy`, ~0.3 ms a row), so they run once, and entropy on the first n/20 rows
  with its time multiplied by 20 (marked `extrapolated` in the JSON);
- scikit-activeml: `uncertainty_scores(probas, method=...)`, then the b best by `np.argpartition`.
  Its own batch step (`simple_batch`, what `UncertaintySampling.query` ends with) allocates b x n
  float64 (8 GB at b = 1,000) and picks one argmax per pick, so it is not timed here.

The libraries are not mentor dependencies: install them beside it, e.g.
    pip install --no-deps --target /tmp/peers modAL-python==0.4.2.1 small-text==1.4.1 scikit-activeml==1.0.1
    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/selection_vs_peers.py --peers /tmp/peers --json out.json
Best of --repeats each, every implementation timed in turn within a repeat; the picks are checked
to be the same set (ties aside: the probabilities are continuous).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

NAMES = ("margin", "entropy", "least-confidence")
SLOW_SHARE = 20  # small-text's entropy is timed on 1/20 of the rows and scaled up
ONCE = {"small-text"}  # per-row Python code: one run each (its time does not hinge on noise)


class Fixed:
    """A fitted classifier as the libraries see one: predict_proba gives the pool's probabilities."""

    def __init__(self, probs):
        self.probs = probs

    def predict_proba(self, X, **_):
        return self.probs


def implementations(probs: np.ndarray, b: int) -> dict:
    from mentor.active import selection
    cand = np.arange(len(probs))
    out = {"mentor": lambda n: selection.select(n, cand, b, 0, probs=probs)}
    clf = Fixed(probs)
    try:
        from modAL.uncertainty import entropy_sampling, margin_sampling, uncertainty_sampling
        fns = {"margin": margin_sampling, "entropy": entropy_sampling, "least-confidence": uncertainty_sampling}
        out["modAL"] = lambda n: np.asarray(fns[n](clf, cand, n_instances=b)[0])
    except ImportError as e:
        print(f"modAL not timed: {e}", file=sys.stderr)
    try:
        from small_text.query_strategies import BreakingTies, LeastConfidence, PredictionEntropy
        qs = {"margin": BreakingTies, "entropy": PredictionEntropy, "least-confidence": LeastConfidence}
        none = np.array([], dtype=int)
        part = len(probs) // SLOW_SHARE
        small = Fixed(probs[:part])
        out["small-text"] = lambda n: (qs[n]().query(small, cand[:part], cand[:part], none, none, n=b // SLOW_SHARE)
                                       if n == "entropy" else qs[n]().query(clf, cand, cand, none, none, n=b))
    except ImportError as e:
        print(f"small-text not timed: {e}", file=sys.stderr)
    try:
        from skactiveml.pool import uncertainty_scores
        methods = {"margin": "margin_sampling", "entropy": "entropy", "least-confidence": "least_confident"}
        out["scikit-activeml"] = lambda n: np.argpartition(
            -uncertainty_scores(probs, method=methods[n]), b - 1)[:b]
    except ImportError as e:
        print(f"scikit-activeml not timed: {e}", file=sys.stderr)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--b", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--peers", type=Path, default=None, help="folder the libraries were installed into (--target)")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    if a.peers:
        sys.path.append(str(a.peers))  # after mentor's own packages: the libraries' copies never shadow them
    rng = np.random.default_rng(0)
    z = rng.normal(size=(a.n, a.classes)).astype(np.float32) * 2
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    impls = implementations(probs, a.b)
    times = {n: {k: [] for k in impls} for n in NAMES}
    picks = {n: {} for n in NAMES}
    for r in range(a.repeats):
        for n in NAMES:
            for k, fn in impls.items():
                if r and k in ONCE:
                    continue
                t0 = time.perf_counter()
                picks[n][k] = np.asarray(fn(n))
                times[n][k].append(time.perf_counter() - t0)
    times["entropy"]["small-text"] = [t * SLOW_SHARE for t in times["entropy"].get("small-text", [])]
    agree = {n: {k: len(set(v.tolist()) & set(picks[n]["mentor"].tolist())) / a.b for k, v in p.items()}
             for n, p in picks.items()}
    agree["entropy"].pop("small-text", None)  # picked among its slice of the pool only
    seconds = {n: {k: min(v) for k, v in t.items() if v} for n, t in times.items()}
    res = {"n": a.n, "classes": a.classes, "b": a.b, "repeats": a.repeats, "seconds": seconds,
           "extrapolated": {"entropy": {"small-text": f"timed on {a.n // SLOW_SHARE} rows, x{SLOW_SHARE}"}},
           "runs_once": sorted(ONCE),
           "mentor_over_fastest_peer": {n: s["mentor"] / min(v for k, v in s.items() if k != "mentor")
                                        for n, s in seconds.items() if len(s) > 1},
           "same_picks_as_mentor": agree,
           "machine": {"platform": platform.platform(), "python": platform.python_version(), "numpy": np.__version__}}
    for n in NAMES:
        row = "  ".join(f"{k} {s:.3f} s" for k, s in seconds[n].items())
        print(f"{n:17s} {row}  -> mentor / fastest peer {res['mentor_over_fastest_peer'].get(n, float('nan')):.2f}x")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
