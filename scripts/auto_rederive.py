"""auto's choice re-derived from the per-example V scores its rows record (`auto.val_right`), under
the one-SE rule alone (`auto_noise_se: 1`, the default before session 16) and under `[1, 0]` (the
default since), with each choice's test accuracy looked up in the
method rows of the same (data set, seed). No training: it checks a choice rule on finished runs.

    python scripts/auto_rederive.py benchmarks/quality-standard-auto-s13.jsonl benchmarks/quality-standard-*-s1[45].jsonl

Rows are read from every file given (later files win for the same data set, seed and method); auto
rows without `val_right` (before session 14) are skipped. A choice whose method has no row (and is not
the one the auto row itself trained) shows nan; the means leave it out.
"""

import argparse
import collections
import json

import numpy as np

from mentor.methods import LABELED_ONLY, auto_splits, choose_on_validation

ap = argparse.ArgumentParser()
ap.add_argument("rows", nargs="+")
ap.add_argument("--splits", type=int, default=20, help="auto_splits of the runs (default 20)")
a = ap.parse_args()
by = collections.defaultdict(dict)
for f in a.rows:
    for line in open(f):
        try:
            r = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if r.get("method") == "auto" and "val_right" not in (r.get("auto") or {}):
            continue
        if "test_accuracy" in r and "method" in r:
            by[(r["dataset"], r["seed"])][r["method"]] = r


def test(m: dict, k: str) -> float:
    """Test accuracy of method k: its own row, else the auto row's where auto chose k."""
    if k in m:
        return 100 * m[k]["test_accuracy"]
    return 100 * m["auto"]["test_accuracy"] if m["auto"]["auto"]["chosen"] == k else float("nan")


def sd(v) -> str:
    v = np.array(v, dtype=float)
    return f"{np.nanmean(v):+.2f} ± {np.nanstd(v, ddof=1) if np.isfinite(v).sum() > 1 else 0:.2f}"


per_entry = collections.defaultdict(list)
print("| data set | seed | one-SE choice | test | `[1, 0]` choice | test | labeled-only | vanilla-soft |")
print("|---|---|---|---|---|---|---|---|")
for (d, s), m in sorted(by.items()):
    if "auto" not in m:
        continue
    rec = m["auto"]["auto"]
    order = rec["order"]
    scores = np.array([[int(x) for x in rec["val_right"][o]] for o in order], dtype=float)
    splits = auto_splits(scores.shape[1], rec.get("folds", 2), s, a.splits)
    one = choose_on_validation(scores, order, noise_se=1.0, standalone=(LABELED_ONLY,), folds=splits)["chosen"]
    two = choose_on_validation(scores, order, noise_se=[1.0, 0.0], standalone=(LABELED_ONLY,), folds=splits)["chosen"]
    lo, vs = test(m, "labeled-only"), test(m, "vanilla-soft")
    per_entry[d].append((test(m, one) - vs, test(m, two) - vs, test(m, one) - max(lo, vs), test(m, two) - max(lo, vs)))
    print(f"| {d} | {s} | {one} | {test(m, one):.2f} | {two} | {test(m, two):.2f} | {lo:.2f} | {vs:.2f} |")
print("\n| data set | seeds | one SE − vanilla-soft | `[1, 0]` − vanilla-soft | one SE − max(LO, VS) | `[1, 0]` − max(LO, VS) |")
print("|---|---|---|---|---|---|")
for d, v in per_entry.items():
    v = np.array(v)
    print(f"| {d} | {len(v)} | {sd(v[:, 0])} | {sd(v[:, 1])} | {sd(v[:, 2])} | {sd(v[:, 3])} |")
