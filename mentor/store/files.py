"""File primitives of the store: durable atomic writes, checksums, the folder lock."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
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
def folder_lock(folder: Path, *, write: bool = True):
    """Hold an exclusive advisory lock on `folder/.lock`: one writer per store across processes.
    With `write=False` (a read-only folder) an existing lock file is locked read-only, and a
    missing one is not needed: nobody can change that folder."""
    lock = Path(folder) / LOCK_NAME
    if fcntl is None or not (write or lock.exists()):  # pragma: no cover
        yield
        return
    with open(lock, "a+" if write else "r") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class FolderLock:
    """`folder_lock` that keeps its lock file open between uses (one open per store, not per
    call), excludes this process's other threads too, and may be re-entered by its holder."""

    def __init__(self, folder: Path, *, write: bool = True):
        self.path, self.write, self._f, self._depth = Path(folder) / LOCK_NAME, write, None, 0
        self._thread_lock = threading.RLock()

    def __enter__(self):
        self._thread_lock.acquire()
        if self._depth == 0 and fcntl is not None:
            if self._f is None and (self.write or self.path.exists()):
                self._f = open(self.path, "a+" if self.write else "r")
            if self._f is not None:
                fcntl.flock(self._f, fcntl.LOCK_EX)
        self._depth += 1
        return self

    def __exit__(self, *exc):
        self._depth -= 1
        if self._depth == 0 and self._f is not None:
            fcntl.flock(self._f, fcntl.LOCK_UN)
        self._thread_lock.release()

    def close(self) -> None:
        with self._thread_lock:
            if self._f is not None and self._depth == 0:
                self._f.close()
                self._f = None


def _atomic_write(path: Path, data: bytes) -> None:
    """Write `data` so that `path` holds either its old content or all of `data`, never a part."""
    tmp = path.with_name(f"_{path.name}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # e.g. a full disk: leave no half-written file behind
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(path.parent)


def read_arrow(path: Path):
    """The file's bytes in Arrow-owned memory, to parse Parquet from. Not Python `bytes`: Arrow
    wraps those in a buffer whose release needs the GIL, and its worker threads may release it
    late; if that happens while the interpreter exits, the process aborts ("terminate called
    without an active exception", apache/arrow#34314) after its work is done."""
    import pyarrow as pa
    with pa.OSFile(str(path)) as f:
        return f.read_buffer()


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_sig(path: Path) -> tuple | None:
    """(inode, size, mtime) of `path`, None if missing: tells a changed or replaced file cheaply."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns
