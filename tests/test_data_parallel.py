"""Data-parallel training under torchrun: 2 real CPU processes (gloo) reach the weights of 1 process
with the same global batch, and only rank 0 writes the run folder or pays the teacher."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from mentor.cli import app
from mentor.config import parse_config
from mentor.pipeline import run

# max |w_2 processes − w_1 process| over every weight; measured 1.1e-7 (the order of sums; scripts/data_parallel.py)
TOLERANCE = 1e-5

CONFIG = {
    "seed": 0, "method": "vanilla-soft",
    "data": {"name": "digits"},
    "split": {"n_labeled": 100, "n_val": 200, "n_test": 300, "n_pool": 590},
    "teacher": {"kind": "logistic"},
    "student": {"kind": "mlp", "hidden": [32], "dropout": 0.0},
    # global step: 2 forward batches of 50 (each rank takes 25 of each); 690 examples end in a short step
    "train": {"epochs": 4, "min_steps": 0, "batch_size": 50, "grad_accum": 2, "lr": 0.01},
    "export": {"model_folder": False},
}


def _weights(path):
    return torch.load(path, weights_only=True)["model"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The same config run once in this process and once by torchrun with 2 processes."""
    root = tmp_path_factory.mktemp("ddp")
    one = run(parse_config({**CONFIG, "output_dir": str(root / "one")}))
    config = root / "ddp.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(root / "two")}))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONFAULTHANDLER": "1"}  # a crash prints every thread's stack
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "mentor.cli", "run", str(config)], capture_output=True, text=True, env=env,
                         timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return root / "one", root / "two", one, res


def test_two_processes_reach_the_weights_of_one_with_the_same_global_batch(runs):
    one, two, metrics_one, _ = runs
    metrics_two = json.loads((two / "metrics.json").read_text())
    assert metrics_two["train_info"]["data_parallel"] == {"world_size": 2, "backend": "gloo", "nodes": 1}
    assert "data_parallel" not in metrics_one["train_info"]
    for name in ("student.pt", "labeled-only.pt"):
        a, b = _weights(one / name), _weights(two / name)
        assert a.keys() == b.keys()
        diff = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert diff < TOLERANCE, (name, diff)
    assert metrics_two["test_accuracy"] == metrics_one["test_accuracy"]
    # the epoch losses are summed over ranks: each rank saw its half, not the whole data
    for name in ("student", "labeled-only"):
        h1 = [r["loss"] for r in json.loads((one / f"history-{name}.json").read_text())]
        h2 = [r["loss"] for r in json.loads((two / f"history-{name}.json").read_text())]
        np.testing.assert_allclose(h2, h1, rtol=1e-5)


def test_only_rank_0_pays_the_teacher_and_writes(runs):
    one, two, _, res = runs
    sends = [json.loads(line) for line in (two / "store" / "_ledger.jsonl").read_text().splitlines()
             if json.loads(line)["e"] == "send"]
    ids = [i for s in sends for i in s["ids"]]
    assert len(ids) == len(set(ids)) == 200 + 300 + 590  # V, test and the pool, each paid once
    assert len({s["pid"] for s in sends}) == 1
    # checkpoint names end in a hash of the config and the teacher's fingerprint; the teacher fitted
    # under torchrun's OMP_NUM_THREADS=1 may differ in its last bits from this process's, so compare names
    # without it
    files = lambda d: sorted(re.sub(r"-[0-9a-f]{12}\.pt$", ".pt", str(p.relative_to(d))) for p in d.rglob("*")
                             if p.is_file() and "store" not in p.parts)
    assert files(two) == files(one)  # the same run folder, no second copy and no stray temporary files
    assert res.stdout.count("results in") == 1  # one summary, from rank 0


def test_what_cannot_run_data_parallel_is_refused_before_anything_is_written(tmp_path, monkeypatch):
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(tmp_path / "out"),
                                      "train": {**CONFIG["train"], "data_path": "stream"}}))
    res = CliRunner().invoke(app, ["run", str(config)])
    assert res.exit_code == 2, res.output
    assert "train.data_path: memory" in res.output and "one process" in res.output
    res = CliRunner().invoke(app, ["label", str(config)])
    assert res.exit_code == 2, res.output
    assert "`mentor label` does not run under torchrun" in res.output
    assert not (tmp_path / "out").exists()
