"""File primitives of the store: durable atomic writes, checksums, the folder lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
from pathlib import Path

try:  # advisory lock; without fcntl (Windows) a store must not be written by two processes at once
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None

LOCK_NAME = ".lock"


def _fsync_dir(path: Path) -> None:
    """Make a rename durable; not every platform can open a directory."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: Path):
    """Hold an exclusive advisory lock on `folder/.lock`: one writer per store across processes."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with open(Path(folder) / LOCK_NAME, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of `data`, never a part."""
    tmp = path.with_name(f"_{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
