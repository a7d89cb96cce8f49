"""Experiment tracking: a tiny run logged to MLflow (SQLite store under the run folder, or a given
URI) and TensorBoard, read back with MLflow's client and TensorBoard's event reader."""

import json
import subprocess
import sys

import pytest

pytest.importorskip("mlflow", reason="MLflow is not installed: pip install -e '.[tracking]'")
pytest.importorskip("tensorboard", reason="TensorBoard is not installed: pip install -e '.[tracking]'")

from mentor.config import parse_config  # noqa: E402
from mentor.pipeline import run  # noqa: E402


def _config(out, **tracking):
    return parse_config({
        "seed": 0, "output_dir": str(out), "method": "vanilla-soft",
        "data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 300, "n_test": 400, "n_pool": 600},
        "teacher": {"kind": "logistic"}, "student": {"kind": "logistic"},
        "train": {"epochs": 12, "min_steps": 0, "select_on": "val_accuracy"}, "tracking": tracking})


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    out = tmp_path_factory.mktemp("tracking") / "run"
    metrics = run(_config(out, mlflow=True, tensorboard=True))
    return out, metrics


def _mlflow_runs(uri):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("mentor")
    return client, client.search_runs([exp.experiment_id])


def test_mlflow_holds_params_losses_metrics_and_the_report(tracked):
    out, metrics = tracked
    client, runs = _mlflow_runs(f"sqlite:///{out / 'mlflow' / 'mlflow.db'}")
    assert len(runs) == 1
    r = runs[0]
    assert r.info.status == "FINISHED" and r.info.run_name == "digits-vanilla-soft-seed0"
    assert r.data.params["method"] == "vanilla-soft" and r.data.params["split.n_labeled"] == "100"
    assert r.data.metrics["test_accuracy"] == pytest.approx(metrics["test_accuracy"])
    assert r.data.metrics["student.val_accuracy"] == pytest.approx(metrics["student"]["val_accuracy"])
    assert r.data.metrics["teacher_val_accuracy"] == pytest.approx(metrics["teacher_val_accuracy"])
    assert r.data.metrics["audit.accuracy"] == pytest.approx(metrics["teacher_val_accuracy"])
    history = json.loads((out / "history-student.json").read_text())
    logged = client.get_metric_history(r.info.run_id, "train.loss.student")
    assert [m.step for m in logged] == [h["epoch"] for h in history] == list(range(1, 13))
    assert [m.value for m in logged] == pytest.approx([h["loss"] for h in history])
    names = {a.path for a in client.list_artifacts(r.info.run_id)}
    assert {"report.html", "report.md", "reliability.png", "metrics.json", "config.yaml"} <= names
    local = client.download_artifacts(r.info.run_id, "report.html", str(out / "dl"))
    assert open(local).read() == (out / "report.html").read_text()


def test_tensorboard_events_hold_losses_metrics_and_plots(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    out, metrics = tracked
    ea = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    ea.Reload()
    loss = ea.Scalars("train.loss.student")
    history = json.loads((out / "history-student.json").read_text())
    assert [e.step for e in loss] == list(range(1, 13))
    assert [e.value for e in loss] == pytest.approx([h["loss"] for h in history], rel=1e-6)
    val = ea.Scalars("train.val_accuracy.student")  # V scored each epoch (train.select_on)
    assert [e.value for e in val] == pytest.approx([h["val_accuracy"] for h in history], rel=1e-6)
    assert metrics["train_info"]["best_epoch"] == 1 + max(range(12), key=lambda i: (history[i]["val_accuracy"], -i))
    assert ea.Scalars("test_accuracy")[0].value == pytest.approx(metrics["test_accuracy"], rel=1e-6)
    assert "plots/reliability" in ea.Tags()["images"]
    assert {"report/text_summary", "params/text_summary"} <= set(ea.Tags()["tensors"])


def test_a_given_mlflow_uri_is_used(tracked, tmp_path):
    out, _ = tracked
    uri = f"sqlite:///{out / 'mlflow' / 'mlflow.db'}"  # the store of the first run, named explicitly
    other = tmp_path / "second"
    run(_config(other, mlflow=True, mlflow_uri=uri))
    assert not (other / "mlflow").exists() and not (other / "tensorboard").exists()
    _, runs = _mlflow_runs(uri)
    assert sorted(r.data.tags["mentor.run_dir"] for r in runs) == sorted([str(out.resolve()), str(other.resolve())])


def test_tracking_is_off_by_default_and_its_uri_keeps_no_password(tmp_path):
    cfg = _config(tmp_path / "run")
    assert not cfg.tracking.mlflow and not cfg.tracking.tensorboard
    (tmp_path / "c.yaml").write_text("data: {name: digits}\ntracking: {mlflow: true, "
                                     "mlflow_uri: 'https://me:s3cret@mlflow.example/'}\n")
    res = subprocess.run([sys.executable, "-m", "mentor.cli", "check-config", str(tmp_path / "c.yaml")],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert "s3cret" not in res.stdout and "mlflow_uri: https://***@mlflow.example/" in res.stdout


def _closed_port() -> int:
    import socket
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_tracking_server_that_is_down_stops_the_run_before_anything_is_paid(tmp_path):
    port = _closed_port()
    (tmp_path / "c.yaml").write_text(
        "output_dir: run\ndata: {name: digits}\nteacher: {kind: logistic}\n"
        f"tracking: {{mlflow: true, mlflow_uri: 'http://me:s3cret@127.0.0.1:{port}'}}\n")
    res = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(tmp_path / "c.yaml")], capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert f"tracking.mlflow_uri http://***@127.0.0.1:{port} does not answer" in res.stderr
    assert "s3cret" not in res.stderr + res.stdout and not (tmp_path / "run").exists()


def test_a_tracker_failing_after_the_run_keeps_the_results_and_the_password_out(tracked, monkeypatch):
    """The server went down during the run: one clear error, no password, the run folder intact."""
    from types import SimpleNamespace
    from mentor.config import TrackingConfig
    from mentor.tracking import TrackingError, track_after_run
    out, _ = tracked
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")  # MLflow's default retries take 5 minutes here
    port = _closed_port()
    ctx = SimpleNamespace(out=out, cfg=SimpleNamespace(tracking=TrackingConfig(
        mlflow=True, mlflow_uri=f"http://me:s3cret@127.0.0.1:{port}")))
    with pytest.raises(TrackingError) as e:
        track_after_run(ctx)
    assert f"MLflow at http://***@127.0.0.1:{port} failed" in str(e.value) and "s3cret" not in str(e.value)
    assert "the run finished (results in" in str(e.value) and (out / "metrics.json").exists()


def test_an_active_run_is_tracked_against_its_queries(tmp_path):
    from mentor.tracking import clean_key, run_record
    (tmp_path / "config.yaml").write_text("seed: 3\nstrategy: rad\n")
    (tmp_path / "active.json").write_text(json.dumps({
        "strategy": "rad", "dataset": "digits", "queries": [0, 50, 100], "test_accuracy": [0.5, 0.6, 0.7],
        "spent_per_round": [0, 5, 10], "auc": 0.61, "spent": 10.0, "stopped": None}))
    rec = run_record(tmp_path)
    assert rec["run_name"] == "digits-rad-seed3" and rec["params"] == {"seed": "3", "strategy": "rad"}
    assert rec["series"]["active.test_accuracy"] == [(0, 0.5), (50, 0.6), (100, 0.7)]
    assert rec["metrics"] == {"active.auc": 0.61, "active.spent": 10.0}
    assert clean_key("auto.val_accuracy.vanilla-soft@0.5") == "auto.val_accuracy.vanilla-soft_0.5"
