"""The cache of a fitted built-in teacher: tensors + JSON (safetensors) or a skops file, never pickle."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..students.models import Featurizer, build_model
from .base import Teacher
from .local import SklearnTeacher, TorchTeacher
from .encoder import EncoderTeacher


# ----------------------------------------------------------------------------------------------
# The cache of a fitted built-in teacher: tensors + JSON (safetensors) or a skops file, never pickle,
# so a run folder received from someone else cannot run code when mentor reuses its teacher.

TEACHER_FORMAT = "mentor-teacher-1"
# scikit-learn types a teacher cache may hold beyond those skops trusts by default; nothing else loads
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class TeacherCacheError(DataError):
    """A cached teacher could not be loaded safely (old pickle format, unknown types, damaged)."""


def teacher_cache_suffix(kind: str) -> str:
    """scikit-learn teachers (hgb, the MiniLM head) go to skops files; torch teachers to safetensors."""
    return ".skops" if kind in ("hgb", "minilm") else ".safetensors"


def save_teacher(teacher: Teacher, path) -> None:
    """Save a fitted built-in teacher atomically so a resumed run reuses it instead of retraining.
    The format follows the suffix of `path` (see `teacher_cache_suffix`)."""
    path = Path(path)
    meta = {"format": TEACHER_FORMAT, "kind": teacher.kind, "n_classes": teacher.n_classes,
            "cost_per_example": teacher.cost_per_example, "fingerprint": teacher.fingerprint}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors" and isinstance(teacher, TorchTeacher) and getattr(teacher, "build", None):
        from safetensors.torch import save_file
        fmeta, arrays = _split_state(teacher.featurizer)
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in teacher.module.state_dict().items()}
        tensors.update({f"featurizer.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        meta.update(output=teacher.output, build=teacher.build, featurizer=fmeta)
        save_file(tensors, str(tmp), metadata={"mentor": json.dumps(meta)})
    elif path.suffix == ".skops" and isinstance(teacher, (SklearnTeacher, EncoderTeacher)):
        import skops.io as sio
        sk = teacher.head if isinstance(teacher, EncoderTeacher) else teacher
        feat = sk.featurizer.state_dict() if sk.featurizer is not None else None
        with open(tmp, "wb") as fh:
            fh.write(sio.dumps({"meta": json.dumps(meta), "estimator": sk.estimator, "featurizer": feat}))
    else:
        raise ConfigError(f"cannot save a {type(teacher).__name__} ({teacher.kind}) as {path.name}: mentor saves "
                          "the built-in teachers of train_model_teacher, torch ones as .safetensors and scikit-learn "
                          "ones as .skops. Save your own model's weights yourself.")
    os.replace(tmp, path)


def load_teacher(path, *, device: str = "auto") -> Teacher:
    """Load a teacher written by `save_teacher`. Only tensors, JSON and the scikit-learn types skops
    trusts (plus `SKOPS_TRUSTED`) are read; anything else raises TeacherCacheError, never runs."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".skops"):
        raise TeacherCacheError(f"teacher cache {path} is not a .safetensors or .skops file; mentor does not load "
                                "pickled teachers (unpickling can run code).")
    try:
        teacher = _load_torch_teacher(path, device) if path.suffix == ".safetensors" else _load_sklearn_teacher(path)
    except TeacherCacheError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage in a cache file means: do not use it
        raise TeacherCacheError(f"teacher cache {path} could not be read ({type(e).__name__}: {e}).") from None
    return teacher


def _split_state(featurizer: Featurizer | None) -> tuple[dict | None, dict]:
    """A featurizer's state as (JSON-ready part, float arrays)."""
    if featurizer is None:
        return None, {}
    state = featurizer.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    return {k: v for k, v in state.items() if k not in arrays}, arrays


def _meta(path: Path, raw: str | None) -> dict:
    meta = json.loads(raw) if raw else {}
    if not isinstance(meta, dict) or meta.get("format") != TEACHER_FORMAT:
        raise TeacherCacheError(f"teacher cache {path} is not a {TEACHER_FORMAT} file.")
    return meta


def _load_torch_teacher(path: Path, device: str) -> TorchTeacher:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = _meta(path, (f.metadata() or {}).get("mentor"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    b = meta["build"]
    module = build_model(b["kind"], in_features=int(b["in_features"]), n_classes=int(b["n_classes"]),
                         image_shape=tuple(b["image_shape"]) if b.get("image_shape") else None,
                         hidden=tuple(b["hidden"]), dropout=float(b["dropout"]))
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    feat = None
    if meta.get("featurizer") is not None:
        arrays = {k[len("featurizer."):]: v for k, v in tensors.items() if k.startswith("featurizer.")}
        feat = Featurizer.from_state_dict({**meta["featurizer"], **arrays})
    teacher = TorchTeacher(module, int(meta["n_classes"]), output=meta["output"], featurizer=feat, device=device,
                           cost_per_example=float(meta["cost_per_example"]))
    teacher.kind, teacher.build = meta["kind"], b
    if teacher.fingerprint != meta["fingerprint"]:  # weights or featurizer changed since it was written
        raise TeacherCacheError(f"teacher cache {path}: its weights do not match the fingerprint it records.")
    return teacher


def _load_sklearn_teacher(path: Path) -> Teacher:
    import skops.io as sio
    unknown = sorted(set(sio.get_untrusted_types(file=str(path))) - set(SKOPS_TRUSTED))
    if unknown:
        raise TeacherCacheError(f"teacher cache {path} holds types mentor does not load: {unknown[:5]}.")
    obj = sio.load(str(path), trusted=SKOPS_TRUSTED)
    meta = _meta(path, obj.get("meta") if isinstance(obj, dict) else None)
    n, cost = int(meta["n_classes"]), float(meta["cost_per_example"])
    feat = Featurizer.from_state_dict(obj["featurizer"]) if obj.get("featurizer") is not None else None
    if meta["kind"] == EncoderTeacher.kind:
        teacher = EncoderTeacher(obj["estimator"], n, cost_per_example=cost)
        if teacher.fingerprint != meta["fingerprint"]:  # e.g. another MiniLM installed here
            raise TeacherCacheError(f"teacher cache {path} was fitted with another encoder or head.")
        return teacher
    teacher = SklearnTeacher(obj["estimator"], n, featurizer=feat, cost_per_example=cost,
                             fingerprint=meta["fingerprint"])  # recorded: a pickle hash of what was fitted
    teacher.kind = meta["kind"]
    return teacher
