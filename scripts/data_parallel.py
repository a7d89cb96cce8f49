"""One process against `torchrun --nproc_per_node N` on the same config: prints the largest weight
difference of the trained students, both test accuracies and both wall times (measured in this run).

    python scripts/data_parallel.py                      # tiny digits config, 2 CPU processes (gloo)
    python scripts/data_parallel.py my-run.yaml --nproc 4 --set train.device=cuda   # 4 GPUs (nccl)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

TINY = {"seed": 0, "method": "vanilla-soft", "data": {"name": "digits"},
        "split": {"n_labeled": 100, "n_val": 200, "n_test": 300, "n_pool": 590},
        "teacher": {"kind": "logistic"}, "student": {"kind": "mlp", "hidden": [32], "dropout": 0.0},
        "train": {"epochs": 4, "min_steps": 0, "batch_size": 50, "grad_accum": 2, "lr": 0.01},
        "export": {"model_folder": False}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", nargs="?", help="a run config (default: a tiny digits run)")
    ap.add_argument("--nproc", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="passed to both runs, e.g. train.device=cpu")
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="mentor-ddp-"))
    config = Path(args.config) if args.config else root / "tiny.yaml"
    if not args.config:
        config.write_text(yaml.safe_dump(TINY))
    sets = [x for s in args.set for x in ("--set", s)]
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    runs = {"1 process": [sys.executable, "-m", "mentor.cli", "run"],
            f"{args.nproc} processes": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                        "--nproc_per_node", str(args.nproc), "-m", "mentor.cli", "run"]}
    out = {}
    for i, (name, cmd) in enumerate(runs.items()):
        folder = root / f"run{i}"
        t0 = time.perf_counter()
        subprocess.run(cmd + [str(config), *sets, "--set", f"output_dir={folder}"], check=True, env=env,
                       stdout=subprocess.DEVNULL)
        out[name] = (folder, time.perf_counter() - t0)
    (a, ta), (b, tb) = out.values()
    wa = torch.load(a / "student.pt", weights_only=True)["model"]
    wb = torch.load(b / "student.pt", weights_only=True)["model"]
    diff = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    ma, mb = (json.loads((f / "metrics.json").read_text()) for f in (a, b))
    print(f"max |weight difference|: {diff:.3g}")
    for (name, (_, t)), m in zip(out.items(), (ma, mb)):
        print(f"{name}: test accuracy {m['test_accuracy']:.4f}, final loss {m['train_info']['final_loss']:.8f}, "
              f"wall {t:.1f} s, {m['train_info'].get('data_parallel', 'one process')}")
    print(f"run folders in {root}")


if __name__ == "__main__":
    main()
