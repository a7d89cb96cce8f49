"""TeacherStore: the folder of Parquet shards and its manifest (see the package docstring)."""

from __future__ import annotations

import concurrent.futures
import contextlib
import copy
import errno
import functools
import hashlib
import json
import os
import sys
import time
import uuid
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from ..checks import dense_to_topk, topk_to_dense, validate_probabilities
from ..errors import ConfigError, DataError, StoreError, TeacherOutputError
from . import extras as xcols
from . import rowlog
from .files import (LOCK_NAME, FolderLock, _atomic_write, _fsync_dir, _sha256_file, file_sig,  # noqa: F401
                    folder_lock, read_arrow)
from .ids import IdIndex, RepeatedId
from .ledger import LEDGER_NAME, Ledger, release

FORMAT_VERSION = 1
MANIFEST_NAME = "_manifest.json"
QUARANTINE = "_quarantine"  # damaged shards are moved here (Parquet readers skip `_` folders)
SHARD_PREFIX, SHARD_SUFFIX = "shard-", ".parquet"
EVENTS_HELD = 4096  # a run that has seen this many shard events writes the manifest at its next flush
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


def _first_new(ids: np.ndarray, stored: IdIndex) -> np.ndarray:
    """Mask of ids not in `stored` and not repeated earlier in `ids`: each is paid for once."""
    lst = ids.tolist()
    mask = ~stored.contains(lst)
    if len(set(lst)) != len(lst):  # repeats within the request: keep the first of each
        first = np.zeros(len(lst), bool)
        first[np.unique(ids, return_index=True)[1]] = True
        mask &= first
    return mask


def _ask(teacher, inputs, ids):
    """One teacher call: `teacher.answer` (probabilities, extras, real cost) where it has one; a
    teacher with only `predict_proba` (users' own) answers probabilities alone."""
    answer = getattr(teacher, "answer", None)
    return answer(inputs, ids) if callable(answer) else teacher.predict_proba(inputs, ids)


def _unpack(got) -> tuple:
    """(probs, extras, cost) of what a call returned: a TeacherAnswer, or bare probabilities."""
    if hasattr(got, "probs"):
        return got.probs, getattr(got, "extras", None) or {}, getattr(got, "cost", None)
    return got, {}, None


def _take(inputs, mask: np.ndarray):
    """The rows of `inputs` under `mask`; a list becomes an array (object dtype for text)."""
    if isinstance(inputs, (list, tuple)):
        inputs = np.asarray(inputs, dtype=object if inputs and isinstance(inputs[0], str) else None)
    return inputs[np.flatnonzero(mask)]


# ---------------------------------------------------------------------------------------- the store

class CallNotSent(Exception):
    """Raised by a teacher that refuses a call before sending anything (e.g. a spending cap), so
    the store takes the call off the bill instead of charging its estimate as a lost call."""


class StoreWarning(UserWarning):
    """The store repaired itself (rebuilt its manifest) or set a damaged shard aside."""


class TeacherStore:
    """Append-only, crash-safe store of one teacher's class probabilities, keyed by example id.

    `path` is created if needed. Opening an existing store with a different fingerprint,
    n_classes, top_k, precision or temperature raises StoreError and changes nothing.
    `top_k` keeps only the k largest probabilities (big label spaces); reading then gives the
    dense reconstruction of `checks.topk_to_dense`. `shard_size` is the target rows per shard.
    `verify` checks every shard's sha256 against the manifest when the store is opened (one read
    of each file, which also gives its ids); `verify=False` checks sizes only (huge stores), and
    `verify()` can run the full check later. `lease_timeout_s`: how long a call sent by a process
    on another machine (shared folder) keeps its ids from being sent by others.
    """

    def __init__(self, path, *, fingerprint: str, n_classes: int, top_k: int | None = None,
                 precision: str = "float32", temperature: float = 1.0, shard_size: int = 4096,
                 verify: bool = True, lease_timeout_s: float = 3600.0):
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
        self.shard_size, self.verify_on_open = int(shard_size), bool(verify)
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            if not self.path.is_dir():
                raise StoreError(f"cannot create the store folder {self.path}: {e.strerror or e}. Choose a "
                                 "writable location (store.path), or create the folder.") from None
        if not self.path.is_dir():
            raise StoreError(f"the store path {self.path} is a file, not a folder. Choose another store.path.")
        self.writable = os.access(self.path, os.W_OK)
        self._ledger = Ledger(self.path, lease_timeout_s=lease_timeout_s)
        self._manifest: dict = {}
        self._sig = None  # (inode, size, mtime) of the manifest we loaded
        self._index = IdIndex()  # id -> position in stored order (compact: ids.py)
        self._part_of_row = None  # the part (shard or frame) of each stored row, for reads
        self._checked: dict[str, tuple] = {}  # shard -> (file sig, sha256, ids as Arrow strings) once verified
        self._max_number = 0
        self._small: dict[str, pa.Table] = {}  # small shards this object wrote, kept for the next merge
        self._frames: dict[str, pa.Table] = {}  # row-log frames (pending rows) as tables, once verified
        self._log: tuple[str, int] | None = None  # the row log this object appends to, and its open fd
        self._applied = 0  # ledger shard events already reflected in self._manifest
        self._scan_mark = None  # what `_maybe_leftovers` saw at the last scan (None: scan)
        self._dirty = False  # shards committed in the ledger but not yet in the manifest file
        self._lock = FolderLock(self.path, write=self.writable)
        with self._locked():
            self._load()

    @classmethod
    def open(cls, path, **kwargs) -> "TeacherStore":
        """Open an existing store with the settings it was written with (its manifest, or if that
        was lost, its ledger or shards)."""
        settings = _stored_settings(Path(path))
        if settings is None:
            raise StoreError(f"no teacher-output store at {path} ({MANIFEST_NAME} not found). Run labeling "
                             "first (`mentor label`, or TeacherStore(path, fingerprint=..., n_classes=...).label(...)).")
        return cls(path, **settings, **kwargs)

    @staticmethod
    def exists(path) -> bool:
        """Whether `path` holds a store (its manifest, ledger or shards)."""
        return _stored_settings(Path(path), peek=True) is not None

    def close(self) -> None:
        """Close the ledger, row log and lock files this object keeps open (it reopens them if used again)."""
        self._ledger.close()
        self._close_log()
        self._lock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return len(self._index)

    def __repr__(self) -> str:
        return f"TeacherStore({str(self.path)!r}, fingerprint={self.fingerprint!r}, rows={len(self)})"

    @property
    def manifest(self) -> dict:
        """The manifest as this process sees it (the file catches up at the end of each label/write)."""
        m = copy.deepcopy(self._manifest)
        m.update(rows=len(self), spent=self.spent, n_calls=self.n_calls)
        return m

    @property
    def spent(self) -> float:
        """Money sent to the teacher for this store: every call, answered or not (the ledger's sum)."""
        return self._ledger.spent if self._ledger.exists() else float(self._manifest.get("spent", 0.0))

    @property
    def n_calls(self) -> int:
        """Teacher calls sent, answered or not."""
        return self._ledger.n_calls if self._ledger.exists() else int(self._manifest.get("n_calls", 0))

    def stored_ids(self) -> set[str]:
        return set(self._index.ids().to_pylist())

    def _positions(self, ids: np.ndarray) -> np.ndarray:
        """Stored position of each id, -1 where not stored."""
        return self._index.lookup(ids)

    def missing(self, ids) -> np.ndarray:
        """Ids not stored yet, in the given order."""
        ids = _as_ids(ids)
        return ids[self._positions(ids) < 0]

    def read(self, ids=None) -> np.ndarray:
        """Dense float32 (len(ids), n_classes) probabilities aligned to `ids` (all rows if None)."""
        if ids is None:
            return self.read_all()[1]
        ids = _as_ids(ids)
        if not len(ids):
            return np.zeros((0, self.n_classes), np.float32)
        cols = ["probs"] if self.top_k is None else ["topk_index", "topk_prob"]  # ids are not needed
        n_shards = len(self._manifest["shards"])
        if n_shards and 2 * len(ids) >= len(self):  # most of the store: read every shard while ids are looked up
            paths = [str(self._verified_path(s)) for s in range(n_shards)]
            with concurrent.futures.ThreadPoolExecutor(1) as pool:  # Arrow reads without holding the GIL
                shards = pool.submit(lambda: ds.dataset(paths, format="parquet").to_table(columns=cols))
                pos = self._positions(ids)
                self._require_stored(ids, pos)
                parts = [shards.result()] + [self._read_part(i).select(cols) for i in range(n_shards, len(self._parts()))]
            return np.take(self._decode(parts[0] if len(parts) == 1 else pa.concat_tables(parts)), pos, axis=0)
        needed, rows = self._locate(ids)
        shards, frames = needed[needed < n_shards], needed[needed >= n_shards]
        # the shards holding these ids, verified, in one multi-threaded read; rows not yet flushed
        # from the row log after them; then one decode
        parts = [ds.dataset([str(self._verified_path(int(s))) for s in shards], format="parquet").to_table(
            columns=cols)] if len(shards) else []
        parts += [self._read_part(int(s)).select(cols) for s in frames]
        # np.take, not fancy indexing: an order of magnitude faster for many rows of a 2-d array
        return np.take(self._decode(parts[0] if len(parts) == 1 else pa.concat_tables(parts)), rows, axis=0)

    @property
    def extra_columns(self) -> list[str]:
        """Names of the extra columns teachers returned beside the probabilities (`read_extras`)."""
        return list(dict.fromkeys(c for e in self._parts() for c in e.get("extras", ())))

    def read_extras(self, ids=None, columns=None) -> pa.Table:
        """The extras stored with `ids` (all rows, in stored order, if None) as an Arrow table
        aligned to them: an `id` column, then `columns` (default: all of `extra_columns`); null
        where a call returned no such value. `.to_pandas()` or `.column(name)` to use it."""
        have = self.extra_columns
        cols = have if columns is None else [columns] if isinstance(columns, str) else list(columns)
        unknown = [c for c in cols if c not in have]
        if unknown:
            raise StoreError(f"no extra column {', '.join(map(repr, unknown))} in the store at {self.path}; it has "
                             f"{', '.join(map(repr, have)) if have else 'none (its teacher returned no extras)'}. "
                             "Ask for one of those (store.extra_columns lists them).")
        ids = self._index.ids().to_numpy().astype(str) if ids is None else _as_ids(ids)  # index order = stored order
        needed, rows = self._locate(ids)
        id_col = pa.array(ids, pa.string())
        if not cols:
            return pa.table({"id": id_col})
        parts, all_parts, n_shards = [], self._parts(), len(self._manifest["shards"])
        for s in needed.tolist():
            entry = all_parts[s]
            mine = [c for c in cols if c in entry.get("extras", ())]
            if not mine:
                parts.append(pa.table({"_rows": pa.nulls(entry["rows"])}))
            else:
                parts.append(pq.read_table(self._verified_path(s), columns=mine) if s < n_shards else
                             self._read_part(s).select(mine))
        parts = xcols.conform(parts, cols)
        table = pa.concat_tables(parts).take(pa.array(rows)) if parts else pa.table(
            [pa.array([], pa.null())] * len(cols), names=cols)
        return table.add_column(0, "id", id_col)

    def _locate(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(the parts holding `ids` (shards, then row-log frames), in stored order; each id's row in
        those parts concatenated). StoreError if any id is not stored."""
        pos = self._positions(ids)
        self._require_stored(ids, pos)
        if self._part_of_row is None:  # the part of every stored row, until the store changes
            sizes = np.diff(self._offsets)
            self._part_of_row = np.repeat(np.arange(len(sizes), dtype=np.int32), sizes)
        shard_of = self._part_of_row[pos]
        needed = np.flatnonzero(np.bincount(shard_of, minlength=len(self._offsets) - 1))
        if len(needed) == len(self._offsets) - 1:
            return needed, pos  # every part: rows are at their stored positions
        skipped = np.zeros(len(self._offsets) - 1, np.int64)  # rows of the parts not read before each part
        skipped[needed] = self._offsets[needed] - np.concatenate([[0], np.cumsum(np.diff(self._offsets)[needed])[:-1]])
        return needed, pos - skipped[shard_of]

    def _require_stored(self, ids: np.ndarray, pos: np.ndarray) -> None:
        if (pos < 0).any():
            gone = ids[pos < 0]
            note = self._quarantine_note()
            raise StoreError(
                f"{len(gone)} of {len(ids)} requested ids have no stored teacher output (e.g. {gone[:3].tolist()}) "
                f"in {self.path}. " + (note or "Run labeling for them first (store.label(teacher, batches) "
                                               "or `mentor label`)."))

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
        keep = ["id", "probs"] if self.top_k is None else ["id", "topk_index", "topk_prob"]
        for s in range(len(self._parts())):
            pending.append(self._read_part(s).select(keep))
            n_pending += pending[-1].num_rows
            while n_pending >= batch_rows:
                table = pa.concat_tables(pending)
                yield self._ids_and_probs(table.slice(0, batch_rows))
                pending, n_pending = [table.slice(batch_rows)], n_pending - batch_rows
        if n_pending:
            yield self._ids_and_probs(pa.concat_tables(pending))

    def verify(self) -> None:
        """Check every shard against the sha256 in the manifest now (bit rot, hand edits); a damaged
        shard is moved to `_quarantine/` and StoreError names it and the paid rows it held."""
        with self._locked():
            bad = self._verify_all()
        if bad:
            raise StoreError(" ".join(self._damage_message(e, why, moved=self.writable) for e, why in bad))

    def _verify_all(self) -> list:
        """Under the lock: re-hash every shard, set damaged ones aside; returns [(entry, why)]
        (the caller reports them)."""
        self._sync()
        self._checked.clear()
        self._frames.clear()
        bad = [(e, why) for e in self._parts() if (why := self._check_shard(e, full=True)[1])]
        if bad and self.writable:
            self._set_aside(bad, warn=False)
        return bad

    def status(self) -> dict:
        """What the store holds and what it cost: rows, shards, the bill by outcome, calls in flight
        (live leases of running processes) and quarantined shards."""
        with self._locked():
            self._sync()
            live = self._ledger.live_leases(record=self.writable)
        return {"path": str(self.path), "fingerprint": self.fingerprint, "rows": len(self),
                "shards": len(self._manifest["shards"]), "writable": self.writable,
                "unflushed_rows": sum(f["rows"] for f in self._manifest["pending"]),
                "ledger": self._ledger.exists(), **self._ledger.summary(live),
                "spent": self.spent, "calls": self.n_calls,
                "quarantined": [{"shard": k, "rows": v, "where": str(self.path / QUARANTINE / k)}
                                for k, v in self._ledger.quarantined.items()]}

    def repair(self, *, repay: bool = False) -> dict:
        """Verify every shard (quarantining damaged ones), put back quarantined shards restored
        from a backup (their checksum matches again), and with `repay=True` accept paying again
        for the rows of the shards still quarantined, so that `label()` asks for them."""
        self._require_writable("repair")
        with self._locked():
            bad = self._verify_all()
            restored = []
            for rec in list(self._ledger.quarantine_records()):
                src = self.path / QUARANTINE / rec["shard"]
                if rec.get("sha256") and src.exists() and _sha256_file(src) == rec["sha256"]:
                    dest = self._next_shard_name()
                    os.replace(src, self.path / dest)
                    self._adopt(self.path / dest)
                    self._ledger.append({"e": "resolved", "shards": [rec["shard"]], "how": f"restored as {dest}"})
                    restored.append(rec["shard"])
            repaid = sorted(self._ledger.quarantined) if repay else []
            if repaid:
                self._ledger.append({"e": "resolved", "shards": repaid, "how": "repay"})
            self._commit()
        return {"damaged": [e["file"] for e, _ in bad], "restored": restored, "repay": repaid,
                "quarantined": dict(self._ledger.quarantined)}

    # ------------------------------------------------------------------------------------ writing

    def label(self, teacher, batches: Iterable, *, progress: bool = False, pool=None,
              poll_s: float = 0.1, checkpoint: bool = True) -> LabelReport:
        """Ask `teacher` for every id in `batches` not stored yet, storing each call's outputs.

        `batches` yields (ids, inputs) chunks, so a pool larger than memory can stream from disk;
        each chunk's new ids go to the teacher in one call. Bad teacher output raises
        TeacherOutputError; everything stored before it stays.

        The bill first: each call's ids and cost go to the ledger (fsynced) before it is sent; that
        entry is also a lease, so another process labeling the same store skips those ids while
        the call runs, and comes back for them (every `poll_s` s) if the call is lost. `pool`
        (`mentor.teachers.pools`: threads, or Ray workers) keeps several calls running at once. Each
        call is stored as soon as it returns, and when a call fails the others in flight are
        still stored before the error is raised.

        With `checkpoint=False` the run ends without writing its rows as a Parquet shard: they stay
        in the row log (fsynced, committed by the ledger, readable, adopted by the next open) until
        `shard_size` rows add up or `checkpoint()` is called. For a service that stores one answer
        per request, where a shard per request would leave thousands of tiny files.
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
        self._require_writable("label")
        price = float(getattr(teacher, "cost_per_example", 0.0) or 0.0)
        tally = {"requested": 0, "new": 0, "cost": 0.0}
        start, in_flight, deferred, errors = time.perf_counter(), {}, [], []
        bill_at_start = pool is not None and getattr(pool, "runs_before_hook", False)

        def claim(ids, inputs):
            """Under the lock: lease the ids not stored and not leased, recording the call in the ledger."""
            with self._locked():
                self._sync(scan=self._maybe_leftovers())
                self._refuse_if_quarantined()
                mask = _first_new(ids, self._index)
                leases = self._ledger.live_leases() if mask.any() else {}
                if leases:  # ids in flight: ours are stored when our call returns, theirs are deferred
                    ours, mine, theirs = {c for c, _ in in_flight.values()}, set(), set()
                    for c, r in leases.items():
                        (mine if c in ours else theirs).update(r["ids"])
                    held = mask & np.fromiter((x in theirs for x in ids.tolist()), bool, len(ids))
                    if held.any():
                        deferred.append((ids[held], _take(inputs, held)))
                    mask &= ~held & np.fromiter((x not in mine for x in ids.tolist()), bool, len(ids))
                if not mask.any():
                    return None, None, None
                todo = ids[mask]
                try:  # a call queued in a thread pool is leased now and billed when a thread starts it
                    call = (self._ledger.lease(todo.tolist()) if bill_at_start
                            else self._ledger.send(todo.tolist(), len(todo) * price))
                except OSError as e:
                    raise self._io_error(e, "record a teacher call in the ledger",
                                         "Nothing was sent for it, so nothing was paid.") from None
            tally["cost"] += len(todo) * price
            return call, todo, _take(inputs, mask)

        def store(call, todo, answer):
            """Get one call's answer (`answer()`) and append it; the call ran unlocked, so another
            process may have stored some of its ids meanwhile. Whatever fails, the ledger says so,
            with the call's real cost where the teacher told it."""
            cost = None
            try:
                probs, extras, told = _unpack(answer())
                cost = self._check_cost(told, f"teacher {fp}")
                probs = self._check(probs, todo, f"teacher {fp} outputs")
                extras = xcols.check(extras, len(todo), f"teacher {fp} extras")
                with self._locked():
                    changed = self._sync(scan=False)  # unchanged: nobody stored anything, our lease held
                    keep = _first_new(todo, self._index) if changed else np.ones(len(todo), bool)
                    if not keep.all():
                        extras = {k: v.filter(pa.array(keep)) for k, v in extras.items()}
                    self._append(todo[keep], probs[keep], extras, calls=1, call=call, cost=cost,
                                 spent=len(todo) * price if cost is None else cost)
            except BaseException as e:
                if isinstance(e, CallNotSent):  # refused before anything went out (a spending cap): no bill
                    cost = 0.0
                    tally["cost"] -= len(todo) * price
                self._record_failure(call, e, cost)
                raise
            finally:
                release(call)
            if cost is not None:  # the bill holds what the call really cost, not the estimate
                tally["cost"] += cost - len(todo) * price
            tally["new"] += int(keep.sum())
            if progress:
                print(f"\rlabel: {tally['new']} new, {tally['requested'] - tally['new']} skipped, "
                      f"cost {tally['cost']:g}", end="", file=sys.stderr)

        def collect(return_when):
            done, _ = concurrent.futures.wait(list(in_flight), return_when=return_when)
            for fut in done:
                call, todo = in_flight.pop(fut)
                try:
                    store(call, todo, fut.result)
                except Exception as e:  # keep storing the other calls; raise the first error after
                    errors.append(e)

        def one_pass(chunks, first: bool):
            for chunk in chunks:
                try:
                    ids, inputs = chunk
                except (TypeError, ValueError):
                    raise DataError("label() expects batches of (ids, inputs) pairs; got "
                                    f"{type(chunk).__name__}. Yield (ids, inputs) for each chunk.") from None
                ids = _as_ids(ids)
                if len(inputs) != len(ids):
                    raise DataError(f"a batch has {len(ids)} ids but {len(inputs)} inputs; "
                                    "yield one input per id.")
                if first:
                    tally["requested"] += len(ids)
                call, todo, sub = claim(ids, inputs)
                if call is None:
                    continue
                if pool is None:
                    store(call, todo, lambda: _ask(teacher, sub, todo))
                    continue
                try:
                    if bill_at_start:
                        start_call = functools.partial(self._start_call, call, todo.tolist(), len(todo) * price)
                        in_flight[pool.submit(sub, todo, before=start_call)] = (call, todo)
                    else:
                        in_flight[pool.submit(sub, todo)] = (call, todo)
                except BaseException as e:
                    self._record_failure(call, e)
                    release(call)
                    raise
                while len(in_flight) >= pool.max_in_flight and not errors:
                    collect(concurrent.futures.FIRST_COMPLETED)
                if errors:
                    return

        try:
            one_pass(batches, True)
            told = False
            while deferred and not errors:  # ids another process had in flight: store them once it is done
                if in_flight:
                    collect(concurrent.futures.ALL_COMPLETED)
                    continue
                if not told:  # a wait with no word looks like a hang
                    told = True
                    warnings.warn(
                        f"{sum(len(d[0]) for d in deferred)} ids are being labeled by another process on {self.path}; "
                        "waiting for its calls to finish so they are not paid twice (`mentor store status` shows who "
                        "holds them; a dead process's calls are released, a live one's when it ends).",
                        StoreWarning, stacklevel=2)
                time.sleep(poll_s)
                again, deferred[:] = list(deferred), []
                one_pass(again, False)
        finally:  # whatever stops the loop (an error, a bad batch), calls already paid for are stored
            if in_flight:
                collect(concurrent.futures.ALL_COMPLETED)
            if checkpoint:
                with contextlib.suppress(OSError):  # a full disk: the ledger already holds every commit
                    self._checkpoint()
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
        self._require_writable("write")
        with self._locked():
            self._sync()
            mask = _first_new(ids, self._index)
            ids, probs = ids[mask], probs[mask]
            if len(ids) and self._manifest["pending"]:  # rows are stored in order: the row log's come first
                try:
                    self._flush(final=True)
                except OSError as e:
                    raise self._io_error(e, "write a shard", "Nothing was written.") from None
            for i in range(0, len(ids), self.shard_size):
                try:
                    self._append(ids[i:i + self.shard_size], probs[i:i + self.shard_size], spent=0.0, calls=0)
                except OSError as e:
                    raise self._io_error(e, "write imported outputs", f"{i} of {len(ids)} new rows were stored.") \
                        from None
            if self._dirty:
                self._commit()
        return len(ids)

    def compact(self) -> None:
        """Merge small shards into shards of about `shard_size` rows; atomic, stored order kept."""
        self._require_writable("compact")
        with self._locked():
            self._sync()
            self._flush(final=True)
            self._merge(final=True)
            if self._dirty:
                self._commit()

    # ------------------------------------------------------------------------------------ internals

    def _new_manifest(self) -> dict:
        return {"format": FORMAT_VERSION, **{k: getattr(self, k) for k in SETTINGS},
                "shard_size": self.shard_size, "created": datetime.now(timezone.utc).isoformat(),
                "shards": [], "pending": [], "rows": 0, "spent": 0.0, "n_calls": 0}

    def _locked(self):
        return self._lock

    def _require_writable(self, what: str) -> None:
        if not self.writable:
            raise StoreError(f"the store at {self.path} is read-only, so it cannot {what}: its {len(self)} stored "
                             "rows are kept and can be read; nothing was sent to the teacher. Make the folder "
                             "writable (e.g. chmod -R u+w, or remount it read-write), or copy it and point "
                             "store.path at the copy.")

    def _io_error(self, e: OSError, doing: str, kept: str) -> StoreError:
        fix = {errno.ENOSPC: "free space on that disk", errno.EDQUOT: "raise your disk quota or free space",
               errno.EROFS: "make the folder writable", errno.EACCES: "make the folder writable",
               errno.EPERM: "make the folder writable"}.get(e.errno, "check the folder")
        return StoreError(f"could not {doing} in {self.path}: {e.strerror or e}. {kept} {len(self)} rows stored "
                          f"before are kept. Fix: {fix}, then rerun: stored ids are never sent again.")

    def _start_call(self, call: str, ids: list, cost: float) -> None:
        """In a pool thread, just before the call goes out: put the leased call on the bill."""
        try:
            with self._locked():
                self._ledger.send(ids, cost, call=call)
        except OSError as e:
            raise self._io_error(e, "record a teacher call in the ledger",
                                 "Nothing was sent for it, so nothing was paid.") from None

    def _record_failure(self, call: str, e: BaseException, cost: float | None = None) -> None:
        """The call's outcome when its answer is not stored (best effort: the disk may be full);
        `cost`: what it really cost, where the teacher answered and said so."""
        with contextlib.suppress(OSError), self._locked():
            self._ledger.refresh()
            if call not in self._ledger.finished:
                self._ledger.append({"e": "failed", "call": call, "error": f"{type(e).__name__}: {e}"[:500],
                                     **({} if cost is None else {"cost": cost})})

    @staticmethod
    def _check_cost(cost, name: str) -> float | None:
        """A call's real cost as the teacher reported it: None (unknown), or a finite number >= 0."""
        if cost is None:
            return None
        try:
            value = float(cost)
        except (TypeError, ValueError):
            value = float("nan")
        if not (np.isfinite(value) and value >= 0) or isinstance(cost, bool):
            raise TeacherOutputError(f"{name} reported a call cost of {cost!r}; a cost is a finite number >= 0 "
                                     "(or None when unknown). Fix the teacher's price settings; the call's "
                                     "estimated cost is on the bill.")
        return value

    def _commit(self) -> None:
        """Atomically rewrite the manifest; this is the moment a shard becomes part of the store."""
        m = self._manifest
        m["rows"] = sum(s["rows"] for s in self._parts())
        self._ledger.sync()  # commit lines written without fsync must be durable before the manifest cites them
        m["spent"], m["n_calls"] = self.spent, self.n_calls
        m["updated"] = datetime.now(timezone.utc).isoformat()
        m["ledger_pos"] = self._ledger.position  # every shard committed in the ledger so far is listed
        _atomic_write(self.path / MANIFEST_NAME, json.dumps(m, separators=(",", ":")).encode())
        self._sig = file_sig(self.path / MANIFEST_NAME)
        self._dirty = False
        self._ledger.forget_events(m["ledger_pos"], self._applied)

    def checkpoint(self) -> None:
        """Write the rows still in the row log as a Parquet shard, and the manifest (what every
        `label` run does at its end unless called with `checkpoint=False`)."""
        self._require_writable("checkpoint")
        self._checkpoint()

    def _checkpoint(self) -> None:
        """End of a run: write the row log's rows as a shard (so Parquet readers see every row), and
        the manifest if anything was committed (in the ledger) since it was last written."""
        if self._dirty or self._manifest["pending"]:
            with self._locked():
                self._sync(scan=False)
                self._flush(final=True)
                if self._dirty:
                    self._commit()

    def _scan(self) -> list[Path]:
        """Leftovers of a crashed writer (.tmp files, unlisted shards, row logs holding frames that
        were never committed or no longer needed); updates the highest shard number."""
        listed = {s["file"] for s in self._manifest.get("shards", [])}
        stray = []
        for name in os.listdir(self.path):  # once per teacher call: names only, a stat for row logs
            if name.endswith(".tmp"):
                stray.append(self.path / name)
            elif name.startswith(SHARD_PREFIX):
                n = _shard_number(name)
                if n is not None:
                    self._max_number = max(self._max_number, n)
                    if name not in listed:
                        stray.append(self.path / name)
            elif rowlog.is_log(name):
                with contextlib.suppress(FileNotFoundError):
                    if rowlog.has_tail(self.path / name, self._ledger.frame_end.get(name, 0)):
                        stray.append(self.path / name)  # it holds a frame never committed
        return stray

    def _maybe_leftovers(self) -> bool:
        """Whether a crashed writer may have left something `_scan` must find since this object
        last looked: only another process can (this one's own calls end with their outcome), and
        one that sends a call records it in the ledger first. So: the first look after a load, a
        ledger line this object did not write, a call in flight that is not this process's (a dead
        one's frame may be in a row log), or a change of the folder's names. A labeling process
        alone on its store skips the listing on most calls."""
        self._ledger.refresh()  # first: another process's call must be seen before this look, not after
        mark = (self._ledger.lines_read, os.stat(self.path).st_mtime_ns)
        if mark == self._scan_mark and not self._ledger.open_elsewhere():
            return False
        self._scan_mark = mark
        return True

    def _sync(self, *, scan: bool = True) -> bool:
        """Catch up with other processes (rows they committed in the ledger, a manifest they
        rewrote) and, with `scan`, with leftovers of crashed writers. True if anything changed."""
        self._ledger.refresh()
        if file_sig(self.path / MANIFEST_NAME) != self._sig:
            self._load()
            return True
        changed = self._apply_new()
        if scan and self._scan():
            self._load()
            return True
        return changed

    def _apply_new(self) -> bool:
        """Apply the ledger's shard events since the last look (another process's calls)."""
        new = self._ledger.events_since(self._applied)
        if not new:
            return False
        if any(r["e"] in ("merge", "quarantine", "flush") for r in new):
            self._load()  # another process rewrote the shard list
            return True
        known = {_key(e) for e in self._parts()}
        fresh = [r.get("frame") or r["entry"] for r in new]
        checked = [(e, *self._check_shard(e)) for e in fresh if _key(e) not in known]
        if any(why for _, _, why in checked):
            self._load()  # sets the damaged ones aside
            return True
        reindex = False
        for entry, ids, _ in checked:
            if "log" in entry:
                self._manifest["pending"].append(dict(entry))
            else:
                reindex |= bool(self._manifest["pending"])  # a shard goes before the row log's rows
                self._manifest["shards"].append(dict(entry))
            if not reindex:
                self._add_to_index(ids, _key(entry))
        self._applied = self._ledger.n_events
        self._dirty = True
        if reindex:
            self._load_index()
        self._update_offsets()
        return True

    def _load(self) -> None:
        """Read (or rebuild) the manifest, verify and index the shards, set damaged ones aside,
        delete leftover .tmp files and adopt orphan shards."""
        had_ledger = self._ledger.exists()
        self._ledger.refresh()
        self._scan_mark = None
        self._small.clear()
        m = self._read_or_rebuild()
        mine = {k: getattr(self, k) for k in SETTINGS}
        for theirs, where in ((m, MANIFEST_NAME), (self._ledger.header or mine, LEDGER_NAME)):
            theirs = {k: theirs.get(k) for k in SETTINGS}
            if theirs["fingerprint"] != mine["fingerprint"]:
                raise StoreError(
                    f"the store at {self.path} holds outputs of teacher {theirs['fingerprint']!r}, not of "
                    f"{mine['fingerprint']!r} ({where}). Use another store path for this teacher, or delete the "
                    "folder to relabel. Nothing was changed.")
            if theirs != mine:
                diff = ", ".join(f"{k}={theirs[k]!r} (asked {mine[k]!r})" for k in SETTINGS if theirs[k] != mine[k])
                raise StoreError(
                    f"the store at {self.path} was written with {diff}. Open it with TeacherStore.open(path) to "
                    "use its settings, use another store path, or delete the folder to relabel. Nothing was changed.")
        self._manifest = m
        m.setdefault("pending", [])
        dirty = rebuilt = m.pop("_rebuilt", False)
        if self.writable:
            if not had_ledger:  # the first line names the store; older stores carry their spend over
                self._ledger.append({"e": "store", **mine})
                if m.get("spent") or m.get("n_calls"):
                    self._ledger.append({"e": "carried", "cost": float(m.get("spent", 0.0)),
                                         "calls": int(m.get("n_calls", 0)), "why": "spent before the ledger"})
            for p in self.path.iterdir():
                if p.name.endswith(".tmp"):
                    p.unlink()
        # what the ledger recorded after the manifest was written (everything, if it was rebuilt)
        after = 0 if rebuilt else m.get("ledger_pos", 0)
        events = self._ledger.shard_events_after(after)
        if events:
            m["shards"], m["pending"] = _replay(m["shards"], m["pending"], events)
            dirty = True
        self._applied = self._ledger.n_events
        bad, sound = [], []
        for entry in self._parts():
            ids, why = self._check_shard(entry)
            if why:
                bad.append((entry, why))
            else:
                sound.append((entry, ids))
        self._index = self._new_index(sound)
        keys = {_key(f) for f in m["pending"]}
        self._frames = {k: t for k, t in self._frames.items() if k in keys}
        if bad:
            if not self.writable:
                raise StoreError(" ".join(self._damage_message(e, why, moved=False) for e, why in bad))
            self._set_aside(bad, commit=False)
            dirty = True
        self._update_offsets()
        orphans = sorted((p for p in self._scan() if not p.name.endswith(".tmp")), key=lambda p: p.name)
        if orphans and self.writable:
            for p in orphans:
                if rowlog.is_log(p.name):
                    self._adopt_log(p)
                else:
                    self._adopt(p)
            dirty = True
        self._dirty = bool(dirty)
        if dirty and self.writable:
            with contextlib.suppress(OSError):  # e.g. a full disk: the ledger holds it, a later checkpoint writes it
                self._commit()
        self._sig = file_sig(self.path / MANIFEST_NAME)

    def _read_or_rebuild(self) -> dict:
        """The manifest; if it is missing or unreadable, a new one that the shards are adopted into
        (the ledger keeps the bill, so no spend history is lost)."""
        p = self.path / MANIFEST_NAME
        try:
            m = _read_manifest(self.path)
        except _BadManifest as e:
            if not self.writable:
                raise StoreError(f"{p} is not valid JSON ({e}) and the store is read-only. Make it writable "
                                 "and open it again to rebuild the manifest from the shards and the ledger.") from None
            dest = self.path / QUARANTINE / f"{MANIFEST_NAME}.{int(time.time())}"
            dest.parent.mkdir(exist_ok=True)
            os.replace(p, dest)
            m, why = None, f"was not valid JSON (kept as {dest})"
        else:
            why = "was missing"
        if m is not None:
            return m
        shards = [q.name for q in self.path.iterdir() if _shard_number(q.name) is not None]
        if (shards or self._ledger.exists()) and self.writable:
            warnings.warn(StoreWarning(
                f"{p} {why}: rebuilt it from {len(shards)} shard files and the ledger (spent "
                f"{self._ledger.spent:g} over {self._ledger.n_calls} calls kept)."), stacklevel=4)
        elif shards:
            raise StoreError(f"{p} is missing and the store is read-only. Make the folder writable and open it "
                             "again to rebuild the manifest from the shards and the ledger.")
        if not self.writable:
            raise StoreError(f"cannot create a store in {self.path}: the folder is read-only. Choose a writable "
                             "store.path, or make the folder writable.")
        self._manifest = {"shards": []}
        return {**self._new_manifest(), "_rebuilt": True}

    def _check_shard(self, entry: dict, *, full: bool = False) -> tuple[list | None, str | None]:
        """(ids, None) for a sound shard, (None, why) for a damaged one; verified once per file version."""
        if "log" in entry:
            return self._check_frame(entry, full=full)
        p = self.path / entry["file"]
        sig = file_sig(p)
        if sig is None:
            return None, "the file is missing"
        cached = self._checked.get(entry["file"])
        if cached and cached[0] == sig and cached[1] == entry["sha256"]:
            return cached[2], None
        if "bytes" in entry and sig[1] != entry["bytes"]:
            return None, f"its size ({sig[1]} bytes) is not the {entry['bytes']} in {MANIFEST_NAME} (truncated or appended to)"
        try:
            if self.verify_on_open or full:
                data = read_arrow(p)
                if hashlib.sha256(data).hexdigest() != entry["sha256"]:
                    return None, f"it does not match the checksum in {MANIFEST_NAME} (changed or damaged on disk)"
                ids = _id_array(pq.read_table(pa.BufferReader(data), columns=["id"]))
            else:
                ids = _id_array(pq.read_table(p, columns=["id"]))
        except Exception as e:  # noqa: BLE001 - any unreadable file is damage, named in the message
            return None, f"it cannot be read as Parquet ({type(e).__name__}: {str(e)[:200]})"
        if len(ids) != entry["rows"]:
            return None, f"it has {len(ids)} rows but {MANIFEST_NAME} says {entry['rows']}"
        self._checked[entry["file"]] = (sig, entry["sha256"], ids)
        return ids, None

    def _check_frame(self, ref: dict, *, full: bool = False) -> tuple[list | None, str | None]:
        """`_check_shard` for a frame of the row log (frames never change once written)."""
        key = _key(ref)
        cached = self._checked.get(key)
        if cached and not full:
            return cached[2], None
        try:
            frame = rowlog.read(self.path / ref["log"], ref["at"], ref["bytes"])
        except FileNotFoundError:
            return None, "its row log is missing"
        why = rowlog.check(frame, ref["sha256"])
        if why:
            return None, why
        try:
            table = rowlog.decode(frame)
        except Exception as e:  # noqa: BLE001 - a frame that passed its checksum but does not decode
            return None, f"it cannot be read as Arrow ({type(e).__name__}: {str(e)[:200]})"
        ids = _id_array(table)
        if len(ids) != ref["rows"]:
            return None, f"it has {len(ids)} rows but the ledger says {ref['rows']}"
        self._checked[key], self._frames[key] = (None, ref["sha256"], ids), table
        return ids, None

    def _damage_message(self, entry: dict, why: str, *, moved: bool = True) -> str:
        where = self.path / QUARANTINE / _key(entry)
        rows = "an unknown number of" if entry["rows"] < 0 else entry["rows"]
        head = f"{self.path / _key(entry)} is damaged: {why}. It held {rows} paid rows"
        if not moved:
            return (head + "; nothing was changed (the store is read-only). Make the folder writable and open "
                    "it again to set the shard aside, or restore the file from a backup.")
        return (head + f"; it was moved to {where} and its rows are not used. They are not paid for again unless "
                f"you choose: restore the file into {where.parent} and run `mentor store repair {self.path}`, or "
                f"run `mentor store repair {self.path} --repay` (Python: store.repair(repay=True)) to label them anew.")

    def _set_aside(self, bad: list, *, commit: bool = True, warn: bool = True) -> None:
        """Move damaged shards to `_quarantine/`, out of the manifest, with a ledger record each."""
        q = self.path / QUARANTINE
        q.mkdir(exist_ok=True)
        for entry, why in bad:
            key = _key(entry)
            dest = q / key
            if dest.exists():
                dest = q / f"{key}.{int(time.time() * 1000)}"
            if "log" in entry:  # a row-log frame: its bytes are copied aside, the log keeps the others
                with contextlib.suppress(OSError):
                    dest.write_bytes(rowlog.read(self.path / entry["log"], entry["at"], entry["bytes"]))
                self._manifest["pending"].remove(entry)
                self._frames.pop(key, None)
            else:
                if (self.path / key).exists():
                    os.replace(self.path / key, dest)
                self._manifest["shards"].remove(entry)
            self._checked.pop(key, None)
            self._ledger.append({"e": "quarantine", "shard": key, "rows": entry["rows"],
                                 "sha256": entry["sha256"], "why": why})
            self._applied = self._ledger.n_events
            if warn:
                warnings.warn(StoreWarning(self._damage_message(entry, why)), stacklevel=4)
        if commit:
            self._load_index()
            self._commit()

    def _load_index(self) -> None:
        self._index = self._new_index([(e, self._checked[_key(e)][2]) for e in self._parts()])
        self._update_offsets()

    def _new_index(self, parts: list[tuple[dict, pa.Array]]) -> IdIndex:
        """The index of these parts' ids, in this order (refused if an id is in two of them)."""
        try:
            return IdIndex(ids for _, ids in parts)
        except RepeatedId as e:
            self._repeats(_key(parts[e.part][0]))

    def _quarantine_note(self) -> str:
        q = self._ledger.quarantined
        if not q:
            return ""
        rows = f"{sum(q.values())}" if min(q.values()) >= 0 else f"at least {sum(v for v in q.values() if v > 0)}"
        return (f"{len(q)} damaged shard(s) ({', '.join(sorted(q))}) holding {rows} paid rows are "
                f"quarantined in {self.path / QUARANTINE}: restore them and run `mentor store repair "
                f"{self.path}`, or run `mentor store repair {self.path} --repay` to label those rows anew.")

    def _refuse_if_quarantined(self) -> None:
        note = self._quarantine_note()
        if note:
            raise StoreError(f"labeling stopped before sending anything: {note} mentor does not pay twice for "
                             "rows already paid for without your say.")

    def _add_to_index(self, ids, where, *, checked: bool = False) -> None:
        """`checked`: rows of this process's own call or write, whose ids `_first_new` found new
        under the lock, or for a call, before it was sent and leased to it."""
        if not self._index.add(ids, checked=checked):
            self._repeats(where)

    def _repeats(self, where) -> None:
        raise StoreError(f"{where} repeats ids already stored elsewhere in {self.path}; the store was edited "
                         "by hand. Delete the folder to relabel.")

    def _update_offsets(self) -> None:
        self._offsets = np.cumsum([0] + [s["rows"] for s in self._parts()])
        self._part_of_row = None

    def _parts(self) -> list[dict]:
        """Where the stored rows are, in stored order: the shards, then the row log's frames."""
        return self._manifest["shards"] + self._manifest.get("pending", [])

    def _adopt(self, p: Path) -> None:
        """Take in a shard renamed into place but never committed (the writer was killed), keeping
        only ids not stored yet, so nothing is paid twice and nothing is duplicated."""
        try:
            data = read_arrow(p)
            table = pq.read_table(pa.BufferReader(data))
            meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        except Exception as e:  # noqa: BLE001 - renamed into place only once complete: this is damage
            self._quarantine_orphan(p, f"it is not committed and cannot be read as Parquet ({type(e).__name__})")
            return
        expect = {"fingerprint": self.fingerprint, "n_classes": str(self.n_classes),
                  "top_k": str(self.top_k), "precision": self.precision}
        got = {k: meta.get(k) for k in expect}
        if got != expect or "id" not in table.column_names:
            raise StoreError(f"{p} is not listed in {MANIFEST_NAME} and was not written for this store "
                             f"(teacher {got['fingerprint']!r}, expected {self.fingerprint!r}). Move it out of "
                             f"{self.path} and open the store again.")
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        keep = _first_new(ids, self._index)
        call = meta.get("call")
        if float(meta.get("spent", 0) or 0) and not self._ledger.knows(call):  # paid before the ledger
            self._ledger.append({"e": "carried", "cost": float(meta["spent"]) * keep.sum() / len(ids),
                                 "calls": int(meta.get("calls", 0)), "why": f"adopted {p.name}"})
        answered = bool(call) and call in self._ledger.cost  # sent, no outcome yet
        paid = {"cost": float(meta["cost"])} if "cost" in meta else {}
        if not keep.any():
            if answered:
                self._ledger.append({"e": "done", "call": call, "stored": 0, "note": "adopted after a crash", **paid})
            p.unlink()  # everything in it is stored already (e.g. a merge that was not committed)
            return
        if not keep.all():
            table = table.filter(pa.array(keep))
            data = self._encode_bytes(table, spent=float(meta.get("spent", 0)) * keep.mean(),
                                      calls=int(meta.get("calls", 0)), call=call, cost=paid.get("cost"))
            _atomic_write(p, data)
        entry = _entry(p.name, table, data)
        if answered:  # the writer was killed between the shard and its commit line
            self._ledger.append({"e": "done", "call": call, "stored": table.num_rows, "entry": entry,
                                 "note": "adopted after a crash", **paid})
        else:
            self._ledger.append({"e": "adopt", "entry": entry})
        self._applied = self._ledger.n_events
        self._manifest["shards"].append(entry)
        self._checked[p.name] = (file_sig(p), entry["sha256"], _id_array(table))
        if self._manifest["pending"]:  # it goes before the row log's rows
            self._load_index()
        else:
            self._add_to_index(self._checked[p.name][2], p)
        self._update_offsets()

    def _quarantine_orphan(self, p: Path, why: str) -> None:
        """Set aside an unreadable uncommitted shard; how many paid rows it held is unknown."""
        q = self.path / QUARANTINE
        q.mkdir(exist_ok=True)
        dest = q / p.name if not (q / p.name).exists() else q / f"{p.name}.{int(time.time() * 1000)}"
        os.replace(p, dest)
        self._ledger.append({"e": "quarantine", "shard": p.name, "rows": -1, "sha256": _sha256_file(dest), "why": why})
        self._applied = self._ledger.n_events
        warnings.warn(StoreWarning(self._damage_message({"file": p.name, "rows": -1}, why)), stacklevel=4)

    def _check(self, probs, ids: np.ndarray, name: str) -> np.ndarray:
        probs = validate_probabilities(probs, self.n_classes, name=name)
        if len(probs) != len(ids):
            raise TeacherOutputError(f"{name}: {len(probs)} rows for {len(ids)} ids. Return one row per input, "
                                     "in input order; nothing was stored for this batch.")
        return probs

    def _encode(self, ids: np.ndarray | list, probs: np.ndarray, extras: dict | None = None, *,
                teacher: bool = True) -> pa.Table:
        """Rows as a shard table: id, probabilities, `teacher` (row-log frames leave it out: the
        flush adds it), extras."""
        dtype = PRECISIONS[self.precision]
        np_dtype = np.float16 if self.precision == "float16" else np.float32
        cols = {"id": pa.array(ids.tolist() if isinstance(ids, np.ndarray) else ids, pa.string())}  # a list: faster
        if self.top_k is None:
            cols["probs"] = pa.FixedSizeListArray.from_arrays(
                pa.array(probs.astype(np_dtype, copy=False).reshape(-1), dtype), self.n_classes)
        else:
            idx, val = dense_to_topk(probs, self.top_k)
            offsets = pa.array(np.arange(0, idx.size + 1, idx.shape[1], dtype=np.int32))
            cols["topk_index"] = pa.ListArray.from_arrays(offsets, pa.array(idx.reshape(-1), pa.int32()))
            cols["topk_prob"] = pa.ListArray.from_arrays(offsets, pa.array(val.astype(np_dtype).reshape(-1), dtype))
        if teacher:
            cols["teacher"] = self._teacher_column(len(ids))
        cols.update(extras or {})
        return pa.table(cols)

    def _teacher_column(self, n: int) -> pa.Array:
        """The constant `teacher` column (dictionary-encoded: one string for all rows)."""
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([self.fingerprint]))

    def _encode_bytes(self, table: pa.Table, *, spent: float, calls: int, call: str | None = None,
                      cost: float | None = None) -> bytes:
        meta = {"fingerprint": self.fingerprint, "n_classes": str(self.n_classes), "top_k": str(self.top_k),
                "precision": self.precision, "temperature": repr(self.temperature),
                "format": str(FORMAT_VERSION), "spent": repr(float(spent)), "calls": str(int(calls))}
        if call:
            meta["call"] = call
        if cost is not None:  # the call's real cost, for the commit line if a kill comes before it
            meta["cost"] = repr(float(cost))
        buf = pa.BufferOutputStream()
        # dictionary-encoding unique ids and float probabilities costs 4-10x the write time and
        # makes files larger; only the constant `teacher` column gains from it
        pq.write_table(table.replace_schema_metadata(meta), buf, use_dictionary=["teacher"])
        return buf.getvalue().to_pybytes()

    def _next_shard_name(self) -> str:
        """A shard name no file has (other processes' shards included: we hold the lock)."""
        while True:
            self._max_number += 1
            name = f"{SHARD_PREFIX}{self._max_number:06d}{SHARD_SUFFIX}"
            if not os.path.lexists(self.path / name):
                return name

    def _write_shard(self, table: pa.Table, *, spent: float, calls: int, call: str | None = None,
                     ids: list | None = None, cost: float | None = None) -> dict:
        name = self._next_shard_name()
        data = self._encode_bytes(table, spent=spent, calls=calls, call=call, cost=cost)
        _atomic_write(self.path / name, data)
        entry = _entry(name, table, data)
        ids = _id_array(table) if ids is None else ids
        self._checked[name] = (file_sig(self.path / name), entry["sha256"], ids)
        if table.num_rows < self.shard_size:
            self._small[name] = table
        return entry

    def _append(self, ids: np.ndarray, probs: np.ndarray, extras: dict | None = None, *, spent: float, calls: int,
                call: str | None = None, cost: float | None = None) -> None:
        """Store new rows. A teacher call's (`call`) go to the row log as one frame (fsynced), then
        its outcome line in the ledger commits them (with the call's real `cost` where known); the
        frames become a Parquet shard once they add up to `shard_size` rows. Rows from `write()`
        (no call, committed by an `import` line) and a call of `shard_size` rows or more go
        straight to a shard."""
        paid = {} if cost is None else {"cost": cost}
        if not len(ids):
            if call:
                self._ledger.append({"e": "done", "call": call, "stored": 0, **paid})
            return
        id_list = ids.tolist()
        direct = call is None or (len(ids) >= self.shard_size and not self._manifest["pending"])
        table = self._encode(id_list, probs, extras, teacher=direct)
        if direct:
            try:
                entry = self._write_shard(table, spent=spent, calls=calls, call=call, cost=cost)
            except OSError as e:
                raise self._io_error(e, f"write a shard ({len(ids)} rows)",
                                     "The answer of this teacher call was lost (the call is in the ledger as failed, "
                                     "so its cost is accounted)." if call else "") from None
            try:  # the commit: one fsynced line
                self._ledger.append({"e": "done", "call": call, "stored": len(ids), "entry": entry, **paid} if call
                                    else {"e": "import", "entry": entry})
            except OSError as e:
                raise self._io_error(e, "record a stored shard", f"The rows are kept in {entry['file']}, which the "
                                     "next open adopts.") from None
            self._applied = self._ledger.n_events
            self._manifest["shards"].append(entry)
            self._dirty = True
            self._add_to_index(id_list, entry["file"], checked=True)
            self._update_offsets()
            try:
                self._merge(final=False)
            except OSError as e:
                raise self._io_error(e, "merge small shards", "Every row is stored; only the merge was undone.") \
                    from None
            return
        try:
            ref = self._write_frame(table, call=call, cost=cost)
        except OSError as e:
            raise self._io_error(e, f"write the answer ({len(ids)} rows) to the row log",
                                 "The answer of this teacher call was lost (the call is in the ledger as failed, "
                                 "so its cost is accounted).") from None
        try:  # the commit; not fsynced: the frame is, and a frame without its line is adopted on open
            self._ledger.append({"e": "done", "call": call, "stored": len(ids), "frame": ref, **paid}, sync=False)
        except OSError as e:
            raise self._io_error(e, "record a stored answer", f"The answer is kept in {ref['log']}, which the next "
                                 "open adopts.") from None
        self._add_frame(ref, table, id_list)
        try:
            self._flush(final=False)
        except OSError as e:
            raise self._io_error(e, "write a shard from the row log", "Every answer is stored (in the row log).") \
                from None

    def _add_frame(self, ref: dict, table: pa.Table, id_list: list | None = None) -> None:
        """A frame just committed in the ledger joins the stored rows (after all others);
        `id_list`: its ids as Python strings where the caller has them (their hashes are cached)."""
        key, ids = _key(ref), _id_array(table)
        self._applied = self._ledger.n_events
        self._manifest["pending"].append(ref)
        self._checked[key], self._frames[key] = (None, ref["sha256"], ids), table
        self._dirty = True
        # both callers (_append, _adopt_log) kept only ids that `_first_new` found new
        self._add_to_index(ids if id_list is None else id_list, key, checked=True)
        self._offsets = np.append(self._offsets, self._offsets[-1] + table.num_rows)  # one more part, last
        self._part_of_row = None

    def _write_frame(self, table: pa.Table, *, call: str, cost: float | None, adopting: bool = False) -> dict:
        """Append `table` as one frame to the row log (made durable); returns its reference. A log
        holding bytes past its last committed frame holds an answer whose writer was killed before
        committing it: that is adopted first; while adopting (or if bytes remain) a new log is used."""
        meta = {"fingerprint": self.fingerprint, "n_classes": str(self.n_classes), "top_k": str(self.top_k),
                "precision": self.precision, "format": str(FORMAT_VERSION), "call": call}
        if cost is not None:
            meta["cost"] = repr(float(cost))
        frame = rowlog.encode(table, meta)
        name, fd = self._log_handle()
        if rowlog.has_tail(fd, self._ledger.frame_end.get(name, 0)):
            if not adopting:
                self._adopt_log(self.path / name)
                name, fd = self._log_handle()
            if adopting or rowlog.has_tail(fd, self._ledger.frame_end.get(name, 0)):
                name, fd = self._log_handle(new=True)  # never write over bytes nobody committed
        at = self._ledger.frame_end.get(name, 0)
        rowlog.append(fd, frame, at)
        ref = {"log": name, "at": at, "bytes": len(frame), "sha256": frame[len(rowlog.MAGIC) + 8:rowlog.HEADER].hex(),
               "rows": table.num_rows}
        extra = xcols.names(table)
        if extra:
            ref["extras"] = extra
        return ref

    def _log_handle(self, *, new: bool = False) -> tuple[str, int]:
        """(name, fd) of the row log to append to: the one holding the last unflushed frame; when
        every frame has been flushed, the one this object used last (unless another process has
        deleted it since), else (or with `new`) a new one."""
        pending = self._manifest["pending"]
        name = pending[-1]["log"] if pending and not new else None
        if not new and self._log is not None and (name is None or self._log[0] == name) \
                and os.fstat(self._log[1]).st_nlink:
            return self._log
        self._close_log()
        new = name is None
        if new:
            name = f"{rowlog.LOG_PREFIX}{uuid.uuid4().hex[:12]}{rowlog.LOG_SUFFIX}"
        fd = os.open(self.path / name, os.O_RDWR | os.O_CREAT, 0o644)  # written at offsets (rowlog.append)
        if new:
            _fsync_dir(self.path)  # the log's name must survive a power cut, like its frames
        self._log = (name, fd)
        return self._log

    def _close_log(self) -> None:
        if self._log is not None:
            with contextlib.suppress(OSError):
                os.close(self._log[1])
            self._log = None

    def _flush(self, *, final: bool) -> None:
        """Write the row log's frames as one Parquet shard once they add up to `shard_size` rows
        (with `final`, whatever is there), commit it with a `flush` line, delete the logs. A kill
        before the line leaves a shard whose ids are all stored, which the next open deletes."""
        pend = list(self._manifest["pending"])
        if not pend or (not final and sum(f["rows"] for f in pend) < self.shard_size):
            return
        n = len(self._manifest["shards"])
        table = self._concat([self._read_part(n + i) for i in range(len(pend))])
        at = 1 + (self.top_k is not None) + 1  # after id and the probabilities, as `_encode` puts it
        table = table.add_column(at, "teacher", self._teacher_column(table.num_rows))
        keys = [_key(f) for f in pend]
        ids = pa.concat_arrays([self._checked[k][2] for k in keys])
        entry = self._write_shard(table, spent=0.0, calls=0, ids=ids)
        self._ledger.append({"e": "flush", "entry": entry, "frames": keys})
        self._applied = self._ledger.n_events
        self._manifest["shards"].append(entry)
        self._manifest["pending"] = []
        self._dirty = True
        self._update_offsets()  # the same rows in the same order: the index stays valid
        for k in keys:
            self._checked.pop(k, None)
            self._frames.pop(k, None)
        # every frame is in a shard now: delete the logs at the end of a run, or once they are big
        # (a log grown past its last commit holds an answer to adopt first: `_scan` finds it)
        logs = [p for p in self.path.iterdir() if rowlog.is_log(p.name)] if final else \
            [self.path / log for log in {f["log"] for f in pend}]
        for p in logs:
            with contextlib.suppress(OSError):
                end = self._ledger.frame_end.get(p.name, 0)
                if not rowlog.has_tail(p, end) and (final or end > rowlog.ROTATE_BYTES):
                    p.unlink()
        self._merge(final=False)
        if self._dirty and len(self._ledger.events) >= EVENTS_HELD:  # e.g. a service storing one answer per call
            self._commit()  # the manifest holds them now: the ledger forgets them

    def _adopt_log(self, p: Path) -> None:
        """Take in the frames of row log `p` whose commit line was never written (the writer was
        killed after the frame), keeping only ids not stored yet; delete the log if no frame in it
        is still needed."""
        committed = set()
        for r in self._ledger.shard_events_after(0):
            if r.get("frame"):
                committed.add(_key(r["frame"]))
            committed.update(r.get("frames", ()))
        try:
            data = p.read_bytes()
        except FileNotFoundError:
            return
        for at, frame in rowlog.scan(data):
            if f"{p.name}@{at}" not in committed:
                self._adopt_frame(p.name, at, frame)
        if p.name not in {f["log"] for f in self._manifest["pending"]}:
            if self._log is not None and self._log[0] == p.name:
                self._close_log()
            p.unlink()
        elif rowlog.has_tail(p, end := self._ledger.frame_end.get(p.name, 0)):
            # past the last committed frame now lie only torn bytes (every sound frame is adopted
            # or not needed); cut them, or every later look would find this log again and reload
            os.truncate(p, end)

    def _adopt_frame(self, log: str, at: int, frame: bytes) -> None:
        table = rowlog.decode(frame)
        meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
        if meta.get("fingerprint") != self.fingerprint or meta.get("n_classes") != str(self.n_classes) \
                or meta.get("top_k") != str(self.top_k) or meta.get("precision") != self.precision:
            raise StoreError(f"{self.path / log} holds answers of teacher {meta.get('fingerprint')!r}, not of this "
                             f"store's {self.fingerprint!r}. Move it out of {self.path} and open the store again.")
        table = table.replace_schema_metadata(None)
        ids = np.asarray(table.column("id").to_pylist(), dtype=str)
        keep = _first_new(ids, self._index)
        call = meta.get("call")
        paid = {"cost": float(meta["cost"])} if "cost" in meta else {}
        answered = bool(call) and call in self._ledger.cost  # sent, no outcome yet
        if not keep.any():
            if answered:
                self._ledger.append({"e": "done", "call": call, "stored": 0, "note": "adopted after a crash", **paid})
            return
        if keep.all():
            ref = {"log": log, "at": at, "bytes": len(frame), "rows": len(ids),
                   "sha256": frame[len(rowlog.MAGIC) + 8:rowlog.HEADER].hex()}
            if xcols.names(table):
                ref["extras"] = xcols.names(table)
        else:
            table = table.filter(pa.array(keep))
            ref = self._write_frame(table, call=call, cost=paid.get("cost"), adopting=True)
        self._ledger.append({"e": "done", "call": call, "stored": table.num_rows, "frame": ref,
                             "note": "adopted after a crash", **paid} if answered else {"e": "adopt", "frame": ref})
        self._add_frame(ref, table)

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
            table = self._concat([self._read_shard(i) for i in range(first, last)])
            ids = pa.concat_arrays([self._checked[s["file"]][2] for s in shards[first:last]])
            replaced = [s["file"] for s in shards[first:last]]
            entry = self._write_shard(table, spent=0.0, calls=0, ids=ids)
            self._ledger.append({"e": "merge", "entry": entry, "old": replaced})  # logged: a lost manifest replays it
            old += replaced
            new[first:last] = [entry]
        self._applied = self._ledger.n_events
        self._manifest["shards"] = new
        self._commit()
        self._update_offsets()
        for name in old:
            (self.path / name).unlink()
            self._checked.pop(name, None)
            self._small.pop(name, None)

    def _concat(self, tables: list[pa.Table]) -> pa.Table:
        """Shard tables as one; their extra columns may differ (absent: null; types unified)."""
        first = tables[0].schema.remove_metadata()
        if all(t.schema.remove_metadata().equals(first) for t in tables[1:]):
            return pa.concat_tables(tables)
        cols = [c for c in first.names if c in xcols.RESERVED]
        cols += list(dict.fromkeys(c for t in tables for c in xcols.names(t)))
        return pa.concat_tables(xcols.conform(tables, cols))

    def _read_part(self, i: int) -> pa.Table:
        """Part `i` of the stored rows (a shard, or a frame of the row log after them), verified."""
        n = len(self._manifest["shards"])
        if i < n:
            return self._read_shard(i)
        ref = self._manifest["pending"][i - n]
        table = self._frames.get(_key(ref))
        if table is not None:
            return table
        why = self._check_frame(ref)[1]
        if why:
            self._damaged(ref, why)
        return self._frames[_key(ref)]

    def _read_shard(self, s: int) -> pa.Table:
        """Shard `s` as a table (verified)."""
        p = self._verified_path(s)
        small = self._small.get(p.name)
        return small if small is not None else pq.read_table(p)

    def _verified_path(self, s: int) -> Path:
        """The file of shard `s`; one changed since it was verified is verified again, and set
        aside with a StoreError if it no longer matches."""
        entry = self._manifest["shards"][s]
        p = self.path / entry["file"]
        cached = self._checked.get(entry["file"])
        if cached is not None and file_sig(p) == cached[0]:
            return p
        self._checked.pop(entry["file"], None)
        self._small.pop(entry["file"], None)
        why = self._check_shard(entry)[1]
        if why:
            self._damaged(entry, why)
        return p

    def _damaged(self, part: dict, why: str) -> None:
        """A part found damaged when read: set it aside (if the store is writable) and raise."""
        if self.writable:
            with self._locked():
                self._sync()
                if part in self._parts():
                    self._set_aside([(part, why)])
        raise StoreError(self._damage_message(part, why, moved=self.writable))

    def _decode(self, table: pa.Table) -> np.ndarray:
        n, C = table.num_rows, self.n_classes
        if n == 0:
            return np.zeros((0, C), np.float32)
        if self.top_k is None:
            probs = table.column("probs").combine_chunks().flatten().to_numpy(zero_copy_only=False)
            probs = probs.reshape(n, C).astype(np.float32, copy=False)
            # float16 rounding leaves rows off one by up to ~1e-3; renormalise so losses see distributions
            return probs / probs.sum(axis=1, keepdims=True) if self.precision == "float16" else probs
        idx = table.column("topk_index").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        val = table.column("topk_prob").combine_chunks().flatten().to_numpy(zero_copy_only=False).reshape(n, -1)
        return topk_to_dense(idx, val.astype(np.float32), C, name=f"stored top-k outputs in {self.path}")

    def _ids_and_probs(self, table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        return np.asarray(table.column("id").to_pylist(), dtype=str), self._decode(table)


def _entry(name: str, table: pa.Table, data: bytes) -> dict:
    """A shard's manifest entry: file, rows, sha256, bytes, and its extra columns if any."""
    entry = {"file": name, "rows": table.num_rows, "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    extra = xcols.names(table)
    if extra:
        entry["extras"] = extra
    return entry


def _id_array(table: pa.Table) -> pa.Array:
    """A table's ids as one Arrow string array (what `_checked` and the index keep: no Python strings)."""
    ids = table.column("id").combine_chunks()
    return ids if ids.type == pa.string() else ids.cast(pa.string())


def _key(part: dict) -> str:
    """The name of a part of the stored rows: a shard's file, or `log@offset` for a row-log frame."""
    return part["file"] if "file" in part else f"{part['log']}@{part['at']}"


def _replay(shards: list[dict], pending: list[dict], events: list[dict]) -> tuple[list[dict], list[dict]]:
    """The shard list and the row log's frames after the ledger's shard events (commits, flushes,
    merges, quarantines), in order."""
    shards, pending = [dict(e) for e in shards], [dict(f) for f in pending]
    for r in events:
        files = [e["file"] for e in shards]
        if r["e"] == "quarantine":
            shards = [e for e in shards if e["file"] != r["shard"]]
            pending = [f for f in pending if _key(f) != r["shard"]]
        elif r["e"] == "merge":
            at = [i for i, f in enumerate(files) if f in set(r["old"])]
            shards = [e for e in shards if e["file"] not in set(r["old"])]
            shards.insert(at[0] if at else len(shards), dict(r["entry"]))
        elif r["e"] == "flush":
            pending = [f for f in pending if _key(f) not in set(r["frames"])]
            if r["entry"]["file"] not in files:
                shards.append(dict(r["entry"]))
        elif "frame" in r:
            if _key(r["frame"]) not in {_key(f) for f in pending}:
                pending.append(dict(r["frame"]))
        elif r["entry"]["file"] not in files:
            shards.append(dict(r["entry"]))
    return shards, pending


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


class _BadManifest(StoreError):
    """The manifest is not valid JSON (a store rebuilds it from its shards and ledger)."""


def _read_manifest(path: Path) -> dict | None:
    p = path / MANIFEST_NAME
    try:
        m = json.loads(p.read_bytes())
    except FileNotFoundError:
        return None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise _BadManifest(f"{p} is not valid JSON ({e}). Open the store with write access to rebuild it from "
                           "the shards and the ledger.") from None
    if not isinstance(m, dict):
        raise _BadManifest(f"{p} does not hold a JSON object.")
    if m.get("format") != FORMAT_VERSION:
        raise StoreError(f"{p} has store format {m.get('format')!r}; this mentor reads format {FORMAT_VERSION}. "
                         "Upgrade mentor, or delete the store folder to relabel.")
    return m


def _stored_settings(path: Path, *, peek: bool = False) -> dict | None:
    """The settings a store was written with: from its manifest, else its ledger's first line, else
    a shard's metadata (a store whose manifest was lost). None where `path` holds no store.
    With `peek`, only whether any of those files exists."""
    if not path.is_dir():
        return None
    shards = sorted(p for p in path.iterdir() if _shard_number(p.name) is not None)
    if peek:
        return {} if shards or (path / MANIFEST_NAME).exists() or (path / LEDGER_NAME).exists() else None
    with contextlib.suppress(_BadManifest):
        m = _read_manifest(path)
        if m is not None:
            return {**{k: m[k] for k in SETTINGS}, "shard_size": m.get("shard_size", 4096)}
    ledger = Ledger(path)
    ledger.refresh()
    if ledger.header:
        return {k: ledger.header[k] for k in SETTINGS}
    for p in shards:
        with contextlib.suppress(Exception):
            meta = {k.decode(): v.decode() for k, v in (pq.read_schema(p).metadata or {}).items()}
            return {"fingerprint": meta["fingerprint"], "n_classes": int(meta["n_classes"]),
                    "top_k": None if meta["top_k"] == "None" else int(meta["top_k"]),
                    "precision": meta["precision"], "temperature": float(meta["temperature"])}
    return None
