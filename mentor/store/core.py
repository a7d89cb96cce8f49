"""TeacherStore: the folder of Parquet shards and its manifest (see the package docstring)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import hashlib
import io
import json
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..checks import dense_to_topk, topk_to_dense, validate_probabilities
from ..errors import ConfigError, DataError, StoreError, TeacherOutputError
from .files import LOCK_NAME, _atomic_write, _fsync_dir, _sha256_file, folder_lock  # noqa: F401

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".parquet"
PRECISIONS = {"float32": pa.float32(), "float16": pa.float16()}
# settings that change what a stored row means; a store only accepts requests that agree on all
SETTINGS = ("fingerprint", "n_classes", "top_k", "precision", "temperature")


@dataclass
class LabelReport:
    """What one `label()` run did: ids asked for, newly paid for, skipped, and the cost."""

    n_requested: int
    n_new: int
    n_skipped: int
    cost: float
    seconds: float


def _shard_number(name: str) -> int | None:
    if name.startswith(SHARD_PREFIX) and name.endswith(SHARD_SUFFIX):
        digits = name[len(SHARD_PREFIX):-len(SHARD_SUFFIX)]
        return int(digits) if digits.isdigit() else None
    return None


def _as_ids(ids) -> np.ndarray:
    return np.asarray(ids).astype(str).reshape(-1)


def _first_new(ids: np.ndarray, stored) -> np.ndarray:
    """Mask of ids not in `stored` and not repeated earlier in `ids`: each is paid for once."""
    mask = np.zeros(len(ids), dtype=bool)
    fresh: set[str] = set()
    for i, x in enumerate(ids.tolist()):
        if x not in stored and x not in fresh:
            fresh.add(x)
            mask[i] = True
    return mask


def _take(inputs, mask: np.ndarray):
    """The rows of `inputs` under `mask`; a list becomes an array (object dtype for text)."""
    if isinstance(inputs, (list, tuple)):
        inputs = np.asarray(inputs, dtype=object if inputs and isinstance(inputs[0], str) else None)
    return inputs[np.flatnonzero(mask)]


# ---------------------------------------------------------------------------------------- the store

class TeacherStore:
    """Append-only, crash-safe store of one teacher's class probabilities, keyed by example id.

    `path` is created if needed. Opening an existing store with a different fingerprint,
    n_classes, top_k, precision or temperature raises StoreError and changes nothing.
    `top_k` keeps only the k largest probabilities (big label spaces); reading then gives the
    dense reconstruction of `checks.topk_to_dense`. `shard_size` is the target rows per shard.
    """

    def __init__(self, path, *, fingerprint: str, n_classes: int, top_k: int | None = None,
                 precision: str = "float32", temperature: float = 1.0, shard_size: int = 4096):
        if not isinstance(fingerprint, str) or not fingerprint:
            raise ConfigError(f"store fingerprint must be a non-empty string, got {fingerprint!r}; "
                              "pass teacher.fingerprint.")
        if int(n_classes) < 1:
            raise ConfigError(f"store n_classes must be >= 1, got {n_classes}.")
        if top_k is not None and not 1 <= int(top_k) <= int(n_classes):
            raise ConfigError(f"store top_k={top_k} must lie in [1, n_classes={n_classes}], or be None "
                              "to keep the full distribution.")
        if precision not in PRECISIONS:
            raise ConfigError(f"store precision must be one of {sorted(PRECISIONS)}, got {precision!r}.")
        if not float(temperature) > 0:
            raise ConfigError(f"store temperature must be > 0, got {temperature}.")
        if int(shard_size) < 1:
            raise ConfigError(f"store shard_size must be >= 1, got {shard_size}.")
        self.path = Path(path)
        self.fingerprint, self.n_classes = fingerprint, int(n_classes)
        self.top_k = None if top_k is None else int(top_k)
        self.precision, self.temperature = precision, float(temperature)
        self.shard_size = int(shard_size)
        self.path.mkdir(parents=True, exist_ok=True)
        self._manifest: dict = {}
        self._manifest_text = ""
        self._index: dict[str, int] = {}  # id -> position in stored order
        with self._locked():
            if not (self.path / MANIFEST_NAME).exists():
                self._manifest = self._new_manifest()
                self._commit()
            self._load()

    @classmethod
    def open(cls, path) -> "TeacherStore":
        """Open an existing store with the settings it was written with."""
        m = _read_manifest(Path(path))
        if m is None:
            raise StoreError(f"no teacher-output store at {path} ({MANIFEST_NAME} not found). Run labeling "
                             "first (`mentor label`, or TeacherStore(path, fingerprint=..., n_classes=...).label(...)).")
        return cls(path, **{k: m[k] for k in SETTINGS}, shard_size=m.get("shard_size", 4096))

    @staticmethod
    def exists(path) -> bool:
        """Whether `path` holds a store (its manifest)."""
        return (Path(path) / MANIFEST_NAME).exists()

    # ------------------------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"TeacherStore({str(self.path)!r}, fingerprint={self.fingerprint!r}, rows={len(self)})"

    @property
    def manifest(self) -> dict:
        return copy.deepcopy(self._manifest)

    @property
    def spent(self) -> float:
        return float(self._manifest["spent"])

    @property
    def n_calls(self) -> int:
        return int(self._manifest["n_calls"])

    def stored_ids(self) -> set[str]:
        return set(self._index)

    def missing(self, ids) -> np.ndarray:
        """Ids not stored yet, in the given order."""
        ids = _as_ids(ids)
        return ids[np.fromiter((x not in self._index for x in ids.tolist()), bool, len(ids))]

    def read(self, ids=None) -> np.ndarray:
        """Dense float32 (len(ids), n_classes) probabilities aligned to `ids` (all rows if None)."""
        if ids is None:
            return self.read_all()[1]
        ids = _as_ids(ids)
        gone = self.missing(ids)
        if len(gone):
            raise StoreError(
                f"{len(gone)} of {len(ids)} requested ids have no stored teacher output (e.g. {gone[:3].tolist()}) "
                f"in {self.path}. Run labeling for them first (store.label(teacher, batches) or `mentor label`).")
        pos = np.fromiter((self._index[x] for x in ids.tolist()), np.int64, len(ids))
        out = np.empty((len(ids), self.n_classes), dtype=np.float32)
        shard_of = np.searchsorted(self._offsets, pos, side="right") - 1
        for s in np.unique(shard_of):
            rows = np.flatnonzero(shard_of == s)
            table = self._read_shard(int(s)).take(pa.array(pos[rows] - self._offsets[s]))
            out[rows] = self._decode(table)
        return out

    def read_all(self) -> tuple[np.ndarray, np.ndarray]:
        """All stored (ids, dense probabilities) in stored order."""
        parts = list(self.iter_batches(batch_rows=max(len(self), 1)))
        if not parts:
            return np.array([], dtype=str), np.zeros((0, self.n_classes), np.float32)
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def iter_batches(self, batch_rows: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Stream (ids, dense probs) in stored order, `batch_rows` at a time (the last may be shorter)."""
        if batch_rows < 1:
            raise ConfigError(f"batch_rows must be >= 1, got {batch_rows}.")
        pending: list[pa.Table] = []
        n_pending = 0
        for s in range(len(self._manifest["shards"])):
            pending.append(self._read_shard(s))
            n_pending += pending[-1].num_rows
            while n_pending >= batch_rows:
                table = pa.concat_tables(pending)
                yield self._ids_and_probs(table.slice(0, batch_rows))
                pending, n_pending = [table.slice(batch_rows)], n_pending - batch_rows
        if n_pending:
            yield self._ids_and_probs(pa.concat_tables(pending))

    def verify(self) -> None:
        """Check every shard against the sha256 in the manifest (bit rot, hand edits)."""
        for entry in self._manifest["shards"]:
            if _sha256_file(self.path / entry["file"]) != entry["sha256"]:
                raise StoreError(f"{self.path / entry['file']} does not match the checksum in {MANIFEST_NAME}: "
                                 "the file was changed or damaged. Restore it, or delete the store folder to relabel.")

    # ------------------------------------------------------------------------------------ writing

    def label(self, teacher, batches: Iterable, *, progress: bool = False, pool=None) -> LabelReport:
        """Ask `teacher` for every id in `batches` not stored yet, storing each call's outputs.

        `batches` yields (ids, inputs) chunks, so a pool larger than memory can stream from disk;
        each chunk's new ids go to the teacher in one call. Bad teacher output raises
        TeacherOutputError; everything stored before it stays.

        `pool` (`mentor.distributed`: threads, or Ray workers on many machines, each holding the
        teacher) keeps several calls running at once. Each call is stored as soon as it returns,
        an id already in flight is not sent again, and when a call fails the others in flight
        are still stored before the error is raised.
        """
        fp = getattr(teacher, "fingerprint", None)
        if fp != self.fingerprint:
            raise StoreError(
                f"teacher fingerprint {fp!r} differs from the store's {self.fingerprint!r} at {self.path}: "
                "its outputs would be mixed with another teacher's. Use another store path for this "
                "teacher, or delete the store folder to relabel.")
        if pool is not None and getattr(pool.teacher, "fingerprint", None) != fp:
            raise StoreError(f"the pool's teacher ({getattr(pool.teacher, 'fingerprint', None)!r}) is not the "
                             f"teacher passed to label() ({fp!r}); build the pool from this teacher.")
        price = float(getattr(teacher, "cost_per_example", 0.0) or 0.0)
        tally = {"requested": 0, "new": 0, "cost": 0.0}
        start, in_flight, busy, errors = time.perf_counter(), {}, set(), []

        def store(todo, probs, *, locked=False):
            """Append one call's outputs; `locked`: the caller holds the lock and synced before the call."""
            probs = self._check(probs, todo, f"teacher {fp} outputs")
            with contextlib.nullcontext() if locked else self._locked():
                keep = np.ones(len(todo), bool)
                if not locked:  # the call ran unlocked: another process may have stored some meanwhile
                    self._sync()
                    keep = _first_new(todo, self._index)
                if keep.any():
                    self._append(todo[keep], probs[keep], spent=len(todo) * price, calls=1)
            tally["new"] += int(keep.sum())
            tally["cost"] += len(todo) * price
            if progress:
                print(f"\rlabel: {tally['new']} new, {tally['requested'] - tally['new']} skipped, "
                      f"cost {tally['cost']:g}", end="", file=sys.stderr)

        def collect(return_when):
            done, _ = concurrent.futures.wait(list(in_flight), return_when=return_when)
            for fut in done:
                todo = in_flight.pop(fut)
                busy.difference_update(todo.tolist())
                try:
                    store(todo, fut.result())
                except Exception as e:  # keep storing the other calls; raise the first error after
                    errors.append(e)

        try:
            for chunk in batches:
                try:
                    ids, inputs = chunk
                except (TypeError, ValueError):
                    raise DataError("label() expects batches of (ids, inputs) pairs; got "
                                    f"{type(chunk).__name__}. Yield (ids, inputs) for each chunk.") from None
                ids = _as_ids(ids)
                if len(inputs) != len(ids):
                    raise DataError(f"a batch has {len(ids)} ids but {len(inputs)} inputs; "
                                    "yield one input per id.")
                tally["requested"] += len(ids)
                with self._locked():
                    self._sync()
                    mask = _first_new(ids, self._index)
                    if busy:
                        mask &= np.array([x not in busy for x in ids.tolist()])
                    if not mask.any():
                        continue
                    todo = ids[mask]
                    if pool is None:  # one call at a time, under the lock: two processes never pay twice
                        store(todo, teacher.predict_proba(_take(inputs, mask), todo), locked=True)
                if pool is None:
                    continue
                in_flight[pool.submit(_take(inputs, mask), todo)] = todo
                busy.update(todo.tolist())
                while len(in_flight) >= pool.max_in_flight and not errors:
                    collect(concurrent.futures.FIRST_COMPLETED)
                if errors:
                    break
        finally:  # whatever stops the loop (an error, a bad batch), calls already paid for are stored
            if in_flight:
                collect(concurrent.futures.ALL_COMPLETED)
        if progress:
            print(file=sys.stderr)
        if errors:
            raise errors[0]
        return LabelReport(tally["requested"], tally["new"], tally["requested"] - tally["new"], tally["cost"],
                           time.perf_counter() - start)

    def write(self, ids, probs) -> int:
        """Append outputs computed elsewhere (e.g. imported from a file); ids already stored are
        skipped. Returns how many rows were newly written."""
        ids = _as_ids(ids)
        probs = self._check(probs, ids, "probabilities to write")
        with self._locked():
            self._sync()
            mask = _first_new(ids, self._index)
            ids, probs = ids[mask], probs[mask]
            for i in range(0, len(ids), self.shard_size):
                self._append(ids[i:i + self.shard_size], probs[i:i + self.shard_size], spent=0.0, calls=0)
        return len(ids)

    def compact(self) -> None:
        """Merge small shards into shards of about `shard_size` rows; atomic, stored order kept."""
        with self._locked():
            self._sync()
            self._merge(final=True)

    # ------------------------------------------------------------------------------------ internals

    def _new_manifest(self) -> dict:
        return {"format": FORMAT_VERSION, **{k: getattr(self, k) for k in SETTINGS},
                "shard_size": self.shard_size, "created": datetime.now(timezone.utc).isoformat(),
                "shards": [], "rows": 0, "spent": 0.0, "n_calls": 0}

    def _locked(self):
        return folder_lock(self.path)

    def _commit(self) -> None:
        """Atomically rewrite the manifest; this is the moment a shard becomes part of the store."""
        m = self._manifest
        m["rows"] = sum(s["rows"] for s in m["shards"])
        m["updated"] = datetime.now(timezone.utc).isoformat()
        self._manifest_text = json.dumps(m, indent=1)
        _atomic_write(self.path / MANIFEST_NAME, self._manifest_text.encode())

    def _sync(self) -> None:
        """Reload if another process changed the store, or crashed leaving files behind."""
        text = (self.path / MANIFEST_NAME).read_text()
        listed = {s["file"] for s in self._manifest["shards"]}
        stray = [p for p in self.path.iterdir() if p.name.endswith(".tmp")
                 or (_shard_number(p.name) is not None and p.name not in listed)]
        if text != self._manifest_text or stray:
            self._load()

    def _load(self) -> None:
        """Read the manifest, delete leftover .tmp files, index the ids and adopt orphan shards."""
        m = _read_manifest(self.path)
        mine = {k: getattr(self, k) for k in SETTINGS}
        theirs = {k: m.get(k) for k in SETTINGS}
        if theirs["fingerprint"] != mine["fingerprint"]:
            raise StoreError(
                f"the store at {self.path} holds outputs of teacher {theirs['fingerprint']!r}, not of "
                f"{mine['fingerprint']!r}. Use another store path for this teacher, or delete the folder "
                "to relabel. Nothing was changed.")
        if theirs != mine:
            diff = ", ".join(f"{k}={theirs[k]!r} (asked {mine[k]!r})" for k in SETTINGS if theirs[k] != mine[k])
            raise StoreError(
                f"the store at {self.path} was written with {diff}. Open it with TeacherStore.open(path) to "
                "use its settings, use another store path, or delete the folder to relabel. Nothing was changed.")
        self._manifest, self._manifest_text = m, (self.path / MANIFEST_NAME).read_text()
        for p in self.path.iterdir():
            if p.name.endswith(".tmp"):
                p.unlink()
        self._index = {}
        for entry in m["shards"]:
            p = self.path / entry["file"]
            if not p.exists():
                raise StoreError(f"{MANIFEST_NAME} lists {entry['file']} ({entry['rows']} rows) but the file is "
                                 f"missing from {self.path}. Restore it, or delete the store folder to relabel.")
            ids = pq.read_table(p, columns=["id"]).column("id").to_pylist()
            if len(ids) != entry["rows"]:
                raise StoreError(f"{p} has {len(ids)} rows but {MANIFEST_NAME} says {entry['rows']}: the file was "
                                 "changed. Restore it, or delete the store folder to relabel.")
            self._add_to_index(ids, p)
        self._update_offsets()
        listed = {s["file"] for s in m["shards"]}
        orphans = sorted(p for p in self.path.iterdir() if _shard_number(p.name) is not None and p.name not in listed)
        if orphans:
            for p in orphans:
                self._adopt(p)
            self._commit()

    def _add_to_index(self, ids: list, where) -> None:
        start = len(self._index)
        self._index.update(zip(ids, range(start, start + len(ids))))
        if len(self._index) != start + len(ids):
            raise StoreError(f"{where} repeats ids already stored elsewhere in {self.path}; the store was edited "
                             "by hand. Delete the folder to relabel.")

    def _update_offsets(self) -> None:
        self._offsets = np.cumsum([0] + [s["rows"] for s in self._manifest["shards"]])

    def _adopt(self, p: Path) -> None:
        """Take in a shard renamed into place but never committed (the writer was killed), keeping
        only ids not stored yet, so nothing is paid twice and nothing is duplicated."""
        try:
            table = pq.read_table(p)
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        except Exception as e:
            raise StoreError(f"{p} is not listed in {MANIFEST_NAME} and cannot be read ({e}). Move it out of "
                             f"{self.path} (or delete it) and open the store again.") from None
        expect = {"fingerprint": self.fingerprint, "n_classes": str(self.n_classes),
                  "top_k": str(self.top_k), "precision": self.precision}
        got = {k: meta.get(k) for k in expect}
        if got != expect or "id" not in table.column_names:
            raise StoreError(f"{p} is not listed in {MANIFEST_NAME} and was not written for this store "
                             f"(teacher {got['fingerprint']!r}, expected {self.fingerprint!r}). Move it out of "
                             f"{self.path} and open the store again.")
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        keep = _first_new(ids, self._index)
        if not keep.any():
            p.unlink()  # everything in it is stored already (e.g. a merge that was not committed)
            return
        share = keep.sum() / len(ids)
        if not keep.all():
            table = table.filter(pa.array(keep))
            _atomic_write(p, self._encode_bytes(table, spent=float(meta.get("spent", 0)) * share,
                                                calls=int(meta.get("calls", 0))))
        self._manifest["shards"].append({"file": p.name, "rows": table.num_rows, "sha256": _sha256_file(p)})
        self._manifest["spent"] += float(meta.get("spent", 0)) * share
        self._manifest["n_calls"] += int(meta.get("calls", 0))
        self._add_to_index(ids[keep].tolist(), p)
        self._update_offsets()

    def _check(self, probs, ids: np.ndarray, name: str) -> np.ndarray:
        probs = validate_probabilities(probs, self.n_classes, name=name)
        if len(probs) != len(ids):
            raise TeacherOutputError(f"{name}: {len(probs)} rows for {len(ids)} ids. Return one row per input, "
                                     "in input order; nothing was stored for this batch.")
        return probs

    def _encode(self, ids: np.ndarray, probs: np.ndarray) -> pa.Table:
        dtype = PRECISIONS[self.precision]
        np_dtype = np.float16 if self.precision == "float16" else np.float32
        cols = {"id": pa.array(ids.tolist(), pa.string())}
        if self.top_k is None:
            cols["probs"] = pa.FixedSizeListArray.from_arrays(
                pa.array(probs.astype(np_dtype).reshape(-1), dtype), self.n_classes)
        else:
            idx, val = dense_to_topk(probs, self.top_k)
            offsets = pa.array(np.arange(0, idx.size + 1, idx.shape[1], dtype=np.int32))
            cols["topk_index"] = pa.ListArray.from_arrays(offsets, pa.array(idx.reshape(-1), pa.int32()))
            cols["topk_prob"] = pa.ListArray.from_arrays(offsets, pa.array(val.astype(np_dtype).reshape(-1), dtype))
        cols["teacher"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(len(ids), np.int32)),
                                                         pa.array([self.fingerprint]))
        return pa.table(cols)

    def _encode_bytes(self, table: pa.Table, *, spent: float, calls: int) -> bytes:
        meta = {"fingerprint": self.fingerprint, "n_classes": str(self.n_classes), "top_k": str(self.top_k),
                "precision": self.precision, "temperature": repr(self.temperature),
                "format": str(FORMAT_VERSION), "spent": repr(float(spent)), "calls": str(int(calls))}
        buf = io.BytesIO()
        pq.write_table(table.replace_schema_metadata(meta), buf)
        return buf.getvalue()

    def _write_shard(self, table: pa.Table, *, spent: float, calls: int) -> dict:
        numbers = [_shard_number(p.name) for p in self.path.iterdir()]
        name = f"{SHARD_PREFIX}{max([n for n in numbers if n is not None], default=0) + 1:06d}{SHARD_SUFFIX}"
        data = self._encode_bytes(table, spent=spent, calls=calls)
        _atomic_write(self.path / name, data)
        return {"file": name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest()}

    def _append(self, ids: np.ndarray, probs: np.ndarray, *, spent: float, calls: int) -> None:
        entry = self._write_shard(self._encode(ids, probs), spent=spent, calls=calls)
        self._manifest["shards"].append(entry)
        self._manifest["spent"] += spent
        self._manifest["n_calls"] += calls
        self._commit()
        self._add_to_index(ids.tolist(), entry["file"])
        self._update_offsets()
        self._merge(final=False)

    def _merge(self, *, final: bool) -> None:
        """Rewrite each run of consecutive small shards that adds up to `shard_size` rows as one
        shard (with `final`, also the last, short run). New shards are committed before the old
        files are deleted, so a kill at any point leaves only duplicates that the next open drops."""
        shards = self._manifest["shards"]
        groups = _merge_groups([s["rows"] for s in shards], self.shard_size, final=final)
        if not groups:
            return
        new, old = list(shards), []
        for first, last in reversed(groups):  # reversed so earlier positions stay valid
            table = pa.concat_tables([self._read_shard(i) for i in range(first, last)])
            old += [s["file"] for s in shards[first:last]]
            new[first:last] = [self._write_shard(table, spent=0.0, calls=0)]
        self._manifest["shards"] = new
        self._commit()
        self._update_offsets()
        for name in old:
            (self.path / name).unlink()

    def _read_shard(self, s: int) -> pa.Table:
        return pq.read_table(self.path / self._manifest["shards"][s]["file"])

    def _decode(self, table: pa.Table) -> np.ndarray:
        n, C = table.num_rows, self.n_classes
        if n == 0:
            return np.zeros((0, C), np.float32)
        if self.top_k is None:
            probs = table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            probs = probs.reshape(n, C).astype(np.float32)
            # float16 rounding leaves rows off one by up to ~1e-3; renormalise so losses see distributions
            return probs / probs.sum(axis=1, keepdims=True) if self.precision == "float16" else probs
        idx = table.column("topk_index").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        val = table.column("topk_prob").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        return topk_to_dense(idx, val.astype(np.float32), C, name=f"stored top-k outputs in {self.path}")

    def _ids_and_probs(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(table.column("id").to_pylist(), dtype=str), self._decode(table)


def _merge_groups(rows: list[int], target: int, *, final: bool) -> list[tuple[int, int]]:
    """[first, last) index ranges of consecutive shards below `target` rows that together reach it
    (with `final`, also a trailing short run); only ranges of two or more shards are returned."""
    groups, first, total = [], None, 0
    for i, r in enumerate(rows + [target]):  # the sentinel closes a trailing run
        sentinel = i == len(rows)
        if r >= target or sentinel:
            if first is not None and i - first > 1 and (final or total >= target):
                groups.append((first, i))
            first, total = None, 0
            continue
        first = i if first is None else first
        total += r
        if total >= target:
            if i + 1 - first > 1:
                groups.append((first, i + 1))
            first, total = None, 0
    return groups


def _read_manifest(path: Path) -> dict | None:
    p = path / MANIFEST_NAME
    if not p.exists():
        return None
    try:
        m = json.loads(p.read_text())
    except json.JSONDecodeError as e:
        raise StoreError(f"{p} is not valid JSON ({e}). Restore it from a backup, or delete the store folder "
                         "to relabel.") from None
    if m.get("format") != FORMAT_VERSION:
        raise StoreError(f"{p} has store format {m.get('format')!r}; this mentor reads format {FORMAT_VERSION}. "
                         "Upgrade mentor, or delete the store folder to relabel.")
    return m
