"""Uncertainty selection before vs after issue 14, in one process, on 1M × 10 probabilities.

Times `select("margin" | "entropy" | "least-confidence", ...)` from mentor/active/selection.py as it is
at a git revision (--before) and as it is in the working tree, plus the
plainest numpy version of each score (np.partition for the top two, np.argpartition for the b
smallest, no input checks): the floor a library could reach with numpy. The libraries themselves
(modAL, small-text, scikit-activeml): `scripts/selection_vs_peers.py`. Best of --repeats, in turn.

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/selection_speed_ab.py --before <rev> --json out.json
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def load_before(rev: str, where: str = "mentor/active/selection.py", package: str = "mentor.active"):
    """`where` at `rev`, imported as <package>._selection_before (its relative imports resolve in `package`)."""
    importlib.import_module(package)  # the package its relative imports resolve in
    src = subprocess.run(["git", "show", f"{rev}:{where}"], check=True, capture_output=True,
                         text=True).stdout
    path = Path(tempfile.mkdtemp()) / "_selection_before.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location(f"{package}._selection_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def plain(name: str, p: np.ndarray, cand: np.ndarray, b: int) -> np.ndarray:
    if name == "margin":
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        score = top2[:, 1] - top2[:, 0]
    elif name == "least-confidence":
        score = p.max(axis=1)
    else:
        score = (p * np.log(np.clip(p, 1e-12, None))).sum(axis=1)
    return cand[np.argpartition(score, b - 1)[:b]]


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--before", required=True, help="git revision holding the previous selection.py")
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--b", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", type=Path)
    a = ap.parse_args(argv)
    from mentor.active import selection as after
    before = load_before(a.before)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(a.n, a.classes)).astype(np.float32) * 2
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    cand = np.arange(a.n)
    names = ("margin", "entropy", "least-confidence")
    impls = {"before": lambda n: before.select(n, cand, a.b, 1, probs=probs),
             "after": lambda n: after.select(n, cand, a.b, 1, probs=probs),
             "numpy-plain": lambda n: plain(n, probs, cand, a.b)}
    times = {n: {k: [] for k in impls} for n in names}
    for _ in range(a.repeats):  # interleaved, so load from other processes hits every variant alike
        for n in names:
            for k, fn in impls.items():
                t0 = time.perf_counter()
                fn(n)
                times[n][k].append(time.perf_counter() - t0)
    for n in names:
        assert set(impls["before"](n).tolist()) == set(impls["after"](n).tolist()), n
    res = {"n": a.n, "classes": a.classes, "b": a.b, "repeats": a.repeats, "before_rev": a.before,
           "machine": {"platform": platform.platform(), "python": platform.python_version(),
                       "numpy": np.__version__},
           "seconds": {n: {k: min(v) for k, v in t.items()} for n, t in times.items()}}
    res["after_over_before"] = {n: s["after"] / s["before"] for n, s in res["seconds"].items()}
    res["after_over_numpy_plain"] = {n: s["after"] / s["numpy-plain"] for n, s in res["seconds"].items()}
    print(json.dumps(res, indent=2))
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    return res


if __name__ == "__main__":
    main()
