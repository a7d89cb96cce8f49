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
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .config import RunConfig, config_record, dump_config, without_added_defaults
from .data import Dataset, Splits, load_dataset, load_file, make_splits
from .teachers.pools import make_pool
from .checks import suspected_permutation
from .errors import ConfigError, DataError, MentorError, StoreError, TeacherOutputError
from .evaluate import classification_report, gap_closed_verdict, machine_record, paired_se
from .methods import MethodContext, plan_method, train_with_plan
from .students import distributed
from .students.dual import DualHead, is_dual_head_state
from .students.subclass import SubclassHead, subclasses_in_state
from .students.models import Featurizer, build_model, default_featurizer
from .store import TeacherStore
from .teachers import (ClassOrderTeacher, EmbeddingTeacher, FileTeacher, RemoteTeacher, Teacher, TeacherCacheError, TorchTeacher,
                       load_teacher, save_teacher, teacher_cache_suffix, train_model_teacher)
from .students.rows import n_rows, take_rows
from .students.train import TrainConfig, epochs_for, load_plain, predict_proba, train_student


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
        extra = sorted(set(d.options) - {"split"})
        if extra:
            raise ConfigError(f"data.options {extra} are read only by the built-in data sets (data.name); with "
                              "data.path the one option is split (a Hugging Face dataset folder's splits). Remove them.")
        return load_file(d.path, id_column=d.id_column, label_column=d.label_column, text_column=d.text_column,
                         feature_columns=d.feature_columns, n_classes=d.n_classes, classes=d.classes,
                         split=d.options.get("split"))
    data = load_dataset(d.name, **d.options)
    return data if d.classes is None else data.with_class_order(d.classes)


# result files of one run; a rerun with another config into the same folder must not mix with them
RUN_RESULTS = ("metrics.json", "student.pt", "labeled-only.pt", "audit.json", "reliability.png", "active.json",
               "active.png", "active_state.json", "teacher.json", "model", "cascade.json", "cascade.png",
               "cascade-labeled-only.json", "cascade-labeled-only.png",
               "report.md", "report.html",
               "history-student.json", "history-labeled-only.json", "ensemble.json")
# settings that change how a run goes, not what it computes
_COSMETIC = {("train", "progress"), ("distribute",), ("tracking",), ("store", "batch_size"), ("store", "shard_size"),
             ("teacher", "timeout_s"), ("teacher", "max_retries"), ("teacher", "trust_code"),
             ("teacher", "check_class_order"), ("export",)}


def config_differences(old: dict, new: dict, prefix: tuple = ()) -> list[str]:
    """Dotted keys whose values differ between two dumped configs, with both values."""
    diffs = []
    for key in sorted(set(old) | set(new), key=str):
        path = prefix + (key,)
        if path in _COSMETIC or path[:1] in _COSMETIC:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += config_differences(a, b, path)
        elif a != b:
            diffs.append(f"{'.'.join(map(str, path))}: {a!r} -> {b!r}")
    return diffs


def claim_output_dir(cfg: RunConfig, *, force: bool = False) -> Path:
    """The run folder, made writable for this config. A folder holding another config's run is
    refused (naming the differences) unless `force`, which removes that run's results; the teacher
    outputs it stored, the fitted teacher and checkpoints (keyed by their config) are kept."""
    import yaml
    out = Path(cfg.output_dir)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"output_dir {out} is a file, not a folder; choose another output_dir.")
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(out, os.W_OK | os.X_OK):
        raise ConfigError(f"output_dir {out} is not writable; choose another output_dir or fix its permissions.")
    text = dump_config(cfg)
    previous = out / "config.yaml"
    if previous.exists():
        try:
            old = yaml.safe_load(previous.read_text()) or {}
        except yaml.YAMLError:
            old = {"unreadable": True}
        diffs = config_differences(without_added_defaults(old if isinstance(old, dict) else {}),
                                   without_added_defaults(yaml.safe_load(text)))
        if diffs and not force:
            shown = "\n  ".join(diffs[:12]) + (f"\n  ... and {len(diffs) - 12} more" if len(diffs) > 12 else "")
            raise ConfigError(f"output_dir {out} holds a run with another config:\n  {shown}\nUse another "
                              "output_dir, or pass --force to replace that run's results (its stored teacher "
                              "outputs are kept).")
        if diffs:
            for name in RUN_RESULTS:
                if (out / name).is_dir():
                    if (out / name / "mentor_student.json").is_file():  # the model folder this run wrote
                        import shutil
                        shutil.rmtree(out / name)
                else:
                    (out / name).unlink(missing_ok=True)
    _atomic_write_text(previous, text)
    return out


def start_distributed(cfg: RunConfig) -> bool:
    """Under torchrun (several processes): refuse what cannot train data-parallel, then join the
    process group (students.distributed). False, and nothing done, for one process."""
    if distributed.launched() is None:
        return False
    if cfg.train.data_path == "stream":
        raise ConfigError(distributed.STREAM_NOT_DISTRIBUTED)
    return distributed.init_from_env(cfg.train.device)


def prepare(cfg: RunConfig, *, force: bool = False) -> RunContext:
    """Load and validate the data, split it by the protocol, record the config and split.
    `force`: replace the results of another config's run in the same output_dir.
    Under torchrun every rank makes the same split; only rank 0 writes the folder."""
    from .students.train import resolve_device
    resolve_device(cfg.train.device)  # a device this machine lacks fails now, not after labeling
    start_distributed(cfg)
    data = load_data(cfg).validate()
    check_student(cfg, data)
    s = cfg.split
    splits = make_splits(data, n_labeled=s.n_labeled, n_val=s.n_val, n_test=s.n_test, n_pool=s.n_pool, seed=cfg.seed)
    ctx = RunContext(cfg, data, splits, Path(cfg.output_dir))
    if cfg.student.kind == "transformer":  # wrong data or folders fail now, before the teacher is paid
        from .students.hf import check_student_folders
        check_student_folders(*_transformer_paths(ctx), cfg.student.max_length)

    def write_folder():
        out = claim_output_dir(cfg, force=force)
        np.savez(out / "splits.npz", labeled=data.ids[splits.labeled], val=data.ids[splits.val],
                 pool=data.ids[splits.pool], test=data.ids[splits.test])
    distributed.on_main(write_folder, "preparing the run folder")
    return RunContext(cfg, data, splits, Path(cfg.output_dir))


# ---------------------------------------------------------------------------------------------- teacher

_HTTP_KEYS = {"url", "batch_size", "timeout_s", "max_retries", "headers_env", "model_version"}
# teacher keys that do not change a teacher trained here; kept out of cache keys so they stay stable
_LATER_TEACHER_KEYS = {"trust_code", "classes", "check_class_order", "embeddings"}  # embeddings: same model


def _data_key(cfg: RunConfig) -> dict:
    """The data section as it enters cache and checkpoint keys: data.classes only when set (it
    renumbers the labels), so runs from before the option existed keep their keys."""
    return cfg.data.model_dump(exclude=set() if cfg.data.classes is not None else {"classes"})


def get_teacher(ctx: RunContext) -> Teacher:
    """The configured teacher: a file, a TorchScript module, an HTTP endpoint, or a built-in model
    trained on A (cached in the run folder under a key of everything that determines it).
    A teacher trained elsewhere has its outputs matched to the data's classes by name."""
    if ctx.cfg.teachers is not None:
        raise ConfigError("this config names several teachers (teachers:); this step takes one teacher. Label and "
                          "combine them with `mentor run` or `mentor label`, or give one teacher (teacher:).")
    teacher = _get_teacher(ctx)
    t, data = ctx.cfg.teacher, ctx.data
    if t.kind in ("http", "torchscript") and t.classes is not None:
        if data.class_names is None:
            raise ConfigError("teacher.classes names the teacher's output order, but the data's classes have no "
                              "names (integer labels): set data.classes too, so the two can be matched.")
        teacher = ClassOrderTeacher(teacher, t.classes, data.class_names)
    if t.kind in ("file", "http", "torchscript") and data.class_order_inferred and not getattr(
            teacher, "classes", None):
        raise ConfigError(
            f"the labels of {data.name!r} are strings, numbered here alphabetically ({data.class_names[:10]}), but "
            f"a {t.kind} teacher gives one column per class in its own order, which nothing states. Set data.classes "
            "to the class names in the order of the teacher's outputs (or teacher.classes, or name the columns in "
            "the teacher file).")
    if t.embeddings:
        teacher = EmbeddingTeacher(teacher)
    return teacher


def _get_teacher(ctx: RunContext) -> Teacher:
    t, data, sp = ctx.cfg.teacher, ctx.data, ctx.splits
    if t.kind == "file":
        teacher = FileTeacher(t.path, data.n_classes, output=t.output, id_column=t.id_column,
                              cost_per_example=t.cost_per_example, classes=t.classes, data_classes=data.class_names)
        teacher.check_ids(data.ids[sp.pool], data.ids)
        return teacher
    if t.kind == "torchscript":
        if not Path(t.path).exists():
            raise DataError(f"TorchScript teacher {t.path} does not exist; check teacher.path.")
        if not t.trust_code:
            raise ConfigError(f"teacher {t.path} is a TorchScript file, and a TorchScript file is code: loading it "
                              "runs whatever its author wrote. If you trust who made it, opt in with "
                              "`teacher.trust_code: true` (or --set teacher.trust_code=true); otherwise ask for the "
                              "teacher's outputs as a file (teacher.kind: file) or its weights as safetensors.")
        warnings.warn(f"loading the TorchScript teacher {t.path}: it runs code from that file (teacher.trust_code is "
                      "true).", stacklevel=2)
        module = torch.jit.load(t.path, map_location="cpu")
        return TorchTeacher(module, data.n_classes, output="probs" if t.output == "probs" else "logits",
                            cost_per_example=t.cost_per_example)
    if t.kind == "llm":
        return _llm_teacher(ctx)
    if t.kind == "http":
        return RemoteTeacher(t.url, data.n_classes, output=t.output, batch_size=t.batch_size or ctx.cfg.store.batch_size,
                             timeout_s=t.timeout_s, max_retries=t.max_retries, headers_env=t.headers_env,
                             model_version=t.model_version, cost_per_example=t.cost_per_example,
                             data_classes=t.classes or data.class_names)  # answers naming classes: matched by name
    # the http-only keys and trust_code stay out of the key, so it is stable as fields are added
    key = _key(t.model_dump(exclude=_HTTP_KEYS | _LATER_TEACHER_KEYS), _data_key(ctx.cfg), ctx.cfg.split.model_dump(),
               ctx.cfg.seed)
    path = ctx.out / (f"teacher-{t.kind}-{key}" + teacher_cache_suffix(t.kind))
    old = sorted(p.name for p in ctx.out.glob(f"teacher-{t.kind}-*.pkl"))
    if path.exists():
        try:
            return load_teacher(path, device=ctx.cfg.train.device)
        except TeacherCacheError as e:
            warnings.warn(f"{e} It was not used; refitting the teacher on A and rewriting the cache.", stacklevel=2)
    elif old:
        warnings.warn(f"{ctx.out}: {', '.join(old)} is a teacher cache in the pickle format of older mentor versions; "
                      "it is not loaded, because unpickling a file can run code. Refitting the teacher on A (cached "
                      f"as {path.name}); you can delete the .pkl file.", stacklevel=2)
    teacher = train_model_teacher(t.kind, data.features[sp.labeled], data.labels[sp.labeled],
                                  n_classes=data.n_classes, data_kind=data.kind, image_shape=data.image_shape,
                                  seed=ctx.cfg.seed, epochs=t.epochs, hidden=tuple(t.hidden),
                                  device=ctx.cfg.train.device, min_steps=t.min_steps)
    teacher.cost_per_example = t.cost_per_example
    save_teacher(teacher, path)
    return teacher


def _llm_teacher(ctx: RunContext) -> Teacher:
    """An LLM labeling the data's classes in the data's order; its few-shot examples come from A."""
    data, sp = ctx.data, ctx.splits
    if data.kind != "text":
        raise ConfigError(f"teacher kind 'llm' reads text, but {data.name!r} is {data.kind} data; use a text data set "
                          "(data.text_column) or another teacher kind.")
    labels = data.class_names or [str(c) for c in range(data.n_classes)]
    from .teachers.llm.teacher import build_llm_teacher
    teacher = build_llm_teacher(ctx.cfg.teacher.llm, labels=labels, a_texts=data.features[sp.labeled],
                                a_labels=data.labels[sp.labeled], a_ids=data.ids[sp.labeled], seed=ctx.cfg.seed)
    # the price of one call before it is made (budgets, the ledger's estimate): tokens of a sample of V
    sample = sp.val[:20] if len(sp.val) else sp.pool[:20]
    teacher.cost_per_example = teacher.estimate(list(data.features[sample]))["cost_per_example"]
    return teacher


TEACHER_NOTE = "_teacher.json"  # in the store folder (underscore: Parquet readers skip it): what made its outputs, to name what changed


def _check_store_teacher(path: Path, teacher: Teacher) -> None:
    """A store made by another teacher is refused by fingerprint; name what differs when both
    teachers described themselves (an LLM teacher's prompt, scoring, model...)."""
    note = path / TEACHER_NOTE
    if not (TeacherStore.exists(path) and note.exists()):
        return
    try:
        old = json.loads(note.read_text())
    except (OSError, ValueError):
        return
    if old.get("fingerprint") == teacher.fingerprint:
        return
    new = teacher.describe()
    changed = [k for k in sorted(set(old) | set(new)) if k not in ("fingerprint", "cost_per_example")
               and _flat(old.get(k)) != _flat(new.get(k))]
    if changed:
        raise StoreError(f"the store at {path} holds answers of another teacher: its {', '.join(changed)} changed "
                         f"(stored: {_short(old, changed)}; now: {_short(new, changed)}). Answers to a different "
                         "prompt or model are not mixed. Use another store.path for this teacher (the old answers "
                         "stay where they are), or undo the change.")


def _flat(v) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _short(d: dict, keys: list[str]) -> str:
    text = "; ".join(f"{k}={_flat(d.get(k))}" for k in keys)
    return text if len(text) < 400 else text[:400] + "..."


def _note_store_teacher(path: Path, teacher: Teacher) -> None:
    if not (path / TEACHER_NOTE).exists():
        _atomic_write_text(path / TEACHER_NOTE, json.dumps(teacher.describe(), indent=2, default=str))


def estimate_labeling(ctx: RunContext, teacher: Teacher | None = None) -> dict:
    """Expected tokens and cost of labeling what is not stored yet (V, test, pool); nothing is sent.
    Several teachers: the sums, with each teacher's estimate under `teachers`."""
    if teacher is None and ctx.cfg.teachers is not None:
        each = {name: estimate_labeling(sub) for name, sub in teacher_contexts(ctx).items()}
        total = {k: sum(e.get(k, 0) for e in each.values()) for k in ("examples", "cost", "already_stored")}
        return {**total, "cost_per_example": total["cost"] / max(total["examples"], 1), "teachers": each}
    teacher = teacher or get_teacher(ctx)
    if not hasattr(teacher, "estimate"):
        n = len(ctx.splits.val) + len(ctx.splits.test) + len(ctx.splits.pool)
        return {"examples": n, "cost": n * teacher.cost_per_example, "cost_per_example": teacher.cost_per_example}
    sp, data = ctx.splits, ctx.data
    index = np.concatenate([sp.val, sp.test, sp.pool])
    path = store_path(ctx)
    if TeacherStore.exists(path):
        store = open_store(ctx, teacher)
        index = index[np.isin(data.ids[index], store.missing(data.ids[index]))]
    est = teacher.estimate(list(data.features[index]))
    return {**est, "already_stored": int(len(sp.val) + len(sp.test) + len(sp.pool) - len(index))}


def store_path(ctx: RunContext) -> Path:
    """The store the students learn from: the teacher's, or with several teachers their combination."""
    if ctx.cfg.teachers is not None:
        return ctx.out / COMBINED_STORE
    return Path(ctx.cfg.store.path) if ctx.cfg.store.path else ctx.out / "store"


def open_store(ctx: RunContext, teacher: Teacher | None = None) -> TeacherStore:
    s = ctx.cfg.store
    if teacher is None:
        if not TeacherStore.exists(store_path(ctx)) and not distributed.is_main():
            raise StoreError(f"rank {distributed.rank()} does not see the teacher outputs rank 0 stored at "
                             f"{store_path(ctx)}: under torchrun on several machines, output_dir (and store.path) "
                             "must be a folder every machine mounts (a shared filesystem), as must the data.")
        if not TeacherStore.exists(store_path(ctx)):
            raise StoreError(f"no teacher outputs at {store_path(ctx)}; run `mentor label` (or `mentor run`) first.")
        return TeacherStore.open(store_path(ctx))
    return TeacherStore(store_path(ctx), fingerprint=teacher.fingerprint, n_classes=ctx.n_classes, top_k=s.top_k,
                        precision=s.precision, shard_size=s.shard_size)


def label(ctx: RunContext, teacher: Teacher | None = None) -> TeacherStore:
    """Store teacher outputs for V, test and the pool (V for corrections, test to score the
    teacher). Ids already stored are skipped, so a rerun pays nothing twice. With several
    teachers (and no `teacher` given), each is labeled into its own store and the combination
    is returned (`label_ensemble`)."""
    if teacher is None and ctx.cfg.teachers is not None:
        return label_ensemble(ctx)
    teacher = teacher or get_teacher(ctx)
    _check_store_teacher(store_path(ctx), teacher)
    store = open_store(ctx, teacher)
    _note_store_teacher(store.path, teacher)
    sp, data, bs = ctx.splits, ctx.data, ctx.cfg.store.batch_size
    if hasattr(teacher, "spent_before"):  # an LLM's spending cap counts what the store already paid
        teacher.spent_before = store.spent
    val, rest = sp.val, np.concatenate([sp.test, sp.pool])
    if isinstance(teacher, FileTeacher):  # a file may leave V / test out; only the pool is required
        val, rest = val[teacher.covers(data.ids[val])], rest[teacher.covers(data.ids[rest])]

    def batches(index):
        return ((data.ids[index[i:i + bs]], data.features[index[i:i + bs]]) for i in range(0, len(index), bs))

    pool = make_pool(ctx.cfg.distribute, teacher)
    try:  # V first: a teacher in another class order is caught before the pool is paid for
        report = store.label(teacher, batches(val), progress=ctx.cfg.train.progress, pool=pool)
        check_class_order(ctx, store)
        more = store.label(teacher, batches(rest), progress=ctx.cfg.train.progress, pool=pool)
    finally:
        if pool is not None:
            pool.close()
    report = type(report)(**{k: getattr(report, k) + getattr(more, k) for k in report.__dict__})
    _atomic_write_text(ctx.out / "teacher.json", json.dumps(
        {**teacher.describe(), "last_label_run": {**report.__dict__, "pool": pool.describe() if pool else None},
         "store": str(store.path)}, indent=2))
    return store


# ---------------------------------------------------------------------------------------------- several teachers

COMBINED_STORE = "store-combined"  # in the run folder: derived from the teachers' stores, rebuilt when they change
ENSEMBLE_NOTE = "ensemble.json"


def teacher_contexts(ctx: RunContext) -> dict[str, RunContext]:
    """One context per named teacher: the run's config with `teacher` set to it and the store at
    <store.path or output_dir/store>/<name>, so each teacher's (paid) answers stay in a folder of
    their own under their own fingerprint. The split, data and output folder are shared."""
    root = Path(ctx.cfg.store.path) if ctx.cfg.store.path else ctx.out / "store"
    if TeacherStore.exists(root):
        raise ConfigError(f"{root} holds one teacher's store, but this config names several teachers (teachers:), "
                          "whose stores go in folders inside it. Set store.path to another folder (the old store "
                          "stays where it is).")
    base = ctx.cfg.model_dump()
    out = {}
    for entry in ctx.cfg.teachers:
        one = {**base, "teacher": entry.model_dump(exclude={"name"}), "teachers": None, "combine": None,
               "store": {**base["store"], "path": str(root / entry.name)}}
        out[entry.name] = RunContext(type(ctx.cfg).model_validate(one), ctx.data, ctx.splits, ctx.out)
    return out


def label_teachers(ctx: RunContext) -> dict[str, TeacherStore]:
    """Label V, test and the pool with every named teacher, each into its own store."""
    stores, notes = {}, {}
    for name, sub in teacher_contexts(ctx).items():
        try:
            stores[name] = label(sub, get_teacher(sub))
        except MentorError as e:  # name the teacher the problem is with; what it stored is kept
            e.args = (f"teacher {name!r}: {e}",) + e.args[1:]
            raise
        notes[name] = json.loads((ctx.out / "teacher.json").read_text())
    _atomic_write_text(ctx.out / "teacher.json", json.dumps(
        {"kind": "ensemble", "combine": ctx.cfg.combine, "teachers": notes}, indent=2))
    return stores


def _shared_rows(stores: dict[str, TeacherStore], ids: np.ndarray) -> np.ndarray:
    """The ids every teacher answered (a file teacher may leave V or test out)."""
    keep = np.ones(len(ids), bool)
    for store in stores.values():
        keep &= ~np.isin(ids.astype(str), store.missing(ids))
    return ids[keep]


def combined_outputs(ctx: RunContext, stores: dict[str, TeacherStore], combination: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """(ids, combined probabilities, summary) on V, test and the pool. What the combination learns
    on V (reliability curves, log-linear weights) is fitted on V; V's own rows are combined with what
    was fitted on the other half of V (`ensemble.combine_val_crossfit`), so V can still judge the
    combined teacher fairly."""
    from .ensemble import FITTED_ON_V, combine, combine_val_crossfit, fit_combination, reliability_weights
    data, sp = ctx.data, ctx.splits
    names = list(stores)
    val_ids = _shared_rows(stores, data.ids[sp.val].astype(str))
    rest_ids = _shared_rows(stores, np.concatenate([data.ids[sp.test], data.ids[sp.pool]]).astype(str))
    if combination in FITTED_ON_V and len(val_ids) < len(sp.val):
        raise ConfigError(f"combine: {combination} weighs each teacher by how it does on V, but "
                          f"{len(sp.val) - len(val_ids)} of V's {len(sp.val)} examples lack some teacher's output "
                          "(a teacher file that leaves V out). Add V's ids to every teacher file, or set combine: "
                          "average or vote.")
    y_of = dict(zip(data.ids.astype(str), data.labels))
    y_val = np.array([y_of[i] for i in val_ids], dtype=np.int64)
    t_val = [stores[n].read(val_ids) for n in names]
    t_rest = [stores[n].read(rest_ids) for n in names]
    fitted = fit_combination(combination, t_val, y_val, n_classes=ctx.n_classes) if len(val_ids) else None
    probs = np.concatenate([combine_val_crossfit(combination, t_val, y_val, n_classes=ctx.n_classes)
                            if len(val_ids) else np.zeros((0, ctx.n_classes)),
                            combine(combination, t_rest, fitted)]).astype(np.float32)
    pool = np.isin(rest_ids, data.ids[sp.pool].astype(str))
    if combination == "reliability":
        weights = reliability_weights([p[pool] for p in t_rest], fitted)
    elif combination == "log-linear":  # one weight per teacher, the same on every example: one row says it
        weights = fitted.weights[None, :]
    else:
        weights = None
    summary = {"combine": combination, "teachers": {
        n: {"kind": ctx.cfg.teachers[i].kind, "fingerprint": stores[n].fingerprint, "store": str(stores[n].path),
            "spent": stores[n].spent, "calls": stores[n].n_calls,
            "val_accuracy": float((t_val[i].argmax(1) == y_val).mean()) if len(y_val) else None,
            # the share of the combination's weight this teacher carries on the pool (averaged over examples)
            "pool_weight_share": None if weights is None else float(np.mean(
                weights[:, i] / np.where(weights.sum(1) > 0, weights.sum(1), 1.0))),
            **({"log_linear_weight": float(fitted.weights[i])} if combination == "log-linear" else {})}
        for i, n in enumerate(names)}}
    if len(y_val):  # V judges the combination (its own rows cross-fitted) against each teacher alone
        summary["val_accuracy"] = float((probs[:len(val_ids)].argmax(1) == y_val).mean())
    return np.concatenate([val_ids, rest_ids]), probs, summary


def combine_teacher_stores(ctx: RunContext, stores: dict[str, TeacherStore], combination: str,
                           path: Path | None = None) -> TeacherStore:
    """Write the combination of the teachers' stored outputs as a store of its own (default
    <output_dir>/store-combined). It is derived, so a copy made from other teachers, another
    combination or another V is rebuilt; the teachers' own stores are never touched."""
    import shutil
    path = path or ctx.out / COMBINED_STORE
    ids, probs, summary = combined_outputs(ctx, stores, combination)
    fp = "ensemble-" + _key(combination, [(n, s.fingerprint) for n, s in stores.items()],
                            hashlib.sha256("\n".join(ctx.data.ids[ctx.splits.val].astype(str)).encode()).hexdigest())
    if TeacherStore.exists(path):
        with TeacherStore.open(path) as old:
            stale = old.fingerprint != fp
        if stale:
            shutil.rmtree(path)
    store = TeacherStore(path, fingerprint=fp, n_classes=ctx.n_classes, shard_size=ctx.cfg.store.shard_size)
    store.write(ids, probs)
    summary["fingerprint"] = fp
    _atomic_write_text(path / ENSEMBLE_NOTE, json.dumps(summary, indent=2, default=float))
    return store


def label_ensemble(ctx: RunContext) -> TeacherStore:
    """Several teachers: label each into its own store, then store their combination."""
    stores = label_teachers(ctx)
    store = combine_teacher_stores(ctx, stores, ctx.cfg.combine)
    summary = json.loads((store.path / ENSEMBLE_NOTE).read_text())
    best = max(summary["teachers"].items(), key=lambda kv: kv[1]["val_accuracy"] or 0.0)
    if summary.get("val_accuracy") is not None and (best[1]["val_accuracy"] or 0.0) > summary["val_accuracy"]:
        summary["note"] = (f"teacher {best[0]!r} alone is more accurate on V ({100 * best[1]['val_accuracy']:.1f}%) "
                           f"than the {ctx.cfg.combine} combination ({100 * summary['val_accuracy']:.1f}%): the other "
                           "teachers pull it down. Consider that teacher alone, or dropping the weakest.")
        warnings.warn(summary["note"], stacklevel=2)
    _atomic_write_text(ctx.out / ENSEMBLE_NOTE, json.dumps(summary, indent=2, default=float))
    return store


def ensemble_metrics(ctx: RunContext) -> dict | None:
    """metrics.json's record of several teachers: the combination and, per teacher, its kind,
    fingerprint, store, spend, V and test accuracy (None for a one-teacher run)."""
    if ctx.cfg.teachers is None or not (ctx.out / ENSEMBLE_NOTE).is_file():
        return None
    summary = json.loads((ctx.out / ENSEMBLE_NOTE).read_text())
    test_ids, y_test = ctx.data.ids[ctx.splits.test], ctx.data.labels[ctx.splits.test]
    for name, t in summary["teachers"].items():
        with TeacherStore.open(t["store"]) as store:
            probs = teacher_outputs(store, test_ids, required=False)
        t["test_accuracy"] = None if probs is None else float((probs.argmax(1) == y_test).mean())
    return summary


def check_class_order(ctx: RunContext, store: TeacherStore) -> None:
    """Refuse a teacher whose answers on V fit the labels far better after renaming its classes:
    its outputs are numbered in another order (data.classes / teacher.classes fix it)."""
    if not ctx.cfg.teacher.check_class_order or len(ctx.splits.val) == 0:
        return
    if ctx.cfg.teacher.kind not in ("file", "http", "torchscript"):
        # a teacher trained here on A learns the data's own numbering, and an LLM answers with label
        # names matched by name: neither has an order to get wrong, and a weak one's confusions
        # could pass for a permutation
        return
    t_val = teacher_outputs(store, ctx.data.ids[ctx.splits.val], required=False)
    if t_val is None:
        return
    found = suspected_permutation(t_val, ctx.data.labels[ctx.splits.val], ctx.data.class_names)
    if found:
        pairs = ", ".join(f"teacher {a!r} = label {b!r}" for a, b in found["pairs"][:8])
        raise TeacherOutputError(
            f"the teacher looks like it numbers its classes in another order: on V it is right "
            f"{100 * found['accuracy']:.1f}% of the time as is, but {100 * found['relabelled_accuracy']:.1f}% after "
            f"renaming its classes ({pairs}{', ...' if len(found['pairs']) > 8 else ''}). Set data.classes (or "
            f"teacher.classes) to the order of the teacher's outputs. Its answers on V are kept in {store.path}; "
            "the pool was not sent. If the teacher is really this wrong, set teacher.check_class_order: false.")


def answered(store: TeacherStore, ids: np.ndarray) -> np.ndarray:
    """Which ids the teacher answered: False where the store flags an abstention (an LLM answer
    that named no label), True for every row of a teacher that never abstains."""
    if "abstained" not in (getattr(store, "extra_columns", ()) or ()):
        return np.ones(len(ids), bool)
    flags = store.read_extras(ids, columns="abstained").column("abstained").to_pylist()
    return ~np.array([bool(f) for f in flags], bool)


def teacher_outputs(store: TeacherStore, ids: np.ndarray, *, required: bool = True) -> np.ndarray | None:
    ids = np.asarray(ids).astype(str)
    if not required and len(store.missing(ids)):
        return None
    return store.read(ids)


def pool_embeddings(store: TeacherStore, ids: np.ndarray) -> np.ndarray:
    """The teacher's embeddings of `ids` (extras column `embedding`), (n, d) float32; a clear error
    where the store has none or some rows lack one."""
    from .store.extras import vectors
    if "embedding" not in (getattr(store, "extra_columns", ()) or ()):
        raise ConfigError(f"the store at {store.path} holds no teacher embeddings (extra column 'embedding'), and "
                          "method lelp builds its targets from them. Set teacher.embeddings: true and label again "
                          "(a built-in teacher relabels for free; the store of the plain teacher is kept apart), or "
                          "return extras['embedding'] from your teacher.")
    emb = vectors(store.read_extras(np.asarray(ids).astype(str), columns="embedding").column("embedding"))
    missing = np.isnan(emb).any(1)
    if missing.any():
        raise DataError(f"{int(missing.sum())} of {len(emb)} pool rows in the store at {store.path} have no teacher "
                        "embedding (answered before teacher.embeddings was on?); label them again into a fresh "
                        "store.path, or pick a method other than lelp.")
    return emb


# ---------------------------------------------------------------------------------------------- students

def _student_kind(ctx: RunContext) -> str:
    k = ctx.cfg.student.kind
    return k or ("tfidf" if ctx.data.kind == "text" else "mlp")


def check_student(cfg: RunConfig, data: Dataset) -> None:
    """Refuse a student that cannot read this data, or whose encoder folder is missing, before
    anything is labeled or paid for."""
    st = cfg.student
    if st.kind in ("embedding", "tfidf", "transformer") and data.kind != "text":
        raise ConfigError(f"student.kind {st.kind!r} reads text, but {data.name!r} is {data.kind} data; use "
                          f"student.kind {'cnn or ' if data.kind == 'image' else ''}mlp or logistic here, or a text data "
                          "set (data.text_column).")
    if st.kind == "efficientnet-lite0":  # an image CNN: image data, and the ImageNet weights' package installed
        from .students.efficientnet import check_image_data, weights_path
        check_image_data(data.kind, data.image_shape, data.name)
        weights_path()
    if st.kind == "embedding" and st.encoder:
        from .students.embedding import check_encoder_folder
        check_encoder_folder(st.encoder)
    elif st.kind == "embedding":
        from .students.embedding import minilm_path
        minilm_path()  # the default encoder's package is installed


def _transformer_paths(ctx: RunContext) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) of a transformer student, after checking the data is text."""
    from .students.hf import check_encoder_folder, default_encoder_path
    st = ctx.cfg.student
    if ctx.data.kind != "text":
        raise ConfigError(f"student.kind transformer reads text, but {ctx.data.name!r} is {ctx.data.kind} data; use "
                          "student.kind mlp, logistic or cnn (images) for it.")
    encoder = Path(st.encoder) if st.encoder else default_encoder_path()
    return check_encoder_folder(encoder), Path(st.tokenizer) if st.tokenizer else encoder


def _featurizer(ctx: RunContext):
    kind = _student_kind(ctx)
    st = ctx.cfg.student
    if kind == "embedding":  # frozen encoder: nothing to fit; vectors come from the cache or are computed once
        from .students.embedding import EmbeddingFeaturizer
        from .students.train import resolve_device
        return EmbeddingFeaturizer(st.encoder, cache_dir=st.embedding_cache, batch_size=st.encoder_batch_size or 64,
                                   device=str(resolve_device(ctx.cfg.train.device))).fit()
    tokenizer = str(_transformer_paths(ctx)[1]) if kind == "transformer" else None
    feat = Featurizer(default_featurizer(kind, ctx.data.kind), max_features=st.max_features, tokenizer=tokenizer,
                      max_length=st.max_length)
    fit_on = np.concatenate([ctx.splits.labeled, ctx.splits.pool])  # inputs only, never labels
    return feat.fit(ctx.data.features[fit_on])


def _new_student(ctx: RunContext, in_features: int) -> torch.nn.Module:
    st = ctx.cfg.student
    torch.manual_seed(ctx.cfg.seed)
    kind = _student_kind(ctx)
    if kind == "transformer":  # a pretrained encoder; in_features is max_length, not needed
        from .students.hf import build_transformer_student
        encoder, tokenizer = _transformer_paths(ctx)
        return build_transformer_student(encoder, ctx.n_classes, tokenizer_path=tokenizer, max_length=st.max_length,
                                         freeze=st.freeze_layers, dropout=st.dropout,
                                         head_lr_scale=(st.head_lr or ctx.cfg.train.lr) / ctx.cfg.train.lr)
    if kind == "embedding":  # the trained part of the embedding student is its head
        kind = st.head or "logistic"
    if kind == "efficientnet-lite0":  # ImageNet backbone (strict load) + a new head
        from .students.efficientnet import DEFAULT_IMAGE_SIZE, build_efficientnet_student, check_image_data
        check_image_data(ctx.data.kind, ctx.data.image_shape, ctx.data.name)
        return build_efficientnet_student(ctx.n_classes, ctx.data.image_shape, dropout=st.dropout,
                                          image_size=st.image_size or DEFAULT_IMAGE_SIZE, augment=bool(st.augment))
    return build_model(kind, in_features=in_features, n_classes=ctx.n_classes,
                       image_shape=ctx.data.image_shape, hidden=tuple(st.hidden), dropout=st.dropout)


_EMBEDDING_KEYS = ("head", "encoder", "embedding_cache", "encoder_batch_size")


def _student_key(cfg: RunConfig, feat=None) -> dict:
    """The student section as it enters checkpoint keys: the embedding options only when set, so
    checkpoints of runs from before they existed keep their keys; an embedding student adds its
    encoder's fingerprint. The cache folder never enters it (where vectors are kept changes none)."""
    st = cfg.student
    key = st.model_dump(exclude={k for k in _EMBEDDING_KEYS if getattr(st, k) is None or k == "embedding_cache"})
    if getattr(feat, "kind", None) == "embedding":
        key["encoder_fingerprint"] = feat.fingerprint_
    return key


def _train_config(ctx: RunContext, checkpoint: Path | None) -> TrainConfig:
    t = ctx.cfg.train
    return TrainConfig(epochs=t.epochs, min_steps=t.min_steps, batch_size=t.batch_size, lr=t.lr,
                       weight_decay=t.weight_decay, distill_weight=t.distill_weight, device=t.device, amp=t.amp,
                       amp_on_cpu=t.amp_on_cpu, seed=ctx.cfg.seed,
                       checkpoint_path=str(checkpoint) if checkpoint else None, progress=t.progress,
                       grad_accum=t.grad_accum, schedule=t.schedule, warmup_fraction=t.warmup_fraction,
                       select_on=t.select_on, patience=t.patience)


def epochs_info(n_examples: int, cfg: TrainConfig) -> dict:
    """The epochs training will run, and a note when train.min_steps raised train.epochs."""
    n = epochs_for(n_examples, cfg)
    info = {"epochs": n}
    if n > cfg.epochs:
        info["epochs_note"] = (f"trained {n} epochs, not train.epochs={cfg.epochs}: {n_examples} examples in batches "
                               f"of {cfg.batch_size} reach train.min_steps={cfg.min_steps} steps only then "
                               "(set train.min_steps: 0 for exactly train.epochs).")
    return info


def train(ctx: RunContext, store: TeacherStore | None = None, *, method: str | None = None,
          labeled_only: bool = False, name: str | None = None, student: torch.nn.Module | None = None) -> dict:
    """Train one student (or the labeled-only baseline) and save it as `<name>.pt` in the run folder."""
    method = method or ctx.cfg.method
    name = name or ("labeled-only" if labeled_only else "student")
    data, sp = ctx.data, ctx.splits
    feat = distributed.main_first(lambda: _featurizer(ctx), "the student's featurizer")  # rank 0 fills caches
    x_lab = feat.transform(data.features[sp.labeled])
    y_lab = data.labels[sp.labeled]
    model = student if student is not None else _new_student(ctx, x_lab.shape[1])
    # the checkpoint name carries everything that defines this training run, so a changed method,
    # teacher or student never resumes from another run's checkpoint
    ckpt = ctx.out / "checkpoints" / (f"{name}-" + _key(labeled_only or method, ctx.cfg.method_options,
                                                       without_added_defaults(_student_key(ctx.cfg, feat), "student"),
                                                       without_added_defaults(ctx.cfg.train.model_dump(), "train"), ctx.cfg.split.model_dump(), ctx.cfg.seed, _data_key(ctx.cfg),
                                                       None if labeled_only else (store or open_store(ctx)).fingerprint)
                                      + ".pt")
    info: dict = {"method": "labeled-only" if labeled_only else method,
                  **epochs_info(len(sp.labeled) + (0 if labeled_only else len(sp.pool)), _train_config(ctx, None))}
    # V chooses the epoch kept (train.select_on); it is scored, never trained on
    val = ({"x_val": feat.transform(data.features[sp.val]), "y_val": data.labels[sp.val]}
           if ctx.cfg.train.select_on != "last" else {})
    if labeled_only:
        result = train_student(model, x_lab, y_lab, config=_train_config(ctx, ckpt), **val)
    elif ctx.cfg.train.data_path == "stream":
        store = store or open_store(ctx)
        result = _train_stream(ctx, store, feat, model, x_lab, y_lab, method, ckpt, info, val)
    else:
        store = store or open_store(ctx)
        x_pool = feat.transform(data.features[sp.pool])
        t_pool = teacher_outputs(store, data.ids[sp.pool])
        keep = answered(store, data.ids[sp.pool])
        if not keep.all():  # an LLM that named no label said nothing: its uniform row is not a target
            if not keep.any():
                raise DataError("the teacher abstained on every pool example (its answers named no label), so there "
                                "is nothing to distil; check its raw answers (store.read_extras) and the prompt.")
            x_pool, t_pool = take_rows(x_pool, keep), t_pool[keep]
            info["pool_abstentions_left_out"] = int((~keep).sum())
        t_val = teacher_outputs(store, data.ids[sp.val], required=False)
        cfg_t = ctx.cfg.train

        # inputs only (the featurizer stays fit on A ∪ U); featurized once, also for select_on
        x_val = val["x_val"] if val else feat.transform(data.features[sp.val])

        def train_and_predict(plan):  # for two-pass methods: a first student's outputs on U and V
            m = _new_student(ctx, x_lab.shape[1])
            train_with_plan(m, x_lab, y_lab, x_pool, t_pool, plan, _train_config(ctx, None), **val)
            return predict_proba(m, x_pool), predict_proba(m, x_val)

        mctx = MethodContext(n_classes=ctx.n_classes, teacher_probs_pool=t_pool, teacher_probs_val=t_val,
                             val_labels=data.labels[sp.val], temperature=cfg_t.temperature, seed=ctx.cfg.seed,
                             train_and_predict=train_and_predict, options=dict(ctx.cfg.method_options),
                             n_epochs=epochs_for(n_rows(x_lab) + n_rows(x_pool), _train_config(ctx, None)),
                             pool_features=x_pool, selects_epoch_on_val=bool(val),
                             pool_embeddings=lambda: pool_embeddings(store, data.ids[sp.pool][keep]))
        plan = plan_method(method, mctx)
        distributed.check_same(_key(plan.info), "the method's plan (auto's choice)")  # same weights, same V
        if plan.student_wrapper is not None:  # e.g. DHO's second head
            model = plan.student_wrapper(model)
        info.update(plan.info)
        if plan.distill_weight == 0:  # e.g. auto chose labeled-only: only A is trained on
            info.pop("epochs_note", None)
            info.update(epochs_info(len(sp.labeled), _train_config(ctx, None)))
        chosen = plan.info.get("auto", {}).get("chosen")
        if chosen:  # auto's final student resumes only a checkpoint of the same chosen candidate
            ckpt = ckpt.with_name(f"{ckpt.stem}-{_key(chosen)}.pt")
        result = train_with_plan(model, x_lab, y_lab, x_pool, t_pool, plan, _train_config(ctx, ckpt), **val)
        if hasattr(model, "fit_blend"):  # DHO: the heads' blend weight is chosen on V, after training
            info.update(model.fit_blend(x_val, data.labels[sp.val], device=cfg_t.device))
        info["teacher_fingerprint"] = store.fingerprint
    info.update(seconds=result.seconds, final_loss=result.history[-1]["loss"] if result.history else None)
    if val:
        info.update(select_on=ctx.cfg.train.select_on, best_epoch=result.best_epoch,
                    epochs_trained=len(result.history), stopped_early=result.stopped_early)
    if distributed.active():  # trained data-parallel: what launched it (the weights equal one process's)
        info["data_parallel"] = distributed.describe()
    if getattr(feat, "kind", None) == "embedding":
        info.update(student_head=ctx.cfg.student.head or "logistic", embedding_cache=dict(feat.stats))

    def save():
        _atomic_write_text(ctx.out / f"history-{name}.json", json.dumps(result.history))  # per-epoch loss (tracking)
        _save_student(ctx.out / f"{name}.pt", model, feat, _student_kind(ctx), info)
    distributed.on_main(save, f"saving {name}.pt")
    return info


STUDENT_FORMAT = "mentor-student-2"  # tensors + plain data, loaded with weights_only=True (1 held pickled objects)


def _train_stream(ctx: RunContext, store: TeacherStore, feat, model, x_lab, y_lab, method: str, ckpt: Path,
                  info: dict, val: dict):
    """train.data_path: stream. The pool is featurized and written to Parquet a chunk at a time
    (once per featurizer and split; dense rows, token ids or sparse TF-IDF rows as the student
    takes them), joined with the store by id, and read a buffer at a time."""
    from .students.stream import (StreamingPool, join_pool, stream_auto_plan, stream_plan, train_student_stream,
                                  write_pool_chunks)
    data, sp, cfg = ctx.data, ctx.splits, _train_config(ctx, ckpt)
    pool = sp.pool[answered(store, data.ids[sp.pool])]
    if not len(pool):
        raise DataError("the teacher abstained on every pool example (its answers named no label), so there "
                        "is nothing to distil; check its raw answers (store.read_extras) and the prompt.")
    if len(pool) < len(sp.pool):
        info["pool_abstentions_left_out"] = int(len(sp.pool) - len(pool))
    folder = ctx.out / "stream" / _key(_student_key(ctx.cfg, feat), ctx.cfg.split.model_dump(), ctx.cfg.seed,
                                       _data_key(ctx.cfg), hashlib.sha256(pool.tobytes()).hexdigest())
    pool_file = folder / "pool.parquet"
    if not pool_file.exists():
        step = 16384
        write_pool_chunks(pool_file, ((data.ids[pool[s:s + step]], feat.transform(data.features[pool[s:s + step]]))
                                      for s in range(0, len(pool), step)))
    joined = join_pool(pool_file, store, folder / "joined", other_ids=data.ids)
    plan_options = dict(n_classes=ctx.n_classes, joined_dir=joined,
                        teacher_probs_val=teacher_outputs(store, data.ids[sp.val], required=False),
                        val_labels=data.labels[sp.val], temperature=ctx.cfg.train.temperature,
                        options=dict(ctx.cfg.method_options), n_epochs=epochs_for(len(y_lab) + len(pool), cfg))

    def train_from_disk(m, plan, config, rows=None):  # rows: the V rows that may choose the epoch
        v = val if rows is None or not val else {"x_val": take_rows(val["x_val"], rows), "y_val": val["y_val"][rows]}
        if plan is None or plan.distill_weight == 0:  # labeled-only: A alone, as in memory
            return train_student(m, x_lab, y_lab, config=replace(config, distill_weight=0.0), **v)
        pool_rows = StreamingPool(joined, x_lab, y_lab, batch_size=config.batch_size, seed=config.seed)
        return train_student_stream(m, pool_rows, plan=plan, config=config, **v)

    if method == "auto":  # every candidate trained from disk, scored on V (in memory: V is small)
        x_val = val["x_val"] if val else feat.transform(data.features[sp.val])

        def val_probs_of(plan, keep=None):
            m = _new_student(ctx, x_lab.shape[1])
            train_from_disk(m, plan, _train_config(ctx, None), keep)
            return predict_proba(m, x_val)
        plan = stream_auto_plan(val_probs_of, seed=ctx.cfg.seed, selects_epoch_on_val=bool(val), **plan_options)
        ckpt = ckpt.with_name(f"{ckpt.stem}-{_key(plan.info['auto']['chosen'])}.pt")  # resumes only the same choice
        if plan.distill_weight == 0:
            info.pop("epochs_note", None)
            info.update(epochs_info(len(y_lab), cfg))
        cfg = replace(cfg, checkpoint_path=str(ckpt))
    else:
        plan = stream_plan(method, **plan_options)
    info.update(plan.info)
    info["teacher_fingerprint"] = store.fingerprint
    return train_from_disk(model, plan, cfg)


def _save_student(path: Path, model: torch.nn.Module, feat: Featurizer, kind: str, info: dict) -> None:
    """Weights, the featurizer's learned state and the run info as tensors and plain data only."""
    fstate = {k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v for k, v in feat.state_dict().items()}
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": STUDENT_FORMAT, "model": model.state_dict(), "featurizer": fstate, "student_kind": kind,
                "info": json.dumps(info, default=_plain)}, tmp)
    os.replace(tmp, path)


def _plain(x):
    return x.tolist() if hasattr(x, "tolist") else str(x)


def load_student(ctx: RunContext, name: str = "student"):
    path = ctx.out / f"{name}.pt"
    if not path.exists():
        raise DataError(f"no trained student at {path}; run `mentor train` (or `mentor run`) first.")
    fix = f"retrain it: delete {path} and run `mentor train` (or `mentor run`)"
    state = load_plain(path, what="student", fix=fix)
    if state.get("format") != STUDENT_FORMAT:
        raise DataError(f"student {path} is not a {STUDENT_FORMAT} file (format {state.get('format')!r}); {fix}.")
    feat = Featurizer.from_state_dict(state["featurizer"], **_embedding_options(ctx, state["featurizer"]))
    model = _new_student(ctx, feat.n_features or feat.transform(ctx.data.features[ctx.splits.labeled[:1]]).shape[1])
    if is_dual_head_state(state["model"]):  # a DHO student: its second head and blend weight
        model = DualHead(model)
    subclasses = subclasses_in_state(state["model"])
    if subclasses is not None:  # a LELP student: an output per subclass
        model = SubclassHead(model, ctx.n_classes, subclasses)
    model.load_state_dict(state["model"])
    return model, feat, json.loads(state["info"])


def _embedding_options(ctx: RunContext, fstate: dict) -> dict:
    """Where an embedding student's featurizer finds its cache and device (not part of its state)."""
    if fstate.get("kind") != "embedding":
        return {}
    from .students.train import resolve_device
    st = ctx.cfg.student
    return {"cache_dir": st.embedding_cache, "device": str(resolve_device(ctx.cfg.train.device)),
            "encoder": st.encoder}


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
    s_val_right = student_probs(ctx, "student", sp.val).argmax(1) == y_val
    student["val_accuracy"] = float(s_val_right.mean())
    if t_val is not None:
        metrics["teacher_val_accuracy"] = float((t_val.argmax(1) == y_val).mean())
    ensemble = ensemble_metrics(ctx)
    if ensemble is not None:
        metrics["teachers"] = ensemble
    if (ctx.out / "labeled-only.pt").exists():
        lab_probs = student_test_probs(ctx, "labeled-only")
        metrics["labeled_only"] = classification_report(lab_probs, y_test, t_test)
        lab_val_right = student_probs(ctx, "labeled-only", sp.val).argmax(1) == y_val
        metrics["labeled_only"]["val_accuracy"] = float(lab_val_right.mean())
        # the noise of "distilled − labeled-only" on V, paired: what the printed advice weighs
        metrics["labeled_only"]["val_diff_se"] = paired_se(s_val_right, lab_val_right)
        if t_test is not None:
            metrics["gap_closed"], metrics["gap_closed_note"] = gap_closed_verdict(
                s_probs.argmax(1) == y_test, lab_probs.argmax(1) == y_test, t_test.argmax(1) == y_test)
    metrics.update(
        sizes={"n_labeled": len(sp.labeled), "n_val": len(sp.val), "n_pool": len(sp.pool), "n_test": len(sp.test)},
        data={"name": data.name, "kind": data.kind, "n_classes": data.n_classes},
        teacher_fingerprint=store.fingerprint, store={"path": str(store.path), "rows": len(store),
                                                      "spent": store.spent, "calls": store.n_calls},
        config=config_record(ctx.cfg),
        machine=machine_record())
    _atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2, default=float))
    return metrics


# ---------------------------------------------------------------------------------------------- the shippable folder

def open_run(run_dir) -> RunContext:
    """A finished run folder as a RunContext, read only: its config.yaml, its data, and the split
    made again from them (it is a function of the data, the split sizes and the seed)."""
    import yaml
    from .config import parse_config
    out = Path(run_dir)
    if not (out / "config.yaml").is_file():
        raise DataError(f"{out} is not a mentor run folder (no config.yaml); give the output_dir of a "
                        "`mentor run` or `mentor train`.")
    try:
        record = yaml.safe_load((out / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        raise DataError(f"{out / 'config.yaml'} is not valid YAML ({e}); rerun `mentor run` into that folder.") from None
    cfg = parse_config(record, str(out / "config.yaml"))
    cfg.output_dir = str(out)
    data = load_data(cfg).validate()
    s = cfg.split
    splits = make_splits(data, n_labeled=s.n_labeled, n_val=s.n_val, n_test=s.n_test, n_pool=s.n_pool, seed=cfg.seed)
    return RunContext(cfg, data, splits, out)


def model_inputs(ctx: RunContext) -> dict:
    """How the student reads new files: the data kind, the id/label/text columns and the feature
    columns (for a user's file) or their count, as `mentor predict` checks them."""
    from .data import input_columns
    d = ctx.cfg.data
    spec = {"kind": ctx.data.kind, "id_column": d.id_column, "label_column": d.label_column,
            "text_column": d.text_column, "columns": None,
            "n_features": None if ctx.data.kind == "text" else int(ctx.data.features.shape[1]),
            "image_shape": list(ctx.data.image_shape) if ctx.data.image_shape else None}
    if d.path and ctx.data.kind != "text":
        spec["columns"] = input_columns(d.path, id_column=d.id_column, label_column=d.label_column,
                                        text_column=d.text_column, feature_columns=d.feature_columns)[1]
    return spec


def _seed_row(metrics: dict) -> dict:
    s = metrics.get("student", {})
    return {"seed": metrics.get("seed"), "accuracy": s.get("accuracy"), "nll": s.get("nll"), "ece": s.get("ece")}


def seed_runs_metrics(ctx: RunContext, run_dirs) -> list[dict]:
    """Test metrics of other runs of the same config with other seeds (for the card's spread)."""
    import yaml
    mine = yaml.safe_load(dump_config(ctx.cfg))
    rows = []
    for d in run_dirs:
        d = Path(d)
        if not (d / "metrics.json").is_file() or not (d / "config.yaml").is_file():
            raise DataError(f"--seed-run {d}: no metrics.json and config.yaml there; give the output_dir of a "
                            "finished `mentor run` of the same config with another seed.")
        other = yaml.safe_load((d / "config.yaml").read_text()) or {}
        diffs = [x for x in config_differences(mine, other) if not x.startswith(("seed:", "output_dir:"))]
        if diffs:
            raise DataError(f"--seed-run {d} is not the same config with another seed: {'; '.join(diffs[:6])}. "
                            "Give only runs that differ in seed (and output_dir).")
        rows.append(_seed_row(json.loads((d / "metrics.json").read_text())))
    return rows


def write_model_folder(ctx: RunContext, metrics: dict | None = None, *, path=None, onnx: str | None = None,
                       seed_runs=(), name: str = "student") -> dict:
    """The trained student (`<name>.pt`) as a folder to ship (mentor.students.export): <output_dir>/model or
    `path`. Test metrics come from `metrics` or the run's metrics.json when it scored this student."""
    from .students.export import built_in_args, save_student_folder, unwrap, wrapped_args
    model, feat, info = load_student(ctx, name)
    base = unwrap(model)  # a DHO or LELP student is written as its base kind plus the wrapper's tensors
    if metrics is None and (ctx.out / "metrics.json").is_file():
        metrics = json.loads((ctx.out / "metrics.json").read_text())
    if metrics is not None and json.loads(json.dumps(metrics.get("train_info"), default=_plain)) != \
            json.loads(json.dumps(info, default=_plain)):
        metrics = None  # metrics.json scored an earlier student: the card says "not evaluated yet"
    data, sp = ctx.data, ctx.splits
    rows = next((r for r in (sp.val, sp.test, sp.labeled) if len(r)), sp.labeled)[:1000]
    x = feat.transform(data.features[rows])
    st = ctx.cfg.student
    student_kind = _student_kind(ctx)
    if student_kind == "transformer":  # written in Hugging Face format with its tokenizer (students.export)
        kind, args = "transformer", {"tokenizer": feat.tokenizer}
    elif student_kind == "efficientnet-lite0":  # rebuilt from its args (students.efficientnet)
        kind, args = student_kind, base.args()
    else:  # an embedding student ships its head; the featurizer names the frozen encoder
        n_out = ctx.n_classes * int(getattr(model, "subclasses", 1))  # LELP's base: an output per subclass
        kind, args = built_in_args((st.head or "logistic") if student_kind == "embedding" else student_kind, base, {
            "in_features": int(x.shape[1]), "n_classes": n_out,
            "image_shape": list(data.image_shape) if data.image_shape else None,
            "hidden": list(st.hidden), "dropout": st.dropout})
    kind, args = wrapped_args(model, kind, args)
    record = config_record(ctx.cfg)
    t = record.get("teacher") or {"kind": "ensemble"}  # several teachers: named in the card's config
    teacher = {"kind": t["kind"], "fingerprint": info.get("teacher_fingerprint"),
               "source": t.get("path") or t.get("url") or ((t.get("llm") or {}).get("endpoint") or {}).get("model")
               or ((t.get("llm") or {}).get("local") or {}).get("path")}
    metric_part = None
    if metrics is not None:
        teacher["test_accuracy"] = (metrics.get("teacher") or {}).get("accuracy")
        metric_part = {"test": metrics.get("student"), "teacher": metrics.get("teacher"),
                       "labeled_only": metrics.get("labeled_only"), "gap_closed": metrics.get("gap_closed"),
                       "seeds": [_seed_row(metrics)] + seed_runs_metrics(ctx, seed_runs) if seed_runs else []}
    meta = {"student": {"kind": kind, "args": args}, "n_classes": ctx.n_classes,
            "class_names": [str(c) for c in data.class_names] if data.class_names else None,
            "data": {"name": data.name, "kind": data.kind, "inputs": model_inputs(ctx)},
            "teacher": teacher, "method": info.get("method"), "seed": ctx.cfg.seed, "train_info": info,
            "sizes": {"n_labeled": len(sp.labeled), "n_val": len(sp.val), "n_pool": len(sp.pool),
                      "n_test": len(sp.test)},
            "metrics": metric_part, "config": record,
            "machine": machine_record()}
    return save_student_folder(model, feat, meta, Path(path) if path else ctx.out / "model", check_x=x,
                               onnx=onnx or ctx.cfg.export.onnx)


def _note_model_folder(ctx: RunContext, metrics: dict) -> None:
    """Write the folder when the config asks for it; metrics.json says where and whether ONNX exported."""
    if not ctx.cfg.export.model_folder:
        return
    rec = write_model_folder(ctx, metrics)
    metrics["model_folder"] = {"path": str(ctx.out / "model"), "onnx": rec["onnx"],
                               "latency_ms_per_example": rec.get("latency_ms_per_example"), "size_mb": rec["size_mb"],
                               "params": rec["params"]}


def run(cfg: RunConfig, *, force: bool = False) -> dict:
    """The whole pipeline from one validated config. Returns the metrics written to metrics.json.
    `force`: replace the results of another config's run in the same output_dir."""
    t0 = time.perf_counter()
    from .tracking import check_tracker
    start_distributed(cfg)  # under torchrun: students train data-parallel; rank 0 alone labels and writes
    # a tracking server that is down is found before anything is paid
    distributed.on_main(lambda: check_tracker(cfg.tracking), "checking the tracking server")
    ctx = prepare(cfg, force=force)
    # one teacher, or several combined (label_ensemble); the other ranks read the store rank 0 wrote
    store = distributed.on_main(lambda: label(ctx), "labeling")
    if store is None:
        store = open_store(ctx)
    if cfg.baseline:
        train(ctx, labeled_only=True)
    train(ctx, store)

    def finish():
        metrics = evaluate(ctx, store)
        _note_model_folder(ctx, metrics)
        metrics["seconds"] = time.perf_counter() - t0
        _atomic_write_text(ctx.out / "metrics.json", json.dumps(metrics, indent=2, default=float))
        from .report import report_after_run
        from .tracking import track_after_run
        report_after_run(ctx, store)
        track_after_run(ctx)
        return metrics
    return distributed.broadcast(distributed.on_main(finish, "evaluation and reports"))
