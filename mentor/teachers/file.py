"""A teacher read from a file of precomputed outputs keyed by id (labels made elsewhere)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..checks import class_permutation, logits_to_probabilities, topk_to_dense, validate_probabilities
from ..errors import ConfigError, DataError, TeacherOutputError
from .base import Teacher, _sha


class FileTeacher(Teacher):
    """Precomputed teacher outputs keyed by id: the path for LLM or API labels.

    Formats (`output`): 'probs' or 'logits' — a list column of that name (or, in CSV, one numeric
    column per class in order); 'topk' — list columns `topk_index` and `topk_prob` (or
    `topk_logprob`), completed to a full distribution by spreading the remaining mass evenly.
    The whole file is validated when opened, so a bad row fails before any training.

    Class order: the columns are matched to `data_classes` (the data set's class names) by name
    when the file names them — `classes` (the teacher's names in column order, e.g. from
    teacher.classes), else a `classes` JSON list in the Parquet metadata, else one numeric column
    per class named like the classes — and taken in position otherwise (`named_classes` says which).
    """

    kind = "file"

    def __init__(self, path, n_classes: int, *, output: str = "probs", id_column: str = "id",
                 cost_per_example: float = 0.0, classes=None, data_classes=None):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"teacher file {self.path} does not exist; check teacher.path in the config.")
        if output not in ("probs", "logits", "topk"):
            raise ConfigError(f"teacher file output must be 'probs', 'logits' or 'topk', got {output!r}")
        self.n_classes, self.output, self.cost_per_example = int(n_classes), output, float(cost_per_example)
        self.fingerprint = "file-" + _sha(self.path.read_bytes(), output.encode())
        from ..data import _read_table
        table = _read_table(self.path, id_column)
        order = _file_class_names(table, classes)
        if id_column not in table.column_names:
            raise DataError(f"teacher file {self.path} has no {id_column!r} column (columns: {table.column_names}); "
                            "set teacher.id_column to the column holding the example ids.")
        ids = np.asarray(table.column(id_column).to_pylist(), dtype=object).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            raise TeacherOutputError(f"teacher file {self.path}: {len(dup)} duplicated id(s), e.g. {dup[:5].tolist()}; "
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
                if order is None and data_classes is not None and sorted(numeric) == sorted(map(str, data_classes)):
                    order = numeric  # one column per class, named like the classes: matched by name
                mat = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric])
            mat = mat.astype(np.float64)
            probs = (logits_to_probabilities(mat, self.n_classes, name=name) if output == "logits"
                     else validate_probabilities(mat, self.n_classes, name=name))
        self.classes, self.named_classes = order, order is not None
        if order is not None:
            if data_classes is None:
                raise TeacherOutputError(f"{name} names its classes {order[:20]} but the data's classes have no "
                                         "names (integer labels): set data.classes so they can be matched.")
            perm = class_permutation(order, data_classes, name=name)
            if perm is not None:  # reordered outputs are other outputs: the store must not mix them
                probs = probs[:, perm]
                self.fingerprint += "-" + _sha(json.dumps(order).encode())[:8]
        self._ids, self._probs = ids, probs
        self._row = {i: r for r, i in enumerate(ids)}

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes}

    def check_ids(self, pool_ids, all_ids=None) -> None:
        """Every pool id must have an output; every id of the file must exist in the data."""
        pool_ids = np.asarray(pool_ids).astype(str)
        missing = pool_ids[~np.isin(pool_ids, self._ids)]
        if len(missing):
            raise TeacherOutputError(
                f"teacher file {self.path}: {len(missing)} pool id(s) have no teacher output, e.g. {missing[:5].tolist()}. "
                "Label them, or restrict the pool to the ids in the file.")
        if all_ids is not None:
            extra = self._ids[~np.isin(self._ids, np.asarray(all_ids).astype(str))]
            if len(extra):
                raise TeacherOutputError(
                    f"teacher file {self.path}: {len(extra)} id(s) are not in the data, e.g. {extra[:5].tolist()}. "
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


def _file_class_names(table, classes) -> list[str] | None:
    """The teacher's class names in column order: given, or the Parquet metadata's `classes`."""
    if classes is not None:
        return [str(c) for c in classes]
    raw = (table.schema.metadata or {}).get(b"classes")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise TeacherOutputError(f"teacher file metadata 'classes' must be a JSON list of class names, got {raw[:200]!r}.")
    return names


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
