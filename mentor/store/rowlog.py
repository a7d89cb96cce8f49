"""The row log: teacher answers kept durably between Parquet shards.

Writing one Parquet file per small teacher call (and merging those files later) made the store
write every row twice and pay a file create, rename and delete per call. Instead each call's rows
are appended, as one *frame*, to `_rows-XXXX.log` beside the shards and fsynced; its `done` line
in the ledger (which names the frame: log, offset, size, sha256) commits it. Once the committed
frames add up to `shard_size` rows (and at the end of each `label()` run) they are written as one
Parquet shard, committed by a `flush` line; logs are deleted at the end of a run (or once large).

A frame is `MAGIC | payload length (8 bytes, little-endian) | sha256 of the payload | payload`,
the payload an Arrow IPC stream of the call's table (schema metadata: fingerprint, call, cost).
A frame torn by a crash, or bytes damaged on disk, fail the checksum; a reader scanning a log
for frames whose commit line was never written (the writer was killed between the two) skips
forward to the next MAGIC, so a torn frame never hides the ones after it.

A log grows in steps of ROOM bytes written as zeros ahead of its frames (and fsynced once per
step). A frame then lands in blocks the file already has: its size and block map do not change,
so `fdatasync` makes it durable without a file-system journal commit, which on ext4 made an
appending fsync cost about twice as much. Where the next frame goes is the end of the last
committed one (the ledger's `frame_end`), not the file's size; the zeros are never read as data.
"""

from __future__ import annotations

import errno
import hashlib
import os
import struct
from pathlib import Path
from typing import Iterator

import pyarrow as pa

MAGIC = b"MRW1"
HEADER = len(MAGIC) + 8 + 32
LOG_PREFIX, LOG_SUFFIX = "_rows-", ".log"
ROOM = 1 << 20  # a log grows to whole numbers of these, zeros ahead of its frames (where the disk has room)
ROTATE_BYTES = 64 << 20  # a log whose frames are all in shards is deleted past this size (and at the end of a run)


def is_log(name: str) -> bool:
    return name.startswith(LOG_PREFIX) and name.endswith(LOG_SUFFIX)


def encode(table: pa.Table, meta: dict[str, str]) -> bytes:
    """One frame holding `table` (with `meta` as its schema metadata)."""
    table = table.replace_schema_metadata(meta)
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    payload = sink.getvalue().to_pybytes()
    return MAGIC + struct.pack("<Q", len(payload)) + hashlib.sha256(payload).digest() + payload


def decode(frame: bytes) -> pa.Table:
    return pa.ipc.open_stream(pa.BufferReader(frame[HEADER:])).read_all()


def check(frame: bytes, sha256: str | None = None) -> str | None:
    """Why `frame` is not a sound frame (None if it is); `sha256`: the payload hash on record."""
    if len(frame) < HEADER or frame[:len(MAGIC)] != MAGIC:
        return "it is not a row-log frame (missing or overwritten)"
    n = struct.unpack("<Q", frame[len(MAGIC):len(MAGIC) + 8])[0]
    if len(frame) != HEADER + n:
        return f"it holds {len(frame) - HEADER} payload bytes, not {n} (truncated)"
    digest = hashlib.sha256(frame[HEADER:]).digest()
    if digest != frame[len(MAGIC) + 8:HEADER] or (sha256 is not None and digest.hex() != sha256):
        return "it does not match its checksum (changed or damaged on disk)"
    return None


def read(path: Path, at: int, size: int) -> bytes:
    """The `size` bytes at offset `at` of the log `path` (fewer where the file is shorter)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, at)
    finally:
        os.close(fd)


def scan(data: bytes, start: int = 0) -> Iterator[tuple[int, bytes]]:
    """(offset, frame) of every sound frame in `data` from `start`; torn or damaged bytes are
    skipped up to the next MAGIC."""
    pos = data.find(MAGIC, start)
    while pos >= 0:
        if len(data) - pos >= HEADER:
            n = struct.unpack("<Q", data[pos + len(MAGIC):pos + len(MAGIC) + 8])[0]
            frame = data[pos:pos + HEADER + n]
            if check(frame) is None:
                yield pos, frame
                pos = data.find(MAGIC, pos + len(frame))
                continue
        pos = data.find(MAGIC, pos + 1)


def append(fd: int, frame: bytes, at: int) -> None:
    """Write `frame` at offset `at` of the open log `fd` (the end of its last committed frame)
    and make it durable: into the zeros written ahead, the data alone is synced; past them, the
    frame and the next step of zeros (the frame alone where the disk has no room for them), and
    the file with them."""
    end = at + len(frame)
    if end <= os.fstat(fd).st_size:
        _pwrite(fd, frame, at)
        _fdatasync(fd)
        return
    try:
        _pwrite(fd, frame + bytes(-end % ROOM), at)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _pwrite(fd, frame, at)  # a disk with room for the answer but not for the zeros ahead
        os.ftruncate(fd, end)
    os.fsync(fd)


def has_tail(log: Path | int, end: int) -> bool:
    """Whether the log (a path or an open fd) holds bytes past `end`, the end of its last
    committed frame: a frame, or part of one, whose writer was killed before its commit line, to
    be adopted before anything is written after it. The zeros written ahead are not a tail; a log
    whose size is not a whole number of ROOM steps was appended by a writer that does not write
    them ahead (an older mentor), so there any byte past `end` is."""
    fd = os.open(log, os.O_RDONLY) if isinstance(log, (str, Path)) else log
    try:
        size = os.fstat(fd).st_size
        if size <= end:
            return False
        return bool(size % ROOM) or bool(os.pread(fd, HEADER, end).strip(b"\0"))
    finally:
        if fd is not log:
            os.close(fd)


def _pwrite(fd: int, data: bytes, at: int) -> None:
    view = memoryview(data)
    while view:  # a full disk may take part: write the rest, or raise (an uncommitted frame is skipped)
        n = os.pwrite(fd, view, at)
        view, at = view[n:], at + n


_fdatasync = getattr(os, "fdatasync", os.fsync)  # macOS has no fdatasync
