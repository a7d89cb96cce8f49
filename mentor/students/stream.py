"""Training from disk: the pool stays in Parquet and is read a buffer at a time.

The pool file (ids + features) and the teacher's outputs in the store are joined by id once,
into a folder of Parquet files (`join_pool`), with a memory-bounded partitioned hash join: both
sides are split by a hash of the id into buckets of about `bucket_rows` rows, and each bucket is
joined on its own. `StreamingPool` then reads that folder row group by row group (seeded order
of row groups, rows shuffled within a buffer, the small labeled set A spread evenly over the
epoch) through a torch `DataLoader`; `train_student_stream` trains on it with the same loop as
the in-memory trainer. Corrections that weight or mix per example are computed per batch from
the teacher's probabilities (`stream_plan`), so nothing of the size of the pool is held.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import scipy.sparse as sp
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from ..errors import ConfigError, DataError, StoreError
from ..methods import STREAM_METHODS, cannot_stream
from .rows import dense_rows, is_sparse, n_rows, stack_rows, take_rows
from .train import TrainConfig, VanillaObjective, val_pair, batch_loss, fit, resolve_device, seed_everything

FEATURES, PROBS, ID = "features", "probs", "id"
# Three layouts of the `features` column: dense float32 rows (a fixed-size list), integer rows
# (token ids of a transformer student: a fixed-size int64 list), and sparse rows (TF-IDF: `features`
# holds each row's nonzero values, `features_index` their columns, and the schema metadata the
# number of columns), so a sparse pool is never densified on disk or in a buffer.
FEATURE_INDEX = "features_index"
N_FEATURES_META = b"mentor.n_features"
JOINED_NOTE = "_joined.json"


# ---------------------------------------------------------------------------------------------- pool files


def write_pool(path, ids, features, *, labels=None, row_group_rows: int = 16384) -> Path:
    """Write a pool (built-in data, or arrays) once as Parquet: `id`, `features` (float32 rows,
    int64 token ids, or a scipy sparse matrix kept sparse) and optionally `label`, `row_group_rows`
    rows per row group."""
    ids = np.asarray(ids).astype(str)
    features = features if is_sparse(features) else np.asarray(features)
    chunks = ((ids[s:s + row_group_rows], features[s:s + row_group_rows],
               None if labels is None else labels[s:s + row_group_rows]) for s in range(0, len(ids), row_group_rows))
    return write_pool_chunks(path, chunks)


def write_pool_chunks(path, chunks) -> Path:
    """`write_pool` from an iterable of (ids, features[, labels]) chunks, one row group each, so a
    pool featurized a chunk at a time is never whole in memory. Features may be float rows,
    integer rows (token ids) or a scipy sparse matrix (kept sparse). Written to a temporary name first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    writer = None
    try:
        for ids, x, *rest in chunks:
            labels = rest[0] if rest else None
            x = x if is_sparse(x) else np.asarray(x)
            if x.ndim != 2 or n_rows(x) != len(ids):
                raise DataError(f"features must be a 2-d array with one row per id, got {x.shape} for {len(ids)} ids.")
            cols = {ID: pa.array(np.asarray(ids).astype(str)), **feature_columns_of(x)}
            if labels is not None:
                cols["label"] = pa.array(np.asarray(labels, dtype=np.int64))
            table = pa.table(cols).replace_schema_metadata({N_FEATURES_META: str(x.shape[1]).encode()})
            if writer is not None and table.schema != writer.schema:
                raise DataError(f"the pool's chunks disagree on their features ({writer.schema} then "
                                f"{table.schema}); featurize every chunk with the same fitted featurizer.")
            writer = writer or pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table)
        if writer is None:
            raise DataError(f"no rows to write to {path}: the pool is empty.")
        writer.close()
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def feature_columns_of(x) -> dict:
    """Arrow columns holding the rows of `x` in one of the three layouts (see FEATURE_INDEX)."""
    if is_sparse(x):
        x = sp.csr_matrix(x, dtype=np.float32)
        if x.nnz >= 2 ** 31:
            raise DataError(f"a chunk of {x.shape[0]} sparse rows holds {x.nnz} nonzero values, more than one "
                            "Parquet list column takes; write the pool in smaller chunks.")
        offsets = pa.array(x.indptr.astype(np.int32))
        return {FEATURES: pa.ListArray.from_arrays(offsets, pa.array(x.data, pa.float32())),
                FEATURE_INDEX: pa.ListArray.from_arrays(offsets, pa.array(x.indices.astype(np.int32)))}
    a = np.asarray(x)
    if np.issubdtype(a.dtype, np.integer):  # token ids stay integers (as in memory: `as_inputs`)
        a = np.ascontiguousarray(a, dtype=np.int64)
        return {FEATURES: pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])}
    return {FEATURES: _fixed_list(a)}


def layout(schema: pa.Schema) -> tuple[str, int]:
    """("dense" | "tokens" | "sparse", number of columns) of a pool or joined file's `features`."""
    if FEATURE_INDEX in schema.names:
        meta = schema.metadata or {}
        if N_FEATURES_META not in meta:
            raise DataError(f"a sparse pool file must record its number of columns ({N_FEATURES_META.decode()} in "
                            "its schema metadata); write it with mentor.students.stream.write_pool.")
        return "sparse", int(meta[N_FEATURES_META])
    kind = schema.field(FEATURES).type
    if not pa.types.is_fixed_size_list(kind):
        raise DataError(f"the pool's `features` column is {kind}, not a fixed-size list of numbers (or sparse rows "
                        "with `features_index`); write it with mentor.students.stream.write_pool.")
    return ("tokens" if pa.types.is_integer(kind.value_type) else "dense"), kind.list_size


def features_of(table, kind: str, n_features: int):
    """The `features` of a table or record batch in the layout `kind`: float32 rows, int64 rows or
    a float32 CSR matrix."""
    if kind == "dense":
        return batch_features(table, [FEATURES])
    col = table.column(FEATURES)
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if kind == "tokens":
        return col.flatten().to_numpy(zero_copy_only=False).reshape(len(col), -1).astype(np.int64, copy=False)
    idx = table.column(FEATURE_INDEX)
    idx = idx.combine_chunks() if isinstance(idx, pa.ChunkedArray) else idx
    indptr = np.asarray(col.offsets, dtype=np.int64)
    indptr = indptr - indptr[0]  # a sliced list array's offsets start past 0
    return sp.csr_matrix((col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False),
                          idx.flatten().to_numpy(zero_copy_only=False), indptr), shape=(len(col), n_features))


def _fixed_list(a: np.ndarray) -> pa.FixedSizeListArray:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])


def _parquet(path) -> pq.ParquetFile:
    """A Parquet file to read piece by piece: without pre-buffering, which caches every row group
    read so far until the reader is done (measured: 159 MB held while iterating a 1M-row pool, 30
    MB without)."""
    return pq.ParquetFile(path, pre_buffer=False)


def pool_files(path) -> list[Path]:
    """A Parquet file, or the `*.parquet` files of a folder in name order."""
    p = Path(path)
    files = sorted(f for f in p.glob("*.parquet") if not f.name.startswith(("_", "."))) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise DataError(f"no Parquet pool at {p}: give a .parquet file or a folder of them (write one from arrays "
                        "with mentor.students.stream.write_pool).")
    return files


def feature_columns(schema: pa.Schema, *, id_column: str = ID, columns=None) -> list[str]:
    """The feature columns: `columns`, else the one list column named `features`, else every
    numeric column but the id and `label`."""
    if columns:
        missing = [c for c in columns if c not in schema.names]
        if missing:
            raise DataError(f"feature columns {missing} are not in the pool file (it has {schema.names}); fix "
                            "data.feature_columns.")
        return list(columns)
    if FEATURES in schema.names:
        return [FEATURES]
    numeric = [f.name for f in schema if f.name not in (id_column, "label")
               and (pa.types.is_floating(f.type) or pa.types.is_integer(f.type))]
    if not numeric:
        raise DataError(f"the pool file has no numeric feature columns (columns: {schema.names}); name them "
                        "(data.feature_columns) or write the pool with write_pool.")
    return numeric


def batch_features(batch, columns: list[str]) -> np.ndarray:
    """(n, d) float32 features of a record batch or table: one list column, or scalar columns."""
    kind = batch.schema.field(columns[0]).type
    if len(columns) == 1 and (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind)):
        col = batch.column(columns[0])
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        flat = col.flatten().to_numpy(zero_copy_only=False)
        return flat.reshape(len(col), -1).astype(np.float32, copy=False)
    return np.column_stack([np.asarray(batch.column(c), dtype=np.float32) for c in columns]) if len(batch) else \
        np.zeros((0, len(columns)), np.float32)


# ---------------------------------------------------------------------------------------------- the join


def _bucket(ids: np.ndarray, n_buckets: int) -> np.ndarray:
    import pandas as pd
    return (pd.util.hash_array(np.asarray(ids, dtype=object)) % np.uint64(n_buckets)).astype(np.int64)


def _write_buckets(writers: list, tables_by_bucket: Iterator[tuple[np.ndarray, pa.Table]]) -> None:
    for buckets, table in tables_by_bucket:
        order = np.argsort(buckets, kind="stable")
        bounds = np.searchsorted(buckets[order], np.arange(len(writers) + 1))
        for b in range(len(writers)):
            if bounds[b + 1] > bounds[b]:
                writers[b].write_table(table.take(pa.array(order[bounds[b]:bounds[b + 1]])))


def join_key(files: list[Path], store) -> str:
    """What the joined folder depends on: the pool files as they are now and the store's contents."""
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    m = store.manifest
    parts = [(p.get("sha256"), p.get("rows")) for p in m.get("shards", []) + m.get("pending", [])]
    return hashlib.sha256(json.dumps([stats, store.fingerprint, parts], default=str).encode()).hexdigest()[:16]


def join_pool(pool_path, store, out_dir, *, id_column: str = ID, columns=None, other_ids=(),
              extra_store_rows: bool = False, bucket_rows: int = 131072, row_group_rows: int = 8192,
              chunk_rows: int = 65536) -> Path:
    """Join the pool file(s) with the store's outputs by id into `out_dir` (Parquet: id, features,
    probs), once: a folder already joined from the same pool files and store contents is reused.

    Memory is bounded by the bucket size, not the pool. Every pool id must be in the store
    (StoreError naming the fix otherwise); store rows whose ids are neither in the pool nor in
    `other_ids` (the ids of A, V and test) are refused too, since then the pool file and the store
    do not belong together, unless `extra_store_rows`.
    """
    files, out = pool_files(pool_path), Path(out_dir)
    key = join_key(files, store)
    note = out / JOINED_NOTE
    if note.is_file() and json.loads(note.read_text()).get("key") == key:
        return out
    first = pq.ParquetFile(files[0]).schema_arrow
    if id_column not in first.names:
        raise DataError(f"the pool file {files[0]} has no id column {id_column!r} (columns: {first.names}); set "
                        "data.id_column.")
    cols = feature_columns(first, id_column=id_column, columns=columns)
    kind, n_features = _source_layout(first, cols)
    read_cols = [id_column] + cols + ([FEATURE_INDEX] if kind == "sparse" else [])
    n_pool = sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    n_buckets = max(1, math.ceil(max(n_pool, len(store)) / bucket_rows))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "buckets").mkdir(parents=True)
    pool_schema = store_schema = None
    pool_w, store_w = [], []
    try:
        def pool_tables():
            for f in files:
                if _source_layout(pq.ParquetFile(f).schema_arrow, cols) != (kind, n_features):
                    raise DataError(f"the pool files disagree on their features: {f} is not laid out as "
                                    f"{files[0]} ({kind}, {n_features} columns); write them with one featurizer.")
                for rb in _parquet(f).iter_batches(batch_size=chunk_rows, columns=read_cols):
                    ids = np.asarray(rb.column(id_column).cast(pa.string()).to_numpy(zero_copy_only=False), dtype=str)
                    x = batch_features(rb, cols) if kind == "dense" else features_of(rb, kind, n_features)
                    yield _bucket(ids, n_buckets), pa.table({ID: pa.array(ids), **feature_columns_of(x)})

        def store_tables():
            for ids, probs in store.iter_batches(chunk_rows):
                yield _bucket(ids, n_buckets), pa.table({ID: pa.array(ids), PROBS: _fixed_list(probs)})

        for writers, name, tables in ((pool_w, "pool", pool_tables()), (store_w, "store", store_tables())):
            it = iter(tables)
            head = next(it, None)
            if head is None:
                continue
            writers += [pa.ipc.new_file(tmp / "buckets" / f"{name}-{b}.arrow", head[1].schema)
                        for b in range(n_buckets)]
            _write_buckets(writers, [head])
            _write_buckets(writers, it)
            if name == "pool":
                pool_schema = head[1].schema
            else:
                store_schema = head[1].schema
        while pool_w or store_w:
            (pool_w or store_w).pop().close()
        if pool_schema is None:
            raise DataError(f"the pool file(s) at {pool_path} hold no rows; nothing to train on.")
        problems = _join_buckets(tmp, n_buckets, store_schema is not None, other_ids, extra_store_rows,
                                 row_group_rows, None if n_features is None else {N_FEATURES_META: str(n_features)})
        if problems:
            raise StoreError(_join_message(problems, pool_path, store))
        shutil.rmtree(tmp / "buckets")
        (tmp / JOINED_NOTE).write_text(json.dumps({"key": key, "rows": n_pool, "files": [str(f) for f in files]}))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp, out)
    finally:
        for w in pool_w + store_w:  # still open only after an error
            w.close()
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def _source_layout(schema: pa.Schema, cols: list[str]) -> tuple[str, int | None]:
    """The layout a pool file's features are joined in: token ids and sparse rows as they are;
    anything else as dense float32 rows (their width is known once read)."""
    if cols == [FEATURES]:
        t = schema.field(FEATURES).type
        if FEATURE_INDEX in schema.names or (pa.types.is_fixed_size_list(t) and pa.types.is_integer(t.value_type)):
            return layout(schema)
    return "dense", None


def _join_buckets(tmp: Path, n_buckets: int, have_store: bool, other_ids, extra_store_rows: bool,
                  row_group_rows: int, meta: dict | None = None) -> dict:
    """Join each bucket in memory; returns the problems found (nothing is written for a bad join)."""
    import pandas as pd
    other = set(map(str, np.asarray(other_ids).tolist())) if len(other_ids) else set()
    problems = {"missing": [0, []], "extra": [0, []], "repeated": [0, []]}

    def note(name, bad):  # count, and keep the first three as examples
        problems[name][0] += len(bad)
        problems[name][1] += list(bad[:3 - len(problems[name][1])])
    for b in range(n_buckets):
        pool = pa.ipc.open_file(tmp / "buckets" / f"pool-{b}.arrow").read_all()
        st = pa.ipc.open_file(tmp / "buckets" / f"store-{b}.arrow").read_all() if have_store else None
        pids = np.asarray(pool.column(ID).to_numpy(zero_copy_only=False), dtype=object)
        sids = np.asarray(st.column(ID).to_numpy(zero_copy_only=False), dtype=object) if st is not None else \
            np.array([], dtype=object)
        index = pd.Index(sids)
        pos = index.get_indexer(pids) if len(sids) else np.full(len(pids), -1)
        dup = pd.Index(pids).duplicated()
        note("missing", pids[pos < 0].tolist())
        note("repeated", pids[dup].tolist())
        if not extra_store_rows and len(sids):
            hit = np.zeros(len(sids), bool)
            hit[pos[pos >= 0]] = True
            note("extra", [i for i in sids[~hit].tolist() if i not in other])
        if any(p[0] for p in problems.values()):
            continue  # keep counting, write nothing
        probs = st.column(PROBS).take(pa.array(pos))
        cols = {ID: pool.column(ID), FEATURES: pool.column(FEATURES)}
        if FEATURE_INDEX in pool.column_names:
            cols[FEATURE_INDEX] = pool.column(FEATURE_INDEX)
        pq.write_table(pa.table({**cols, PROBS: probs}).replace_schema_metadata(meta),
                       tmp / f"part-{b:05d}.parquet", row_group_size=row_group_rows)
    return {k: v for k, v in problems.items() if v[0]}


def _join_message(problems: dict, pool_path, store) -> str:
    out = []
    if "missing" in problems:
        n, ex = problems["missing"]
        out.append(f"{n} pool ids have no teacher output in the store at {store.path} (e.g. {ex}): label them first "
                   "(`mentor label`, or store.label(teacher, batches)), or point at the pool file this store was "
                   "labeled from.")
    if "extra" in problems:
        n, ex = problems["extra"]
        out.append(f"{n} rows of the store at {store.path} have ids that are in neither the pool file {pool_path} "
                   f"nor A, V or test (e.g. {ex}): the pool file and the store do not belong together. Point at "
                   "the pool file the store was labeled from, or at this pool's store (store.path); "
                   "extra_store_rows=True accepts a store that holds more than the pool.")
    if "repeated" in problems:
        n, ex = problems["repeated"]
        out.append(f"the pool file {pool_path} repeats {n} ids (e.g. {ex}); ids must be unique. Deduplicate it.")
    return " ".join(out) + " Nothing was trained."


# ---------------------------------------------------------------------------------------------- the loader


class StreamingPool(IterableDataset):
    """Batches of A ∪ U for one epoch, read from a joined folder (`join_pool`) row group by row group.

    Each epoch (`set_epoch`) visits every pool row and every labeled row once: row groups in a
    seeded order, gathered until `buffer_rows` pool rows, A's rows added in proportion, the
    buffer shuffled and cut into batches of `batch_size` (the rest carried to the next buffer, so
    every batch but the epoch's last is full). Same seed and epoch, same batches. Yields dicts of
    numpy arrays: `x` (b, d) float32 (int64 for token ids, a float32 CSR matrix for sparse rows), `y` (b,) int64 (−1 on pool rows), `t` (b, C) float32 (the
    teacher's probabilities; 0 on labeled rows), `id` (b,) str ('' on labeled rows).
    Memory: a buffer and a row group, whatever the pool's size.
    """

    def __init__(self, joined_dir, x_labeled=None, y_labeled=None, *, batch_size: int = 128,
                 buffer_rows: int = 65536, seed: int = 0):
        self.files = pool_files(joined_dir)
        self.units, n_classes = [], None
        for i, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            self.units += [(i, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)]
        schema = pq.ParquetFile(self.files[0]).schema_arrow
        if PROBS not in schema.names or FEATURES not in schema.names:
            raise DataError(f"{joined_dir} is not a joined pool (columns {schema.names}); make it with join_pool.")
        self.kind, self.n_features = layout(schema)
        n_classes = schema.field(PROBS).type.list_size
        self.n_classes, self.n_pool = n_classes, sum(u[2] for u in self.units)
        self.x_labeled = _labeled_rows(x_labeled, self.kind, self.n_features)
        self.y_labeled = np.zeros(0, np.int64) if y_labeled is None else np.asarray(y_labeled, dtype=np.int64)
        if self.x_labeled.shape[1:] != (self.n_features,) or n_rows(self.x_labeled) != len(self.y_labeled):
            raise DataError(f"the labeled set must be ({len(self.y_labeled)}, {self.n_features}) features (as the "
                            f"pool's) with one label each, got {self.x_labeled.shape} and {len(self.y_labeled)}.")
        self.batch_size, self.buffer_rows, self.seed, self.epoch = int(batch_size), int(buffer_rows), int(seed), 0

    @property
    def n_labeled(self) -> int:
        return len(self.y_labeled)

    def __len__(self) -> int:
        return -(-(self.n_labeled + self.n_pool) // self.batch_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def _read(self, unit) -> pa.Table:
        cols = [ID, FEATURES, PROBS] + ([FEATURE_INDEX] if self.kind == "sparse" else [])
        return _parquet(self.files[unit[0]]).read_row_group(unit[1], columns=cols)

    def __iter__(self):
        info = get_worker_info()
        if info is not None and info.num_workers > 1:
            raise ConfigError("StreamingPool reads in one process: use DataLoader num_workers 0 or 1 "
                              "(1 reads ahead while the model trains).")
        rng = np.random.default_rng([self.seed, self.epoch])
        units = [self.units[i] for i in rng.permutation(len(self.units))]
        lab_order, lab_done, seen = rng.permutation(self.n_labeled), 0, 0
        carry = None
        i = 0
        while i < len(units):
            tables = []
            while i < len(units) and sum(t.num_rows for t in tables) < self.buffer_rows:
                tables.append(self._read(units[i]))
                i += 1
            table = pa.concat_tables(tables)
            seen += table.num_rows
            take = lab_order[lab_done:round(self.n_labeled * seen / self.n_pool)]
            lab_done += len(take)
            part = {"x": stack_rows(features_of(table, self.kind, self.n_features), take_rows(self.x_labeled, take)),
                    "y": np.concatenate([np.full(table.num_rows, -1, np.int64), self.y_labeled[take]]),
                    "t": np.concatenate([batch_features(table, [PROBS]),
                                         np.zeros((len(take), self.n_classes), np.float32)]),
                    "id": np.concatenate([np.asarray(table.column(ID).to_numpy(zero_copy_only=False), dtype=str),
                                          np.full(len(take), "", dtype=str)])}
            if carry is not None:
                part = {k: stack_rows(carry[k], v) for k, v in part.items()}
            perm = rng.permutation(len(part["y"]))
            part = {k: take_rows(v, perm) for k, v in part.items()}
            n = len(perm)
            full = n if i == len(units) else n // self.batch_size * self.batch_size
            for s in range(0, full, self.batch_size):
                yield {k: v[s:min(s + self.batch_size, full)] for k, v in part.items()}
            carry = {k: v[full:] for k, v in part.items()}


def _labeled_rows(x, kind: str, n_features: int):
    """A's rows in the pool's layout: float32 rows, int64 token ids, or a float32 CSR matrix."""
    if kind == "sparse":
        return sp.csr_matrix((0, n_features), dtype=np.float32) if x is None else sp.csr_matrix(x, dtype=np.float32)
    dtype = np.int64 if kind == "tokens" else np.float32
    if x is None:
        return np.zeros((0, n_features), dtype)
    if is_sparse(x):
        raise DataError(f"the labeled set is sparse but the pool on disk holds {kind} rows; featurize both alike.")
    a = np.asarray(x)
    if kind == "tokens" and not np.issubdtype(a.dtype, np.integer):
        raise DataError("the pool on disk holds token ids but the labeled set holds floats; featurize both alike.")
    return a.astype(dtype, copy=False)


def loader(pool: StreamingPool, *, read_ahead: bool = False) -> DataLoader:
    """The DataLoader over a StreamingPool (it yields whole batches); `read_ahead` reads the next
    row groups in a worker process while the model trains."""
    return DataLoader(pool, batch_size=None, num_workers=1 if read_ahead else 0,
                      persistent_workers=False)


def iter_teacher_probs(joined_dir, batch_rows: int = 65536) -> Iterator[np.ndarray]:
    """The teacher's probabilities on the joined pool, in chunks (for pool-wide statistics)."""
    for f in pool_files(joined_dir):
        for rb in _parquet(f).iter_batches(batch_size=batch_rows, columns=[PROBS]):
            yield batch_features(rb, [PROBS])


# ---------------------------------------------------------------------------------------------- methods per batch


@dataclass
class StreamPlan:
    """A method as functions of one batch's teacher probabilities (nothing per pool example)."""
    objective: object                                     # the pool term; its pool_index is the batch's rows
    targets: Callable[[np.ndarray], np.ndarray] | None = None   # e.g. re-tempered on V
    weights: Callable[[np.ndarray], np.ndarray] | None = None   # per-example weights (pool-normalised)
    objective_for: Callable[[np.ndarray], object] | None = None  # a batch's own objective (SLaM's α)
    info: dict | None = None
    distill_weight: float | None = None  # λ instead of train.distill_weight (auto's method@λ candidates)




def stream_plan(method: str, *, n_classes: int, joined_dir=None, teacher_probs_val=None, val_labels=None,
                temperature: float = 1.0, options: dict | None = None, n_epochs: int | None = None) -> StreamPlan:
    """The per-batch form of a method of mentor.methods (same fits on V, same formulas). Pool-wide
    constants (the mean weight that normalises weighted-margin to mean 1, threshold coverage)
    take one streaming pass over the joined pool's teacher probabilities."""
    from .. import corrections as C
    from ..methods import MethodContext, check_method_options, plan_method
    from ..reliability import apply_temperature, fit_temperature, teacher_margin
    options = dict(options or {})
    check_method_options(method, options)
    if method not in STREAM_METHODS:
        raise ConfigError(cannot_stream(method) + ".")
    tv = None if teacher_probs_val is None else np.asarray(teacher_probs_val, dtype=np.float32)
    info: dict = {"data_path": "stream"}
    calibrate = method == "calibrated-soft" or options.get("calibrate_teacher")
    temper = None  # the teacher re-tempered on V, applied per batch
    if calibrate:
        from ..methods import _require_val
        _require_val(MethodContext(n_classes, np.zeros((0, n_classes)), tv, val_labels), method)
        t_cal = fit_temperature(tv, val_labels)
        tv = apply_temperature(tv, t_cal).astype(np.float32)
        info["teacher_temperature"] = t_cal
        temper = partial(_tempered, temperature=t_cal)

    def pool_probs():
        for t in iter_teacher_probs(joined_dir):
            yield t if temper is None else temper(t)

    # the plan on V alone gives the objective and everything fitted on V (reliability, k, threshold)
    probe = plan_method(method if method != "calibrated-soft" else "vanilla-soft", MethodContext(
        n_classes=n_classes, teacher_probs_pool=tv if tv is not None else np.full((1, n_classes), 1 / n_classes,
                                                                                   np.float32),
        teacher_probs_val=tv, val_labels=val_labels, temperature=temperature, options={**options,
                                                                                       "calibrate_teacher": False},
        n_epochs=n_epochs))
    info.update({k: v for k, v in probe.info.items() if k in ("reliability", "k", "threshold", "eps", "taid_epochs",
                                                              "normalized", "mode", "dkd_alpha", "dkd_beta")})
    plan = StreamPlan(probe.objective, targets=temper, info=info)
    if method.startswith("weighted-margin"):
        rel = _fit_rel(tv, val_labels, n_classes, options)
        raw = lambda t: rel.accuracy_at(teacher_margin(t))  # noqa: E731
        total, n = 0.0, 0
        for t in pool_probs():
            total, n = total + float(np.sum(raw(t), dtype=np.float64)), n + len(t)
        if not total > 0:
            C.normalize_weights(np.zeros(1))  # the same error as in memory: every weight is zero
        plan.weights = lambda t: (raw(t) / (total / n)).astype(np.float32)
    elif method.startswith("slam"):
        rel = _fit_rel(tv, val_labels, n_classes, options)
        k, normalized = int(info["k"]), bool(info["normalized"])
        floor = options.get("slam_alpha_floor")
        mode = info["mode"]

        def objective_for(t):
            alpha = C.slam_alpha(teacher_margin(t), rel, floor, normalized=normalized, k=k)
            return C.SlamObjective(alpha, np.full(len(t), k), mode=mode, normalized=normalized, teacher_probs_pool=t)
        plan.objective_for = objective_for
    elif method == "threshold":
        thr = float(info["threshold"])
        if not any(C.threshold_mask(t, thr).any() for t in pool_probs()):
            raise ConfigError(f"no pool example reaches the confidence threshold {thr:.4f}; lower it.")
        plan.weights = lambda t: C.threshold_mask(t, thr)
    return plan


def stream_auto_plan(val_probs_of: Callable[[StreamPlan | None], np.ndarray], *, n_classes: int, joined_dir,
                     teacher_probs_val, val_labels, temperature: float = 1.0, options: dict | None = None,
                     n_epochs: int | None = None, seed: int = 0, selects_epoch_on_val: bool = False) -> StreamPlan:
    """`auto` from disk: every candidate trained from disk and scored on V exactly as in memory
    (methods.auto_choice: same candidates, cross-fitting, noise rule). `val_probs_of(plan)` trains
    a fresh student with that plan (None: on A alone, the labeled-only candidate) and returns its
    probabilities on V. Returns the chosen candidate's plan fitted on all of V (labeled-only: a plan
    with λ = 0, which the caller trains on A alone); the choice is in its info["auto"].
    `selects_epoch_on_val` (train.select_on): every candidate is cross-fitted, and `val_probs_of(plan,
    keep)` is given the V rows its student may choose its epoch on."""
    from ..methods import (COMMON_OPTIONS, METHOD_OPTIONS, MethodContext, _require_val, auto_choice,
                           check_method_options, parse_candidate, streams)
    options = dict(options or {})
    check_method_options("auto", options)
    if not streams("auto", options):
        raise ConfigError(cannot_stream("auto", options) + ".")
    _require_val(MethodContext(n_classes, np.zeros((0, n_classes)), teacher_probs_val, val_labels), "auto")
    tv, yv = np.asarray(teacher_probs_val), np.asarray(val_labels)

    def plan_of(name, keep=None):
        base, lam = parse_candidate(name)
        if base is None:
            return None
        own = {k: v for k, v in options.items() if k in COMMON_OPTIONS or k in METHOD_OPTIONS[base]}
        plan = stream_plan(base, n_classes=n_classes, joined_dir=joined_dir,
                           teacher_probs_val=tv if keep is None else tv[keep],
                           val_labels=yv if keep is None else yv[keep], temperature=temperature, options=own,
                           n_epochs=n_epochs)
        if lam is not None:
            plan.distill_weight = lam
            plan.info = {**plan.info, "distill_weight": lam}
        return plan

    if selects_epoch_on_val:
        choice = auto_choice(lambda name, keep: val_probs_of(plan_of(name, keep), keep), yv, options, seed,
                             cross_fit_all=True)
    else:
        choice = auto_choice(lambda name, keep: val_probs_of(plan_of(name, keep)), yv, options, seed)
    choice["epoch_chosen_on_val"] = selects_epoch_on_val
    plan = plan_of(choice["chosen"])
    if plan is None:  # labeled-only: the caller trains on A alone
        return StreamPlan(VanillaObjective(), info={"data_path": "stream", "distill_weight": 0.0, "auto": choice},
                          distill_weight=0.0)
    plan.info = {**plan.info, "auto": choice}
    return plan


def _tempered(t: np.ndarray, temperature: float) -> np.ndarray:
    from ..reliability import apply_temperature
    return apply_temperature(t, temperature).astype(np.float32)


def _fit_rel(tv, val_labels, n_classes: int, options: dict):
    from ..reliability import fit_reliability
    return fit_reliability(tv, val_labels, n_classes=n_classes, min_val=int(options.get("min_val", 50)))


# ---------------------------------------------------------------------------------------------- training


def check_not_distributed() -> None:
    """The stream trainer is one process only: refuse it under torchrun (ConfigError naming the fix)."""
    from .distributed import STREAM_NOT_DISTRIBUTED, active, launched
    if active() or launched() is not None:
        raise ConfigError(STREAM_NOT_DISTRIBUTED)


def train_student_stream(model: torch.nn.Module, pool: StreamingPool, *, plan: StreamPlan | None = None,
                         config: TrainConfig | None = None, read_ahead: bool = False, x_val=None, y_val=None):
    """Train `model` in place on CE(A) + λ·mean_U(w·objective), reading U from disk.

    The same loss, schedule, checkpoints and epoch count (train.epochs raised by min_steps) as
    `train_student`; only the order of the examples differs (row groups and buffers instead of
    one permutation of the whole pool); V (`x_val`, `y_val`, in memory: it is small) is scored and
    selects the kept epoch as there. Returns a TrainResult."""
    cfg = config or TrainConfig()
    check_not_distributed()
    device = resolve_device(cfg.device)
    gen = seed_everything(cfg.seed)
    if cfg.grad_accum < 1:
        raise ConfigError(f"train.grad_accum must be >= 1, got {cfg.grad_accum}.")
    if pool.batch_size != cfg.batch_size or pool.seed != cfg.seed:
        raise ConfigError(f"the StreamingPool was made with batch_size {pool.batch_size} and seed {pool.seed}, the "
                          f"training config has {cfg.batch_size} and {cfg.seed}; make them agree.")
    plan = plan or StreamPlan(VanillaObjective())
    lam = cfg.distill_weight if plan.distill_weight is None else float(plan.distill_weight)
    model.to(device)
    batches = loader(pool, read_ahead=read_ahead)

    def epoch_groups(epoch):
        pool.set_epoch(epoch)
        group, n_group = [], 0
        for b in batches:
            group.append(_stream_batch(b))
            n_group += len(b["y"])
            if len(group) == cfg.grad_accum:
                yield n_group, group
                group, n_group = [], 0
        if group:
            yield n_group, group

    def _stream_batch(b):
        lab = b["y"] >= 0
        pool_rows = ~lab
        t = b["t"][pool_rows].numpy()
        objective = plan.objective_for(t) if plan.objective_for is not None and len(t) else plan.objective
        targets = plan.targets(t) if plan.targets is not None else t
        w = plan.weights(t) if plan.weights is not None and len(t) else None
        return lambda: batch_loss(
            model, objective, lam, device,
            x_lab=_batch_rows(b["x"], lab, device) if lab.any() else None, y_lab=b["y"][lab].to(device),
            x_pool=_batch_rows(b["x"], pool_rows, device) if pool_rows.any() else None,
            t_pool=torch.as_tensor(targets, device=device),
            pool_index=torch.arange(int(pool_rows.sum()), device=device),
            weights=None if w is None else torch.as_tensor(np.asarray(w, dtype=np.float32), device=device))

    return fit(model, plan.objective, cfg, device, gen, pool.n_labeled + pool.n_pool, epoch_groups,
               val=val_pair(x_val, y_val))


def _batch_rows(x, mask: torch.Tensor, device) -> torch.Tensor:
    """Rows `mask` of a batch's inputs as a tensor; sparse rows are densified here, a batch at a time."""
    if is_sparse(x):
        return torch.from_numpy(dense_rows(take_rows(x, mask.numpy()))).to(device)
    return x[mask].to(device)
