"""The end-to-end pipeline, one function per step of the data flow:

    data → split → teacher → store (teacher outputs) → student training → evaluation

Each step reads what the previous one wrote into the run's output folder, so `mentor label`,
`mentor train` and `mentor evaluate` can run separately and `mentor run` is just all of them.
A rerun reuses the fitted teacher, the stored outputs and finished students.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, dump_config
from .data import Dataset, Splits, load_dataset, load_file, make_splits
from .distributed import make_pool
from .errors import DataError, StoreError
from .evaluate import classification_report, gap_closed
from .methods import MethodContext, plan_method, train_with_plan
from .models import Featurizer, build_model, default_featurizer
from .store import TeacherStore
from .teachers import (FileTeacher, RemoteTeacher, Teacher, TorchTeacher, load_teacher, save_teacher,
                       train_model_teacher)
from .train import TrainConfig, epochs_for, predict_proba, train_student


@dataclass
class RunContext:
    """A config with its data and split resolved: what every step needs."""
    cfg: RunConfig
    data: Dataset
    splits: Splits
    out: Path

    @property
    def n_classes(self) -> int:
        return self.data.n_classes


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _key(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def load_data(cfg: RunConfig) -> Dataset:
    d = cfg.data
    if d.path:
        return load_file(d.path, id_column=d.id_column, label_column=d.label_column, text_column=d.text_column,
                         feature_columns=d.feature_columns, n_classes=d.n_classes)
    return load_dataset(d.name, **d.options)


def prepare(cfg: RunConfig) -> RunContext:
    """Load and validate the data, split it by the protocol, record the config and split."""
    data = load_data(cfg).validate()
    s = cfg.split
    splits = make_splits(data, n_labeled=s.n_labeled, n_val=s.n_val, n_test=s.n_test, n_pool=s.n_pool, seed=cfg.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(out / "config.yaml", dump_config(cfg))
    np.savez(out / "splits.npz", labeled=data.ids[splits.labeled], val=data.ids[splits.val],
             pool=data.ids[splits.pool], test=data.ids[splits.test])
    return RunContext(cfg, data, splits, out)


# ---------------------------------------------------------------------------------------------- teacher

_HTTP_KEYS = {"url", "batch_size", "timeout_s", "max_retries", "headers_env", "model_version"}


def get_teacher(ctx: RunContext) -> Teacher:
    """The configured teacher: a file, a TorchScript module, an HTTP endpoint, or a built-in model
    trained on A (cached in the run folder under a key of everything that determines it)."""
    t, data, sp = ctx.cfg.teacher, ctx.data, ctx.splits
    if t.kind == "file":
        teacher = FileTeacher(t.path, data.n_classes, output=t.output, id_column=t.id_column,
                              cost_per_example=t.cost_per_example)
        teacher.check_ids(data.ids[sp.pool], data.ids)
        return teacher
    if t.kind == "torchscript":
        if not Path(t.path).exists():
            raise DataError(f"TorchScript teacher {t.path} does not exist; check teacher.path.")
        module = torch.jit.load(t.path, map_location="cpu")
        return TorchTeacher(module, data.n_classes, output="probs" if t.output == "probs" else "logits",
                            cost_per_example=t.cost_per_example)
    if t.kind == "http":
        return RemoteTeacher(t.url, data.n_classes, output=t.output, batch_size=t.batch_size or ctx.cfg.store.batch_size,
                             timeout_s=t.timeout_s, max_retries=t.max_retries, headers_env=t.headers_env,
                             model_version=t.model_version, cost_per_example=t.cost_per_example)
    # the http-only keys stay out of the key, so teachers cached before they existed are found
    key = _key(t.model_dump(exclude=_HTTP_KEYS), ctx.cfg.data.model_dump(), ctx.cfg.split.model_dump(), ctx.cfg.seed)
    path = ctx.out / f"teacher-{t.kind}-{key}.pkl"
    if path.exists():
        return load_teacher(path)
    teacher = train_model_teacher(t.kind, data.features[sp.labeled], data.labels[sp.labeled],
                                  n_classes=data.n_classes, data_kind=data.kind, image_shape=data.image_shape,
                                  seed=ctx.cfg.seed, epochs=t.epochs, hidden=tuple(t.hidden),
                                  device=ctx.cfg.train.device, min_steps=t.min_steps)
    teacher.cost_per_example = t.cost_per_example
    save_teacher(teacher, path)
    return teacher


def store_path(ctx: RunContext) -> Path:
    return Path(ctx.cfg.store.path) if ctx.cfg.store.path else ctx.out / "store"


def open_store(ctx: RunContext, teacher: Teacher | None = None) -> TeacherStore:
    s = ctx.cfg.store
    if teacher is None:
        if not TeacherStore.exists(store_path(ctx)):
            raise StoreError(f"no teacher outputs at {store_path(ctx)}; run `mentor label` (or `mentor run`) first.")
        return TeacherStore.open(store_path(ctx))
    return TeacherStore(store_path(ctx), fingerprint=teacher.fingerprint, n_classes=ctx.n_classes, top_k=s.top_k,
                        precision=s.precision, shard_size=s.shard_size)


def label(ctx: RunContext, teacher: Teacher | None = None) -> TeacherStore:
    """Store teacher outputs for V, test and the pool (V for corrections, test to score the
    teacher). Ids already stored are skipped, so a rerun pays nothing twice."""
    teacher = teacher or get_teacher(ctx)
    store = open_store(ctx, teacher)
    sp, data, bs = ctx.splits, ctx.data, ctx.cfg.store.batch_size
    index = np.concatenate([sp.val, sp.test, sp.pool])
    if isinstance(teacher, FileTeacher):  # a file may leave V / test out; only the pool is required
        index = index[teacher.covers(data.ids[index])]
    batches = ((data.ids[index[i:i + bs]], data.features[index[i:i + bs]]) for i in range(0, len(index), bs))
    pool = make_pool(ctx.cfg.distribute, teacher)
    try:
        report = store.label(teacher, batches, progress=ctx.cfg.train.progress, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    _atomic_write_text(ctx.out / "teacher.json", json.dumps(
        {**teacher.describe(), "last_label_run": {**report.__dict__, "pool": pool.describe() if pool else None},
         "store": str(store.path)}, indent=2))
    return store


def teacher_outputs(store: TeacherStore, ids: np.ndarray, *, required: bool = True) -> np.ndarray | None:
    ids = np.asarray(ids).astype(str)
    if not required and len(store.missing(ids)):
        return None
    return store.read(ids)


# ---------------------------------------------------------------------------------------------- students

def _student_kind(ctx: RunContext) -> str:
    k = ctx.cfg.student.kind
    return k or ("tfidf" if ctx.data.kind == "text" else "mlp")


def _featurizer(ctx: RunContext) -> Featurizer:
    kind = _student_kind(ctx)
    feat = Featurizer(default_featurizer(kind, ctx.data.kind), max_features=ctx.cfg.student.max_features)
    fit_on = np.concatenate([ctx.splits.labeled, ctx.splits.pool])  # inputs only, never labels
    return feat.fit(ctx.data.features[fit_on])


def _new_student(ctx: RunContext, in_features: int) -> torch.nn.Module:
    st = ctx.cfg.student
    torch.manual_seed(ctx.cfg.seed)
    return build_model(_student_kind(ctx), in_features=in_features, n_classes=ctx.n_classes,
                       image_shape=ctx.data.image_shape, hidden=tuple(st.hidden), dropout=st.dropout)


def _train_config(ctx: RunContext, checkpoint: Path | None) -> TrainConfig:
    t = ctx.cfg.train
    return TrainConfig(epochs=t.epochs, min_steps=t.min_steps, batch_size=t.batch_size, lr=t.lr,
                       weight_decay=t.weight_decay, distill_weight=t.distill_weight, device=t.device, amp=t.amp,
                       seed=ctx.cfg.seed, checkpoint_path=str(checkpoint) if checkpoint else None, progress=t.progress)


def train(ctx: RunContext, store: TeacherStore | None = None, *, method: str | None = None,
          labeled_only: bool = False, name: str | None = None, student: torch.nn.Module | None = None) -> dict:
    """Train one student (or the labeled-only baseline) and save it as `<name>.pt` in the run folder."""
    method = method or ctx.cfg.method
    name = name or ("labeled-only" if labeled_only else "student")
    data, sp = ctx.data, ctx.splits
    feat = _featurizer(ctx)
    x_lab = feat.transform(data.features[sp.labeled])
    y_lab = data.labels[sp.labeled]
    model = student if student is not None else _new_student(ctx, x_lab.shape[1])
    # the checkpoint name carries everything that defines this training run, so a changed method,
    # teacher or student never resumes from another run's checkpoint
    ckpt = ctx.out / "checkpoints" / (f"{name}-" + _key(labeled_only or method, ctx.cfg.method_options,
                                                       ctx.cfg.student.model_dump(),
                                                       ctx.cfg.train.model_dump(), ctx.cfg.split.model_dump(), ctx.cfg.seed, ctx.cfg.data.model_dump(),
                                                       None if labeled_only else (store or open_store(ctx)).fingerprint)
                                      + ".pt")
    info: dict = {"method": "labeled-only" if labeled_only else method}
    if labeled_only:
        result = train_student(model, x_lab, y_lab, config=_train_config(ctx, ckpt))
    else:
        store = store or open_store(ctx)
        x_pool = feat.transform(data.features[sp.pool])
        t_pool = teacher_outputs(store, data.ids[sp.pool])
        t_val = teacher_outputs(store, data.ids[sp.val], required=False)
        cfg_t = ctx.cfg.train

        x_val = feat.transform(data.features[sp.val])  # inputs only; the featurizer stays fit on A ∪ U

        def train_and_predict(plan):  # for two-pass methods: a first student's outputs on U and V
            m = _new_student(ctx, x_lab.shape[1])
            train_with_plan(m, x_lab, y_lab, x_pool, t_pool, plan, _train_config(ctx, None))
            return predict_proba(m, x_pool), predict_proba(m, x_val)

        mctx = MethodContext(n_classes=ctx.n_classes, teacher_probs_pool=t_pool, teacher_probs_val=t_val,
                             val_labels=data.labels[sp.val], temperature=cfg_t.temperature, seed=ctx.cfg.seed,
                             train_and_predict=train_and_predict, options=dict(ctx.cfg.method_options),
                             n_epochs=epochs_for(len(x_lab) + len(x_pool), _train_config(ctx, None)),
                             pool_features=x_pool)
        plan = plan_method(method, mctx)
        info.update(plan.info)
        result = train_with_plan(model, x_lab, y_lab, x_pool, t_pool, plan, _train_config(ctx, ckpt))
        info["teacher_fingerprint"] = store.fingerprint
    info.update(seconds=result.seconds, final_loss=result.history[-1]["loss"] if result.history else None)
    tmp = ctx.out / f"{name}.pt.tmp"
    torch.save({"model": model.state_dict(), "featurizer": feat, "student_kind": _student_kind(ctx), "info": info}, tmp)
    os.replace(tmp, ctx.out / f"{name}.pt")
    return info


def load_student(ctx: RunContext, name: str = "student"):
    path = ctx.out / f"{name}.pt"
    if not path.exists():
        raise DataError(f"no trained student at {path}; run `mentor train` (or `mentor run`) first.")
    state = torch.load(path, map_location="cpu", weights_only=False)
    feat = state["featurizer"]
    model = _new_student(ctx, feat.transform(ctx.data.features[ctx.splits.labeled[:1]]).shape[1])
    model.load_state_dict(state["model"])
    return model, feat, state["info"]


def student_probs(ctx: RunContext, name: str, rows: np.ndarray) -> np.ndarray:
    """A trained student's probabilities on the given data rows (e.g. ctx.splits.val)."""
    model, feat, _ = load_student(ctx, name)
    return predict_proba(model, feat.transform(ctx.data.features[rows]), device=ctx.cfg.train.device)


def student_test_probs(ctx: RunContext, name: str) -> np.ndarray:
    return student_probs(ctx, name, ctx.splits.test)


# ---------------------------------------------------------------------------------------------- evaluation

def evaluate(ctx: RunContext, store: TeacherStore | None = None) -> dict:
    """Score the teacher, the labeled-only student and the distilled student on the test split;
    write metrics.json (with the config, sizes and teacher fingerprint beside the numbers)."""
    store = store or open_store(ctx)
    data, sp = ctx.data, ctx.splits
    y_test = data.labels[sp.test]
    t_test = teacher_outputs(store, data.ids[sp.test], required=False)
    t_val = teacher_outputs(store, data.ids[sp.val], required=False)
    s_probs = student_test_probs(ctx, "student")
    student = classification_report(s_probs, y_test, t_test)
    _, _, info = load_student(ctx, "student")
    metrics: dict = {"test_accuracy": student["accuracy"], "method": info["method"], "seed": ctx.cfg.seed,
                     "student": student, "train_info": info}
    if t_test is not None:
        metrics["teacher"] = classification_report(t_test, y_test)
    y_val = data.labels[sp.val]
    student["val_accuracy"] = float((student_probs(ctx, "student", sp.val).argmax(1) == y_val).mean())
    if t_val is not None:
        metrics["teacher_val_accuracy"] = float((t_val.argmax(1) == y_val).mean())
    if (ctx.out / "labeled-only.pt").exists():
        metrics["labeled_only"] = classification_report(student_test_probs(ctx, "labeled-only"), y_test, t_test)
        metrics["labeled_only"]["val_accuracy"] = float(
            (student_probs(ctx, "labeled-only", sp.val).argmax(1) == y_val).mean())
        if t_test is not None:
            metrics["gap_closed"] = gap_closed(student["accuracy"], metrics["labeled_only"]["accuracy"],
                                               metrics["teacher"]["accuracy"])
    metrics.update(
        sizes={"n_labeled": len(sp.labeled), "n_val": len(sp.val), "n_pool": len(sp.pool), "n_test": len(sp.test)},
        data={"name": data.name, "kind": data.kind, "n_classes": data.n_classes},
        teacher_fingerprint=store.fingerprint, store={"path": str(store.path), "rows": len(store),
                                                      "spent": store.spent, "calls": store.n_calls},
        config=ctx.cfg.model_dump(mode="json"),
        machine={"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
                 "cuda": torch.cuda.is_available()})
    _atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics


def run(cfg: RunConfig) -> dict:
    """The whole pipeline from one validated config. Returns the metrics written to metrics.json."""
    t0 = time.perf_counter()
    ctx = prepare(cfg)
    teacher = get_teacher(ctx)
    store = label(ctx, teacher)
    if cfg.baseline:
        train(ctx, labeled_only=True)
    train(ctx, store)
    metrics = evaluate(ctx, store)
    metrics["seconds"] = time.perf_counter() - t0
    _atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics
