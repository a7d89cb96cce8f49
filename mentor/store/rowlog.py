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
"""

from __future__ import annotations

import hashlib
import os
import struct
from pathlib import Path
from typing import Iterator

import pyarrow as pa

MAGIC = b"MRW1"
HEADER = len(MAGIC) + 8 + 32
LOG_PREFIX, LOG_SUFFIX = "_rows-", ".log"
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


def append(fd: int, frame: bytes) -> int:
    """Append `frame` to the open log `fd` (fsynced); returns its offset."""
    at = os.fstat(fd).st_size
    view = memoryview(frame)
    while view:
        view = view[os.write(fd, view):]
    os.fsync(fd)
    return at
