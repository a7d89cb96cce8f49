"""The active loop end to end on digits (2 small rounds), resuming after a crash without paying
twice, the budget (prices, cost files, caps, stored points free), config errors, and the CLI."""

import importlib
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mentor.active.loop import (ActiveConfig, Budget, BudgetExhausted, auc, load_active_config, parse_active_config,
                           run_active)
from mentor.errors import ConfigError, DataError
from mentor.store import TeacherStore

train_module = importlib.import_module("mentor.students.train")


class Killed(BaseException):
    """Stands for the process being killed (not an Exception, so nothing catches it)."""


@pytest.fixture(scope="session")
def teacher_file(tmp_path_factory):
    """A teacher file for digits that is right on about 80% of the points, so it makes real mistakes
    (no teacher is trained in these tests: they stay fast on a busy machine)."""
    from mentor.data import load_dataset
    d = load_dataset("digits")
    rng = np.random.default_rng(0)
    wrong = rng.random(len(d.labels)) < 0.2
    target = np.where(wrong, (d.labels + rng.integers(1, 10, len(d.labels))) % 10, d.labels)
    probs = rng.dirichlet(np.ones(10), len(d.labels)) * 0.4
    probs[np.arange(len(target)), target] += 0.6
    path = tmp_path_factory.mktemp("teacher") / "teacher.parquet"
    pd.DataFrame({"id": d.ids.astype(str), "probs": list(probs)}).to_parquet(path)
    return str(path)


def _cfg(out, **kw) -> ActiveConfig:
    base = {"seed": 0, "output_dir": str(out), "data": {"name": "digits"},
            "split": {"n_labeled": 100, "n_val": 300, "n_test": 400},
            "teacher": {"kind": "file", "path": TEACHER[0], "cost_per_example": 1.0},
            "student": {"kind": "logistic"}, "train": {"epochs": 2, "min_steps": 20, "device": "cpu"},
            "strategy": "rad", "budget": [30, 60]}
    base.update(kw)
    return parse_active_config(base)


TEACHER = []


@pytest.fixture(scope="session", autouse=True)
def _use_teacher_file(teacher_file):
    TEACHER[:] = [teacher_file]


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("active")
    return out, run_active(_cfg(out))


@pytest.fixture
def tmp_out(tmp_path):
    return tmp_path


def _store(out):
    return TeacherStore.open(out / "store")


def test_loop_writes_json_and_png(first_run):
    out, res = first_run
    saved = json.loads((out / "active.json").read_text())
    assert saved["queries"] == [0, 30, 60] and len(saved["test_accuracy"]) == 3
    assert saved["strategy"] == "rad" and saved["seed"] == 0
    assert saved["auc"] == pytest.approx(auc(saved["queries"], saved["test_accuracy"]))
    assert min(saved["test_accuracy"]) <= saved["auc"] <= max(saved["test_accuracy"])
    assert saved["spent"] == pytest.approx(60.0)  # one unit per new pool query; V and test are setup
    assert (out / "active.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    err = saved["teacher_error_of_queries"]  # per round, over that round's 30 new picks
    assert err[0] is None and len(err) == 3 and all(0 <= e <= 1 and (30 * e) == pytest.approx(round(30 * e)) for e in err[1:])
    state = json.loads((out / "active_state.json").read_text())
    ids = [x for r in state["rounds"] for x in r["ids"]]
    assert len(ids) == len(set(ids)) == 60


def test_rerun_pays_nothing(first_run):
    out, res = first_run
    before = _store(out)
    spent, calls = before.spent, before.n_calls
    again = run_active(_cfg(out))
    after = _store(out)
    assert after.spent == spent and after.n_calls == calls
    assert again["test_accuracy"] == res["test_accuracy"]


def test_crash_mid_round_resumes_without_paying_twice(first_run, tmp_out, monkeypatch):
    tmp_path = tmp_out
    ref_out, ref = first_run
    real = train_module.train_student
    calls, crashed = [], []

    def crash_in_round_two(model, x, y, **kw):
        calls.append(0 if kw.get("x_pool") is None else len(kw["x_pool"]))
        if calls[-1] == 60 and not crashed:
            crashed.append(True)
            raise Killed("killed mid-round")
        return real(model, x, y, **kw)

    monkeypatch.setattr(train_module, "train_student", crash_in_round_two)
    with pytest.raises(Killed):
        run_active(_cfg(tmp_path))
    state = json.loads((tmp_path / "active_state.json").read_text())
    assert [r["round"] for r in state["rounds"]] == [0, 1] and state["pending"]["round"] == 2
    paid = _store(tmp_path).spent  # round 2's batch was paid before the crash
    calls.clear()
    res = run_active(_cfg(tmp_path))
    assert calls == [60]  # only round 2 is trained again; rounds 0 and 1 are not redone
    store = _store(tmp_path)
    assert store.spent == paid and res["spent"] == pytest.approx(60.0)
    assert res["queries"] == ref["queries"] and res["test_accuracy"] == pytest.approx(ref["test_accuracy"])


def test_other_config_in_same_folder_is_refused(first_run):
    out, _ = first_run
    with pytest.raises(ConfigError, match="another config"):
        run_active(_cfg(out, strategy="margin"))


def test_max_cost_stops_before_overspending(tmp_out):
    tmp_path = tmp_out
    res = run_active(_cfg(tmp_path, max_cost=45.0, strategy="margin"))
    assert res["queries"] == [0, 30] and "budget exhausted" in res["stopped"]
    assert res["spent"] == pytest.approx(30.0)


def test_cost_file_prices_per_id_and_missing_ids_are_an_error(tmp_out):
    tmp_path = tmp_out
    from mentor.data import load_dataset
    ids = load_dataset("digits").ids.astype(str)
    pd.DataFrame({"id": ids, "cost": np.full(len(ids), 2.5)}).to_csv(tmp_path / "costs.csv", index=False)
    res = run_active(_cfg(tmp_path, strategy="entropy", budget=[10], cost_file=str(tmp_path / "costs.csv")))
    assert res["spent"] == pytest.approx(25.0)
    pd.DataFrame({"id": ids[:50], "cost": 1.0}).to_csv(tmp_path / "short.csv", index=False)
    with pytest.raises(DataError, match="no cost for"):
        run_active(_cfg(tmp_path / "short", budget=[10], cost_file=str(tmp_path / "short.csv")))
    assert not (tmp_path / "short" / "store").exists()  # refused before the teacher was asked anything


class _Teacher:
    fingerprint = "t1"
    cost_per_example = 0.0

    def predict_proba(self, inputs, ids=None):
        return np.full((len(inputs), 3), 1 / 3)


def test_budget_charges_only_new_ids_and_caps(tmp_path):
    store = TeacherStore(tmp_path / "s", fingerprint="t1", n_classes=3)
    budget = Budget(total=10.0, costs={f"x{i}": float(i) for i in range(10)})
    ids, x = np.array(["x1", "x2", "x3"]), np.zeros((3, 2))
    assert budget.charge(store, _Teacher(), ids, x) == (3, 6.0)
    assert store.spent == pytest.approx(6.0)
    assert budget.charge(store, _Teacher(), ids, x) == (0, 0.0)  # stored points are free
    assert store.spent == pytest.approx(6.0) and budget.remaining(store) == pytest.approx(4.0)
    with pytest.raises(BudgetExhausted, match="only 4 of the budget 10"):
        budget.charge(store, _Teacher(), np.array(["x1", "x9"]), np.zeros((2, 2)))
    assert store.spent == pytest.approx(6.0) and len(store) == 3  # nothing paid
    with pytest.raises(DataError, match="no cost for 1 of 2"):
        budget.costs_of(["x1", "nope"])
    with pytest.raises(ConfigError):
        Budget(total=0)


def test_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="budget of zero"):
        _cfg(tmp_path, budget=[0, 10])
    with pytest.raises(ConfigError, match="strictly increasing"):
        _cfg(tmp_path, budget=[20, 10])
    with pytest.raises(ConfigError, match="not both"):
        _cfg(tmp_path, rounds=2)
    with pytest.raises(ConfigError, match="correction"):
        _cfg(tmp_path, method="slam")
    with pytest.raises(ConfigError, match="unknown strategy"):
        _cfg(tmp_path, strategy="best")
    with pytest.raises(ConfigError, match="unknown key"):
        _cfg(tmp_path, stratgey="rad")
    with pytest.raises(ConfigError, match="batch_size"):
        _cfg(tmp_path, budget=None, rounds=2, batch_size=0)
    with pytest.raises(ConfigError, match="only 997 points"):
        run_active(_cfg(tmp_path, budget=[500, 1000]))
    assert _cfg(tmp_path, budget=None, rounds=3, batch_size=7).schedule() == [7, 14, 21]


def test_auc_is_normalised():
    assert auc([0, 10, 20], [0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert auc([0, 10], [0.0, 1.0]) == pytest.approx(0.5)


def test_cli_active(first_run, tmp_path):
    out, res = first_run
    cfg = _cfg(out).model_dump(mode="json")
    import yaml
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    assert load_active_config(tmp_path / "a.yaml").output_dir == str(out)
    r = subprocess.run([sys.executable, "-m", "mentor.cli", "active", str(tmp_path / "a.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "auc" in r.stdout.lower()
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({**cfg, "budget": [0]}))
    r = subprocess.run([sys.executable, "-m", "mentor.cli", "active", str(tmp_path / "bad.yaml")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "budget of zero" in r.stderr
    shutil.rmtree(tmp_path)


def test_continue_training_with_coreset_and_a_correction(tmp_out):
    res = run_active(_cfg(tmp_out, strategy="coreset", budget=[15, 25], retrain="continue", correction="slam"))
    assert res["queries"] == [0, 15, 25] and res["correction"] == "slam"
    assert all(0.0 < a <= 1.0 for a in res["test_accuracy"])


def test_budget_charge_on_threads_keeps_extras_and_real_cost(tmp_path):
    """`mentor active` pays each round's batch on threads when distribute asks, and a teacher
    that knows each call's real cost (an LLM's tokens) is billed that, with its extras kept."""
    from mentor.active.loop import Budget
    from mentor.config import DistributeConfig
    from mentor.store import TeacherStore
    from mentor.teachers.base import Teacher, TeacherAnswer

    class Tokens(Teacher):
        n_classes, fingerprint, cost_per_example = 2, "tokens", 0.5  # the estimate

        def answer(self, inputs, ids=None):
            n = len(ids)
            return TeacherAnswer(np.tile([[0.7, 0.3]], (n, 1)).astype(np.float32),
                                 {"raw": [f"answer {i}" for i in ids]}, cost=0.1 * n)

    store = TeacherStore(tmp_path / "s", fingerprint="tokens", n_classes=2)
    ids = np.array([f"x{i}" for i in range(40)])
    paid, est = Budget(cost_per_example=0.5).charge(store, Tokens(), ids, np.zeros((40, 3)), batch_size=8,
                                                    distribute=DistributeConfig(engine="threads", workers=3))
    assert paid == 40 and est == pytest.approx(20.0)
    assert store.spent == pytest.approx(4.0)  # the real cost, not the estimate
    assert store.read_extras(ids).column("raw").to_pylist() == [f"answer {i}" for i in ids]
