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


def _crash_stacks(stderr: str) -> str:
    """The Python stacks faulthandler printed for a crashed rank, without its long list of extension
    modules (the tail of stderr alone, torchrun's own report, leaves them out)."""
    at = stderr.find("Fatal Python error")
    if at < 0:
        return ""
    end = stderr.find("Extension modules", at)
    return "\n--- faulthandler ---\n" + stderr[at:end if end > 0 else at + 6000][:6000] + "\n---\n"


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
    assert res.returncode == 0, res.stdout[-2000:] + _crash_stacks(res.stderr) + res.stderr[-3000:]
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


LEAVE_SCRIPT = '''
import os
import sys
import torch
from mentor.students import distributed
distributed.init_from_env("cpu")
model = torch.nn.Linear(3, 2)
opt = torch.optim.Adam(model.parameters())  # the first optimiser imports torch._dynamo
model(torch.ones(4, 3)).sum().backward()
distributed.sum_gradients(model.parameters())
opt.step()
distributed.finish()
names = [open(f"/proc/self/task/{t}/comm").read().strip() for t in os.listdir("/proc/self/task")]
with open(os.path.join(sys.argv[1], "threads-" + os.environ["RANK"]), "w") as f:
    f.write(" ".join(sorted(names)))
'''


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="reads thread names from Linux's /proc")
def test_leaving_the_process_group_stops_its_threads(tmp_path):
    """After finish() no gloo thread is left to the interpreter's exit, where CI saw rank 1 abort
    (SIGABRT) after successful runs: torch._dynamo, imported after init_process_group (by the first
    optimiser), kept references to the group, so destroy_process_group did not free it."""
    script = tmp_path / "leave.py"
    script.write_text(LEAVE_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          str(script), str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    for rank in (0, 1):
        names = (tmp_path / f"threads-{rank}").read_text().split()
        assert names  # at least the main thread (a check of the reading)
        assert not [n for n in names if "gloo" in n], names  # gloo_tcp_loop, pt_gloo_runloop: the group lives on
