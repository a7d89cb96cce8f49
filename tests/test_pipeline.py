"""End to end: the demo, a user's own Parquet files + a teacher file through `mentor run`, the
separate steps, resuming without paying twice, and the CLI's error messages."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from mentor.config import load_config, parse_config
from mentor.errors import ConfigError, StoreError, TeacherOutputError
from mentor.pipeline import get_teacher, label, prepare, run
from mentor.presets import demo_config

MENTOR = [sys.executable, "-m", "mentor.cli"]


def _cli(*args, cwd=None):
    return subprocess.run(MENTOR + list(args), capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    """The real `mentor demo`, run once through the CLI; later tests reuse its folder."""
    out = tmp_path_factory.mktemp("demo")
    res = _cli("demo", "--output-dir", str(out))
    assert res.returncode == 0, res.stderr
    return out, json.loads((out / "metrics.json").read_text()), res.stdout


def test_demo_distilled_student_beats_labeled_only(demo_run):
    out, m, _ = demo_run
    assert set(m) >= {"test_accuracy", "teacher", "labeled_only", "student", "gap_closed", "config"}
    assert m["teacher"]["accuracy"] > m["labeled_only"]["accuracy"]
    assert m["test_accuracy"] > m["labeled_only"]["accuracy"]  # distillation on the pool must help here
    assert 0 < m["gap_closed"] <= 1.5
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["test_accuracy"] == pytest.approx(m["test_accuracy"])
    assert (out / "config.yaml").exists() and (out / "store" / "_manifest.json").exists()
    assert saved["teacher_fingerprint"] == json.loads((out / "teacher.json").read_text())["fingerprint"]
    assert saved["sizes"] == {"n_labeled": 100, "n_val": 300, "n_pool": 997, "n_test": 400}


def test_rerun_pays_nothing_twice_and_reproduces(demo_run):
    out, m, _ = demo_run
    m2 = run(demo_config(output_dir=str(out), seed=0))
    last = json.loads((out / "teacher.json").read_text())["last_label_run"]
    assert last["n_new"] == 0 and last["n_skipped"] == 997 + 300 + 400
    assert m2["test_accuracy"] == pytest.approx(m["test_accuracy"])


def test_store_of_another_teacher_is_refused(demo_run, tmp_path):
    out, *_ = demo_run
    cfg = demo_config(output_dir=str(tmp_path), seed=1)  # seed 1 trains a different teacher
    cfg.teacher.min_steps = 100
    cfg.store.path = str(out / "store")
    ctx = prepare(cfg)
    with pytest.raises(StoreError, match="holds outputs of teacher"):
        label(ctx, get_teacher(ctx))


def _user_files(tmp_path: Path, *, bad_teacher=None):
    """Digits as a user would bring them: Parquet with id, a vector column and a label column that
    is empty for unlabeled rows; teacher probabilities (from a model of theirs) in another file."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    x, y = load_digits(return_X_y=True)
    ids = [f"img-{i:05d}" for i in range(len(y))]
    labels = [int(v) if i < 900 else None for i, v in enumerate(y)]  # 897 unlabeled rows
    pq.write_table(pa.table({"id": ids, "pixels": [list(map(float, r / 16)) for r in x],
                             "label": pa.array(labels, pa.int64())}), tmp_path / "data.parquet")
    teacher = LogisticRegression(max_iter=500).fit(x[:200] / 16, y[:200])
    probs = teacher.predict_proba(x / 16)
    if bad_teacher == "nan":
        probs[5, 0] = np.nan
    keep = slice(None) if bad_teacher != "missing" else slice(0, 1500)
    pq.write_table(pa.table({"id": ids[keep], "probs": [list(r) for r in probs[keep]]}), tmp_path / "teacher.parquet")
    cfg = {"seed": 0, "output_dir": "run", "method": "vanilla-soft",
           "data": {"path": "data.parquet"}, "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
           "teacher": {"kind": "file", "path": "teacher.parquet", "output": "probs"},
           "student": {"kind": "mlp", "hidden": [16]}, "train": {"epochs": 10, "min_steps": 200}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    return tmp_path / "config.yaml"


def test_user_files_through_mentor_run_cli(tmp_path):
    config = _user_files(tmp_path)
    res = _cli("run", str(config))
    assert res.returncode == 0, res.stderr
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert m["test_accuracy"] > 0.7 and m["teacher"]["accuracy"] > 0.8
    assert m["sizes"]["n_pool"] == 1797 - 100 - 200 - 300
    assert m["teacher_fingerprint"].startswith("file-")
    # the shards open directly in pandas
    import pandas as pd
    df = pd.read_parquet(tmp_path / "run" / "store")
    assert df["id"].is_unique and len(df) == 1797 - 100


def test_steps_one_by_one_match_run(tmp_path):
    config = _user_files(tmp_path)
    for step in (["label"], ["train", "--labeled-only"], ["train"], ["evaluate"]):
        res = _cli(*step, str(config))
        assert res.returncode == 0, (step, res.stderr)
    m = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert "gap_closed" in m and m["test_accuracy"] > 0.7


@pytest.mark.parametrize("bad, err, match", [
    ("nan", TeacherOutputError, "NaN or inf"),
    ("missing", TeacherOutputError, "have no teacher output"),
])
def test_bad_teacher_files_fail_before_training(tmp_path, bad, err, match):
    config = _user_files(tmp_path, bad_teacher=bad)
    with pytest.raises(err, match=match):
        run(load_config(config))
    res = _cli("run", str(config))
    assert res.returncode == 2 and match.split()[0] in res.stderr and "Traceback" not in res.stderr


def test_unknown_config_key_is_named(tmp_path):
    (tmp_path / "c.yaml").write_text("seed: 0\nsplit:\n  n_labelled: 50\nmethod: vanilla-soft\n")
    with pytest.raises(ConfigError, match="split.n_labelled: unknown key"):
        load_config(tmp_path / "c.yaml")
    res = _cli("run", str(tmp_path / "c.yaml"))
    assert res.returncode == 2 and "n_labelled" in res.stderr
    with pytest.raises(ConfigError, match="unknown method"):
        parse_config({"method": "slamm"})
    with pytest.raises(ConfigError, match="needs teacher.path"):
        parse_config({"teacher": {"kind": "file"}})


def test_demo_cli_prints_the_three_accuracies(demo_run):
    out, m, stdout = demo_run
    for word in ("teacher", "labeled-only student", "distilled student (vanilla-soft)"):
        assert word in stdout
    assert f"{100 * m['test_accuracy']:.2f}%" in stdout and f"{100 * m['teacher']['accuracy']:.2f}%" in stdout
    # V accuracies (what a user may look at to choose a correction) and the advice built from them
    for v in (m["teacher_val_accuracy"], m["student"]["val_accuracy"], m["labeled_only"]["val_accuracy"]):
        assert 0.5 < v <= 1 and f"{100 * v:.2f}%" in stdout
    assert "On V the distilled student" in stdout
    assert 0 < m["labeled_only"]["val_diff_se"] < 0.1  # the paired noise the advice weighs
