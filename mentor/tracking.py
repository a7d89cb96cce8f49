"""Experiment tracking: a finished run's params, per-epoch losses, V and test metrics, report and
plots, logged to MLflow and/or TensorBoard (config `tracking`, off by default).

Like the report, what is logged is read from the run folder's files (config.yaml, metrics.json,
audit.json, active.json, cascade.json, history-*.json, the PNGs), so the numbers in the tracker
are the numbers on disk. `run_record` gathers them as plain data; `log_mlflow` and
`log_tensorboard` each send one record to one backend.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from .errors import ConfigError, MentorError

ARTIFACTS = ("report.html", "report.md", "config.yaml", "metrics.json", "audit.json", "active.json", "teacher.json")
_NOT_METRICS = {"config", "machine", "seed"}  # recorded as params or not numbers about the run


class TrackingError(MentorError):
    """The run finished, but logging it to a tracker failed."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


_BAD_KEY = re.compile(r"[^A-Za-z0-9_\-. /:]")


def clean_key(key: str) -> str:
    """A name both trackers accept: characters outside [A-Za-z0-9_-. /:] become '_' (an auto
    candidate 'vanilla-soft@0.5' is logged as 'vanilla-soft_0.5')."""
    return _BAD_KEY.sub("_", str(key))[:250]


def _numbers(d: dict, prefix: str) -> dict:
    out = {}
    for k, v in _flat(d).items():
        if k.split(".")[0] in _NOT_METRICS:
            continue
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[clean_key(prefix + k)] = float(v)
    return out


def _json(path: Path):
    try:
        return json.loads(path.read_text()) if path.exists() else None
    except (OSError, ValueError):
        return None


def run_record(run_dir) -> dict:
    """What a tracker receives, from a run folder: params (the config, flattened), final metrics,
    series (name -> [(step, value)]: per-epoch losses, accuracy against queries) and artifacts."""
    import yaml
    run_dir = Path(run_dir)
    try:
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    except (OSError, yaml.YAMLError):
        cfg = {}
    params = {clean_key(k): json.dumps(v) if isinstance(v, (list, dict)) else str(v)
              for k, v in _flat(cfg if isinstance(cfg, dict) else {}).items() if not k.startswith("tracking.")}
    params = {k: v if len(v) <= 500 else v[:497] + "..." for k, v in params.items()}
    metrics, series = {}, {}
    sources = [("metrics.json", ""), ("audit.json", "audit.")]
    sources += [(p.name, p.stem + ".") for p in sorted(run_dir.glob("cascade*.json"))]
    for name, prefix in sources:
        d = _json(run_dir / name)
        if isinstance(d, dict):
            metrics.update(_numbers(d, prefix))
    for name in ("student", "labeled-only"):
        hist = _json(run_dir / f"history-{name}.json")
        if isinstance(hist, list) and hist:
            series[f"train.loss.{name}"] = [(int(h["epoch"]), float(h["loss"])) for h in hist]
            for key in ("val_accuracy", "val_nll"):  # scored each epoch with train.select_on
                if all(key in h for h in hist):
                    series[f"train.{key}.{name}"] = [(int(h["epoch"]), float(h[key])) for h in hist]
    active = _json(run_dir / "active.json")
    if isinstance(active, dict):
        metrics.update(_numbers({k: v for k, v in active.items() if not isinstance(v, list)}, "active."))
        series["active.test_accuracy"] = list(zip(active.get("queries", []), active.get("test_accuracy", [])))
        series["active.spent"] = list(zip(active.get("queries", []), active.get("spent_per_round", [])))
    m = _json(run_dir / "metrics.json") or {}
    run_name = "-".join(str(x) for x in ((m.get("data") or {}).get("name") or (active or {}).get("dataset") or "run",
                                         m.get("method") or (active or {}).get("strategy") or "",
                                         f"seed{cfg.get('seed', 0) if isinstance(cfg, dict) else 0}") if x)
    artifacts = ([run_dir / a for a in ARTIFACTS if (run_dir / a).exists()] + sorted(run_dir.glob("cascade*.json"))
                 + sorted(run_dir.glob("*.png")))
    return {"run_name": run_name, "params": params, "metrics": metrics, "series": series, "artifacts": artifacts,
            "tags": {"mentor.run_dir": str(run_dir.resolve()),
                     "mentor.teacher_fingerprint": str(m.get("teacher_fingerprint") or
                                                       (active or {}).get("teacher_fingerprint") or "")}}


def log_mlflow(record: dict, *, uri: str, experiment: str = "mentor", artifact_location: str | None = None) -> str:
    """One MLflow run holding the record; returns its run id. Uses a client, not MLflow's global
    active run, so it never touches a run the caller has open."""
    import time
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient
    logging.getLogger("alembic").setLevel(logging.WARNING)  # a new SQLite store prints its migrations
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(experiment)
    exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_location)
    run = client.create_run(exp_id, run_name=record["run_name"])
    run_id = run.info.run_id
    try:
        now = int(time.time() * 1000)
        params = [Param(k, v) for k, v in record["params"].items()]
        metrics = [Metric(k, v, now, 0) for k, v in record["metrics"].items()]
        metrics += [Metric(name, float(v), now, int(step)) for name, pts in record["series"].items() for step, v in pts]
        for i in range(0, len(params), 100):
            client.log_batch(run_id, params=params[i:i + 100])
        for i in range(0, len(metrics), 1000):
            client.log_batch(run_id, metrics=metrics[i:i + 1000])
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in record["tags"].items()])
        for path in record["artifacts"]:
            client.log_artifact(run_id, str(path))
    except BaseException:
        client.set_terminated(run_id, "FAILED")
        raise
    client.set_terminated(run_id, "FINISHED")
    return run_id


def log_tensorboard(record: dict, log_dir) -> Path:
    """TensorBoard event files in `log_dir` (replacing the ones an earlier run wrote there):
    series and final metrics as scalars, the config and report as text, the plots as images."""
    import matplotlib.image
    from torch.utils.tensorboard import SummaryWriter
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    for old in log_dir.glob("events.out.tfevents.*"):
        old.unlink()
    w = SummaryWriter(log_dir=str(log_dir))
    try:
        for name, pts in record["series"].items():
            for step, v in pts:
                w.add_scalar(name, float(v), int(step))
        for k, v in record["metrics"].items():
            w.add_scalar(k, v, 0)
        w.add_text("params", "\n".join(f"    {k}: {v}" for k, v in sorted(record["params"].items())), 0)
        for path in record["artifacts"]:
            if path.suffix == ".png":
                img = matplotlib.image.imread(str(path))[..., :3]
                w.add_image(f"plots/{path.stem}", img, 0, dataformats="HWC")
            elif path.name == "report.md":
                w.add_text("report", path.read_text(), 0)
    finally:
        w.close()
    return log_dir


def default_mlflow(run_dir) -> tuple[str, str]:
    """A SQLite tracking store under the run folder, its artifacts beside it."""
    base = (Path(run_dir) / "mlflow").resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}", (base / "artifacts").as_uri()


def check_tracker(t) -> None:
    """Before a run starts: an MLflow server named by URL must answer, else the run would be paid
    for and then wait minutes in MLflow's retries. Any HTTP answer counts; only no answer fails."""
    if not (t.mlflow and t.mlflow_uri and t.mlflow_uri.lower().startswith(("http://", "https://"))):
        return
    import urllib.error
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit
    from .credentials import redact_url
    parts = urlsplit(t.mlflow_uri)
    health = urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path.rstrip("/") + "/health", "", ""))
    try:
        urllib.request.urlopen(health, timeout=10).close()
    except urllib.error.HTTPError:
        return
    except (urllib.error.URLError, OSError, ValueError) as e:
        reason = getattr(e, "reason", e)
        raise ConfigError(f"tracking.mlflow_uri {redact_url(t.mlflow_uri)} does not answer ({reason}); start the "
                          "MLflow server, fix the URI, or set tracking.mlflow: false. Nothing was run.") from None


def track_after_run(ctx) -> dict:
    """Log a finished run to the trackers its config turns on; {} when none is."""
    t = ctx.cfg.tracking
    done = {}
    if not (t.mlflow or t.tensorboard):
        return done
    record = run_record(ctx.out)
    if t.tensorboard:
        done["tensorboard"] = str(log_tensorboard(record, ctx.out / "tensorboard"))
    if t.mlflow:
        uri, artifacts = (t.mlflow_uri, None) if t.mlflow_uri else default_mlflow(ctx.out)
        try:
            done["mlflow_run_id"] = log_mlflow(record, uri=uri, experiment=t.experiment, artifact_location=artifacts)
        except Exception as e:  # a tracker down or refusing: the run's results are on disk already
            from .credentials import redact_url, url_secrets
            why = str(e)
            for secret in url_secrets(uri):  # MLflow's messages quote the URL, password included
                why = why.replace(secret, "***")
            raise TrackingError(
                f"the run finished (results in {ctx.out}) but logging it to MLflow at {redact_url(uri)} failed: "
                f"{type(e).__name__}: {why[:300]}. Check tracking.mlflow_uri and that the server is up, then run "
                "the same command again: the teacher outputs, teacher and students are reused, nothing is paid "
                "twice.") from None
    return done

