"""How long `mentor --help`, `mentor methods` and `mentor check-config` take to start, and their
peak memory; optionally beside another source tree (e.g. an older commit), measured in one run.

    .venv/bin/python scripts/startup_time.py [--against PATH_TO_OTHER_TREE] [--repeats 7]

Each command runs as a fresh process (`python -m mentor.cli ...` with PYTHONPATH set to the
tree), the trees interleaved; the table shows the fastest of the repeats (least disturbed by
other load) and the peak RSS.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_once(tree: Path, args: list[str]) -> tuple[float, int]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    t0 = time.perf_counter()
    pid = subprocess.Popen([sys.executable, "-m", "mentor.cli", *args], env=env, cwd=tree, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL).pid
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"mentor {' '.join(args)} failed in {tree}")
    return seconds, usage.ru_maxrss  # KiB on Linux


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", type=Path, help="another source tree to time beside this one")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "c.yaml"
        cfg.write_text("data: {name: digits}\n")
        commands = [["--help"], ["methods"], ["check-config", str(cfg)]]
        trees = [ROOT] + ([a.against.resolve()] if a.against else [])
        best = {}
        for _ in range(a.repeats):
            for cmd in commands:
                for tree in trees:
                    s, rss = run_once(tree, cmd)
                    key = (" ".join(cmd[:1]), tree)
                    old = best.get(key, (float("inf"), 0))
                    best[key] = (min(old[0], s), max(old[1], rss))
    print(f"machine: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}; best of {a.repeats}")
    for cmd in commands:
        name = " ".join(cmd[:1])
        row = [f"mentor {name:14s}"]
        for tree in trees:
            s, rss = best[(name, tree)]
            row.append(f"{tree.name or tree}: {s:.2f} s {rss / 1024:.0f} MB")
        if len(trees) == 2:
            row.append(f"ratio {best[(name, trees[1])][0] / best[(name, trees[0])][0]:.1f}x")
        print("   ".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
