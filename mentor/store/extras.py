"""Extras: per-row columns a teacher returns beside its probabilities (an LLM's raw answer, its
per-label scores, token counts, cost, an abstention flag), kept as extra columns of the shard.

Plain functions on Arrow arrays. Types are inferred per call (str, int, float, bool; every
column nullable). Shards written by different calls may disagree (a column all None in one
call, ints in one and floats in another): reading unifies them, so a paid answer is never
refused for its type: integers with floats read as float64, any other mix as text.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import TeacherOutputError

# the store's own columns: an extra may not take their names
RESERVED = ("id", "probs", "topk_index", "topk_prob", "teacher")


def _scalar(t: pa.DataType) -> bool:
    return pa.types.is_null(t) or pa.types.is_boolean(t) or pa.types.is_integer(t) or \
        pa.types.is_floating(t) or pa.types.is_string(t) or _vector(t)


def _vector(t: pa.DataType) -> bool:
    """A fixed-length float vector per row (a teacher's embedding)."""
    return pa.types.is_fixed_size_list(t) and pa.types.is_floating(t.value_type)


def vectors(column, name: str = "embedding") -> np.ndarray:
    """A vector column read back from the store as an (n, d) float32 array (DataError-free: the
    caller checks for rows without one, which read as NaN)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not _vector(arr.type):
        raise TeacherOutputError(f"extra column {name!r} holds {arr.type}, not one float vector per row.")
    d = arr.type.list_size
    out = np.full((len(arr), d), np.nan, np.float32)
    valid = ~np.asarray(arr.is_null().to_numpy(zero_copy_only=False), bool)
    if valid.any():
        out[valid] = np.asarray(arr.filter(pa.array(valid)).flatten().to_numpy(zero_copy_only=False),
                                np.float32).reshape(-1, d)
    return out


def column(values, name: str) -> pa.Array:
    """One extra column as an Arrow array. Values that are not one scalar type (a mix of text and
    numbers, lists, dicts) are kept as text (JSON for containers) rather than refused. A 2-D float
    array (one vector per row: a teacher's embedding) is kept as a fixed-size float32 list."""
    if isinstance(values, np.ndarray) and values.ndim == 2 and np.issubdtype(values.dtype, np.floating):
        flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1), pa.float32())
        return pa.FixedSizeListArray.from_arrays(flat, values.shape[1])
    try:
        arr = pa.array(values.tolist() if isinstance(values, np.ndarray) else list(values))
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError, OverflowError):
        arr = None
    if arr is not None and pa.types.is_large_string(arr.type):
        arr = arr.cast(pa.string())
    if arr is None or not _scalar(arr.type):
        arr = pa.array([None if v is None else v if isinstance(v, str) else json.dumps(v, default=str)
                        for v in values], pa.string())
    return arr


def check(extras, n: int, name: str) -> dict[str, pa.Array]:
    """The extras of one call as Arrow arrays of `n` rows each (TeacherOutputError if not)."""
    if not extras:
        return {}
    if not isinstance(extras, dict):
        raise TeacherOutputError(f"{name}: extras must be a dict of column name -> one value per row, got "
                                 f"{type(extras).__name__}; nothing was stored for this batch.")
    out = {}
    for key, values in extras.items():
        if not isinstance(key, str) or not key or key in RESERVED:
            raise TeacherOutputError(f"{name}: extra column name {key!r} is not allowed (it must be a non-empty "
                                     f"string other than {', '.join(RESERVED)}); rename it in the teacher. "
                                     "Nothing was stored for this batch.")
        try:
            k = len(values)
        except TypeError:
            k = None
        if k != n or isinstance(values, (str, bytes)):
            raise TeacherOutputError(f"{name}: extra column {key!r} has {k} values for {n} rows. Return one value "
                                     "per input, in input order (None where there is none); nothing was stored "
                                     "for this batch.")
        out[key] = column(values, key)
    return out


def unify(types) -> pa.DataType:
    """One type for a column written with `types` by different calls."""
    ts = {t for t in types if not pa.types.is_null(t)}
    if len(ts) <= 1:
        return ts.pop() if ts else pa.null()
    if all(pa.types.is_integer(t) for t in ts):
        return pa.int64()
    if all(pa.types.is_integer(t) or pa.types.is_floating(t) for t in ts):
        return pa.float64()
    return pa.string()


def conform(tables: list[pa.Table], columns: list[str]) -> list[pa.Table]:
    """`tables` with exactly `columns` (those ending in extras; missing ones all null), each column
    cast to one type across tables, so they concatenate."""
    target = {c: unify(t.schema.field(c).type for t in tables if c in t.column_names) for c in columns}
    out = []
    for t in tables:
        cols = [pc.cast(t.column(c), target[c]) if c in t.column_names else pa.nulls(t.num_rows, target[c])
                for c in columns]
        out.append(pa.table(cols, names=columns))
    return out


def names(table: pa.Table) -> list[str]:
    """The extra columns of a shard table."""
    return [c for c in table.column_names if c not in RESERVED]
