"""The store's id index: the stored position of every id, compact enough for pools of millions.

A dict of id -> position costs ~130 bytes per id in Python objects (the string, the entry, the
int); at 3M ids that alone was most of what an open store held. Here the ids themselves are kept
once as Arrow strings (their bytes and an offset), and the lookup is a sorted array of their
64-bit hashes with the matching positions (16 bytes per id), searched with `np.searchsorted`. A
hash hit is confirmed by comparing the ids themselves, so a collision can never misplace a row.
A bit filter (~2 bytes per id) tells most new ids apart without the search. Ids added since the
last merge sit in a dict (new ids arrive a call at a time); it is merged into the sorted arrays
once it holds `max(MERGE_MIN, n / 16)` ids, so a merge's O(n) cost is paid every n / 16 ids or
more, and a store of up to MERGE_MIN ids being written is a plain dict.

Hashes are Python's own `hash(str)` (salted per process): the index lives in memory only.
A read of many ids at once (an eighth of the store or more) uses `IdLookup` instead, built on
demand and kept until the store changes: vectorised hashes of the ids' code points and a pandas
hash table, faster per id but ~80 bytes per stored id while it is kept.
"""

from __future__ import annotations

import itertools
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

MERGE_MIN = 131072  # ids held in the dict before a merge (~17 MB)


def _strings(ids) -> pa.Array:
    if isinstance(ids, pa.ChunkedArray):
        ids = ids.combine_chunks()
    if isinstance(ids, pa.Array):
        return ids.cast(pa.string()) if ids.type != pa.string() else ids
    return pa.array(ids if isinstance(ids, list) else list(ids), pa.string())


def _hashes(ids: list[str]) -> np.ndarray:
    return np.fromiter(map(hash, ids), np.int64, len(ids))


def _array_hashes(ids: pa.Array, step: int = 65536) -> np.ndarray:
    """Hashes of an Arrow array's ids, converted to Python strings a slice at a time (bounded memory)."""
    return np.concatenate([_hashes(ids.slice(s, step).to_pylist()) for s in range(0, len(ids), step)] or
                          [np.empty(0, np.int64)])


def id_hashes(ids: np.ndarray, width: int) -> np.ndarray:
    """64-bit FNV-1a hashes of string ids, vectorised over their code points (padded to `width`)."""
    codes = np.ascontiguousarray(ids.astype(f"<U{width}")).view(np.uint32).reshape(len(ids), width)
    h = np.full(len(ids), 0xCBF29CE484222325, np.uint64)
    with np.errstate(over="ignore"):
        for j in range(width):
            h = (h ^ codes[:, j]) * np.uint64(0x100000001B3)
    return h


class IdLookup:
    """Stored position of many string ids at once: a hash table (pandas' uint64 one) from 64-bit
    hashes of the ids to their stored positions, each hit confirmed by comparing the ids themselves
    (a hash collision can never misplace a row)."""

    def __init__(self, stored: np.ndarray):
        import pandas as pd  # imported here: only reads of many ids need it

        self.stored, self.width = stored, max(int(stored.dtype.itemsize // 4), 1)
        self.hashes = pd.Index(id_hashes(stored, self.width))  # position = stored order
        self.unique = self.hashes.is_unique  # else the caller uses IdIndex.positions

    def positions(self, ids: np.ndarray) -> np.ndarray:
        if len(self.stored) == 0:
            return np.full(len(ids), -1, np.int64)
        pos = self.hashes.get_indexer(id_hashes(ids, self.width))  # ids longer than any stored one are cut
        hit = (pos >= 0) & (self.stored[pos] == ids)                 # here, then fail this check
        return np.where(hit, pos, -1).astype(np.int64, copy=False)


class RepeatedId(ValueError):
    """An id of part `part` (0-based) is already in an earlier part, or repeats within it."""

    def __init__(self, part: int):
        super().__init__(f"part {part} repeats a stored id")
        self.part = part


class IdIndex:
    """Position (0, 1, ... in the order added) of each stored id; ids are never repeated."""

    def __init__(self, parts: Iterable = ()):
        """An index of the ids in `parts` (lists or Arrow string arrays), in that order. Raises
        RepeatedId naming the part whose id is already in an earlier one (or repeats in itself)."""
        self._chunks: list[pa.Array] = []  # ids merged so far, in stored order
        self._n = 0
        self._recent: dict[str, int] = {}  # ids added since the last merge -> position (stored order)
        self._hash = np.empty(0, np.int64)  # hashes of the ids merged so far, sorted
        self._pos = np.empty(0, np.int64)   # their positions, in the same order
        self._bits = np.zeros(1, np.uint8)  # bit filter of those hashes (_set_bits)
        self._all: pa.ChunkedArray | None = None
        self._bulk: IdLookup | None = None  # for reads of many ids, until the next add
        parts = [_strings(p) for p in parts]  # kept as they are: the store's shard id arrays are shared, not copied
        if parts:
            h = np.concatenate([_array_hashes(p) for p in parts])
            order = np.argsort(h, kind="stable")
            self._chunks, self._n = [p for p in parts if len(p)], len(h)
            self._hash, self._pos = h[order], order.astype(np.int64)
            self._set_bits()
            dup = self._repeated()
            if dup is not None:
                bounds = np.cumsum([len(p) for p in parts])
                raise RepeatedId(int(np.searchsorted(bounds, dup, side="right")))

    def __len__(self) -> int:
        return self._n

    def ids(self) -> pa.ChunkedArray:
        """Every id, in stored order."""
        if self._all is None:
            self._all = pa.chunked_array(self._chunks + [pa.array(list(self._recent), pa.string())], pa.string())
        return self._all

    # ------------------------------------------------------------------------------------ lookups

    def lookup(self, ids: np.ndarray) -> np.ndarray:
        """`positions` of a NumPy array of ids; a read of an eighth of the store or more goes
        through the (cached) IdLookup."""
        if len(ids) >= max(4096, self._n // 8):
            if self._bulk is None:
                self._bulk = IdLookup(self.ids().to_numpy(zero_copy_only=False).astype(str))
            if self._bulk.unique:
                return self._bulk.positions(ids)
        return self.positions(ids.tolist())

    def positions(self, ids: list[str]) -> np.ndarray:
        """Stored position of each id, -1 where it is not stored."""
        if self._recent:
            out = np.fromiter(map(self._recent.get, ids, itertools.repeat(-1)), np.int64, len(ids))
            if not len(self._hash):
                return out
            ask = np.flatnonzero(out < 0)
            q = ids if len(ask) == len(ids) else [ids[i] for i in ask]
        else:
            out, ask, q = np.full(len(ids), -1, np.int64), slice(None), ids
        if not len(q) or not len(self._hash):
            return out
        out[ask] = self._find_merged(q)
        return out

    def _find_merged(self, q: list[str]) -> np.ndarray:
        """Positions of `q` among the merged ids (-1: not there). The bit filter answers "not
        there" for most new ids with one lookup each; the others are searched in the sorted hashes
        (sorted first: one sweep) and confirmed on the ids."""
        found = np.full(len(q), -1, np.int64)
        h = _hashes(q)
        slot = h & (len(self._bits) * 8 - 1)
        maybe = np.flatnonzero((self._bits[slot >> 3] >> (slot & 7)) & 1)
        if not len(maybe):  # new ids (the common case when labeling)
            return found
        if len(maybe) < len(q):
            q, h = [q[i] for i in maybe], h[maybe]
        order = np.argsort(h)
        at = np.empty_like(order)
        at[order] = np.searchsorted(self._hash, h[order])
        hit = self._hash[np.minimum(at, len(self._hash) - 1)] == h
        if hit.any():
            found[maybe] = self._confirm(q, h, at, hit)
        return found

    def _confirm(self, q: list[str], h: np.ndarray, at: np.ndarray, hit: np.ndarray) -> np.ndarray:
        """Positions of the hash hits whose id really is the one asked (the next entries of an
        equal hash are tried in turn: a collision), compared as Arrow strings."""
        found = np.full(len(q), -1, np.int64)
        todo, step = np.flatnonzero(hit), 0
        while len(todo):
            pos = self._pos[at[todo] + step]
            want = pa.array(q if len(todo) == len(q) else [q[i] for i in todo], pa.string())
            same = pc.equal(self.ids().take(pa.array(pos)), want).to_numpy(zero_copy_only=False)
            found[todo[same]] = pos[same]
            todo, step = todo[~same], step + 1
            todo = todo[at[todo] + step < len(self._hash)]
            todo = todo[self._hash[at[todo] + step] == h[todo]]
        return found

    def contains(self, ids: list[str]) -> np.ndarray:
        return self.positions(ids) >= 0

    # ------------------------------------------------------------------------------------ adding

    def add(self, ids, *, checked: bool = False) -> bool:
        """Append `ids` (a list, or Arrow strings) after the stored ones; False (and nothing
        added) if one is already stored or repeats within `ids`. `checked`: the caller has just
        looked them up (`positions`: recent and merged ids), so they are not searched again."""
        lst = ids.to_pylist() if isinstance(ids, (pa.Array, pa.ChunkedArray)) else list(ids)
        recent = self._recent
        if len(set(lst)) != len(lst) or not checked and (
                any(map(recent.__contains__, lst)) or len(self._hash) and self._in_merged(lst)):
            return False
        recent.update(zip(lst, range(self._n, self._n + len(lst))))
        self._n += len(lst)
        self._all = self._bulk = None
        if len(self._recent) >= max(MERGE_MIN, self._n // 16):
            self._merge()
        return True

    def _merge(self) -> None:
        """Move the recent ids into the sorted arrays (one O(n) insert) and into one Arrow chunk."""
        keys = list(self._recent)
        h = _hashes(keys)
        p = np.fromiter(self._recent.values(), np.int64, len(keys))
        order = np.argsort(h, kind="stable")
        h, p = h[order], p[order]
        at = np.searchsorted(self._hash, h, side="right")
        self._hash, self._pos = np.insert(self._hash, at, h), np.insert(self._pos, at, p)
        if len(self._hash) * 16 > len(self._bits) * 8:
            self._set_bits()  # a filter twice as large, from all hashes
        else:
            self._set_bits(h)  # the new hashes' bits only
        self._chunks.append(pa.array(keys, pa.string()))
        self._recent, self._all = {}, None

    def _in_merged(self, ids: list[str]) -> bool:
        """Whether any of `ids` is among the merged ids."""
        return bool((self._find_merged(ids) >= 0).any())

    def _set_bits(self, new: np.ndarray | None = None) -> None:
        """The bit filter of the merged ids' hashes, 16 to 32 bits per id (so 1/16 or fewer of new
        ids are searched): rebuilt from all hashes, or with `new` only those hashes' bits set."""
        if new is None:
            size = 1 << max(16, int(len(self._hash) * 32 - 1).bit_length())
            self._bits, new = np.zeros(size // 8, np.uint8), self._hash
        slot = new & (len(self._bits) * 8 - 1)
        np.bitwise_or.at(self._bits, slot >> 3, (1 << (slot & 7)).astype(np.uint8))

    def _repeated(self) -> int | None:
        """The stored position of an id that appears twice (its second place), or None."""
        same = self._hash[1:] == self._hash[:-1]
        if not same.any():
            return None
        runs = np.flatnonzero(np.r_[same, False] | np.r_[False, same])  # every entry sharing its hash
        pos = np.sort(self._pos[runs])
        seen: dict[str, int] = {}
        for p, i in zip(pos.tolist(), self.ids().take(pa.array(pos)).to_pylist()):  # equal ids, or a collision
            if i in seen:
                return p
            seen[i] = p
        return None
