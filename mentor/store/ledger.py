"""The ledger: an append-only bill of every teacher call, and the leases that stop two processes
from sending the same id.

`_ledger.jsonl` sits beside the shards (the `_` keeps Parquet readers away). One JSON object per
line, appended under the store's folder lock:

    {"e": "store", ...settings}                      first line: what the store holds
    {"e": "lease", "call", "pid", "host", "start", "at", "n", "ids"}  ids reserved for a call queued in a pool
    {"e": "send", "call", "pid", "host", "start", "at", "n", "cost", "ids"}   fsynced BEFORE the call
    {"e": "done", "call", "stored", "frame", "cost"}  the answer is on disk: this line commits its rows,
                                                     a frame of the row log (rowlog.py); `cost`: what the
                                                     call really cost, where the teacher said
    {"e": "flush", "entry", "frames"}                committed frames written as one Parquet shard
    {"e": "import", "entry"} / {"e": "adopt", "entry" or "frame"}   rows written by `write()`, an orphan adopted
    {"e": "merge", "entry", "old"}                   small shards rewritten as one
    {"e": "failed", "call", "error", "cost"}         the call raised, or its answer could not be kept
    {"e": "lost", "call", "why"}                     its process died (or its lease expired) mid-call
    {"e": "carried", "cost", "calls", "why"}         spend from before the ledger (older stores)
    {"e": "quarantine", "shard", "rows", "sha256", "why"}   a damaged shard set aside (paid rows unused)
    {"e": "resolved", "shards", "how"}               restored from a backup, or the user chose to repay

The bill (`spent`) is the sum of every `send`, whatever happened next, so a call cut off by a
kill is paid for and accounted; where an outcome carries the call's real `cost` (a teacher that
counts tokens), that replaces the estimate the `send` recorded. A `send` without an outcome is a lease on its ids: live while
its process runs (same host: the pid and its start time; another host: until `lease_timeout_s`),
and recorded as `lost` once that process is gone. Nothing here holds the lock itself: the store
calls it under `folder_lock`.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import orjson  # ~6x faster to read and ~20x faster to write than json: the ledger is read whole at every open

LEDGER_NAME = "_ledger.jsonl"
HOST = socket.gethostname()
OUTCOMES = ("done", "failed", "lost")
SHARD_EVENTS = ("done", "import", "adopt", "merge", "flush", "quarantine")

# call ids this process has in flight (any TeacherStore object): its own leases are live only
# while listed here, so a call abandoned by an exception does not block a retry in this process
_LIVE_CALLS: set[str] = set()
_LIVE_LOCK = threading.Lock()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _proc_stat(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name (Linux), or [] where there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except (OSError, IndexError):
        return []


def _proc_start(pid: int) -> str | None:
    """Start time of `pid`, to tell a live process from a later one reusing its pid."""
    fields = _proc_stat(pid)
    return fields[19].decode() if len(fields) > 19 else None


def _pid_alive(pid: int, start: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: it exists
        pass
    if _proc_stat(pid)[:1] in ([b"Z"], [b"X"]):  # exited, not yet reaped by its parent: its call is over
        return False
    return start is None or _proc_start(pid) in (None, start)


MY_START = _proc_start(os.getpid())


class Ledger:
    """The ledger of one store folder, read incrementally (it only grows)."""

    def __init__(self, folder: Path, *, lease_timeout_s: float = 3600.0):
        self.path = Path(folder) / LEDGER_NAME
        self.lease_timeout_s = float(lease_timeout_s)
        self._pos = 0
        self.lines_read = 0  # batches of lines read from the file (not appended by this object)
        self.spent = 0.0
        self.n_calls = 0
        self.open: dict[str, dict] = {}  # call -> its send record (ids included): the leases
        self.cost: dict[str, float] = {}  # call -> cost, for calls sent and not finished
        self.finished: set[str] = set()  # calls with an outcome (done | failed | lost): later ones are ignored
        self.totals = {k: [0, 0.0] for k in OUTCOMES}  # outcome -> [calls, cost]
        self.carried = [0, 0.0]
        self.quarantined: dict[str, int] = {}  # shard -> paid rows it held, until resolved
        self._quarantine: dict[str, dict] = {}
        self.ever_quarantined: set[str] = set()
        # what happened to the shard list, with the ledger position after each record: the
        # manifest is a checkpoint up to a position, these records replay what came after it
        self.events: list[tuple[int, dict]] = []
        # a writer that has written a manifest forgets the events it covers (`forget_events`), so
        # its memory does not grow with every call; they are read again from the file if needed
        self.forgotten = 0  # events dropped from the front of `events`
        self._kept_after = 0  # ledger position: every shard event ending after it is in `events`
        self.frame_end: dict[str, int] = {}  # row log -> end of its last committed frame
        self.header: dict | None = None
        self._fd: int | None = None  # kept open: one open per store, not one per record
        self._unsynced = False  # a record was appended without fsync since the last one

    def __del__(self):
        self.close()

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def exists(self) -> bool:
        return self._fd is not None or self.path.exists()

    def _handle(self, create: bool = False) -> int | None:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | (os.O_CREAT if create else 0), 0o644)
            except FileNotFoundError:
                return None
            except PermissionError:  # a read-only store: read only
                self._fd = os.open(self.path, os.O_RDONLY)
            except OSError as e:
                if e.errno != errno.EROFS:
                    raise
                self._fd = os.open(self.path, os.O_RDONLY)
        return self._fd

    # ---------------------------------------------------------------------------------- reading

    def refresh(self) -> None:
        """Read the records appended since the last call (by this or any other process)."""
        fd = self._handle()
        if fd is None or os.fstat(fd).st_size == self._pos:  # nothing new: one fstat, no read
            return
        chunks = []
        while True:
            chunk = os.pread(fd, 1 << 20, self._pos + sum(map(len, chunks)))
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
        end = data.rfind(b"\n") + 1  # a line still being written (or torn by a crash) waits
        self.lines_read += bool(end)
        at = self._pos
        for line in data[:end].split(b"\n")[:-1]:
            at += len(line) + 1
            try:
                r = orjson.loads(line)
                self._apply(r)
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn line from a crash: the next append starts on a fresh line
            self._event(at, r)
        self._pos += end

    def _event(self, at: int, r: dict) -> None:
        """Note a record that changes the shard list (and where in the ledger it ends)."""
        if _is_shard_event(r):
            self.events.append((at, r))
            f = r.get("frame")
            if f:
                self.frame_end[f["log"]] = max(self.frame_end.get(f["log"], 0), f["at"] + f["bytes"])

    # ------------------------------------------------------------------------------ shard events

    @property
    def n_events(self) -> int:
        """Shard events seen so far (forgotten ones included): a mark for `events_since`."""
        return self.forgotten + len(self.events)

    def events_since(self, n: int) -> list[dict]:
        """The shard events after the first `n` (none of them forgotten: only applied ones are)."""
        return [r for _, r in self.events[max(0, n - self.forgotten):]]

    def shard_events_after(self, pos: int) -> list[dict]:
        """The shard events ending after ledger position `pos` (every one, for pos 0), read again
        from the file where some of them were forgotten."""
        if pos >= self._kept_after:
            return [r for end, r in self.events if end > pos]
        fd, out, at = self._handle(), [], 0
        data = os.pread(fd, self._pos, 0) if fd is not None else b""
        for line in data.split(b"\n")[:-1]:
            at += len(line) + 1
            try:
                r = orjson.loads(line)
            except ValueError:
                continue
            if at > pos and isinstance(r, dict) and _is_shard_event(r):
                out.append(r)
        return out

    def forget_events(self, upto: int, applied: int) -> None:
        """Drop the first events, among the `applied` first, that end at or before ledger position
        `upto` (a manifest written at `upto` holds what they did)."""
        k, limit = 0, min(len(self.events), applied - self.forgotten)
        while k < limit and self.events[k][0] <= upto:
            k += 1
        if k:
            self._kept_after = self.events[k - 1][0]
            del self.events[:k]
            self.forgotten += k

    def _apply(self, r: dict) -> None:
        e = r["e"]
        if e == "lease":
            if r["call"] not in self.finished:
                self.open[r["call"]] = r
        elif e == "send":
            c = r["call"]
            self.spent += float(r["cost"])
            self.n_calls += 1
            if c not in self.finished:
                self.cost[c] = float(r["cost"])
                self.open[c] = r
        elif e in OUTCOMES:
            c = r["call"]
            if c in self.finished or (c not in self.cost and c not in self.open):
                return
            self.finished.add(c)  # its cost goes: a writer that runs for long keeps one id per call
            self.open.pop(c, None)
            cost = self.cost.pop(c, None)
            if cost is not None and r.get("cost") is not None:  # what the call really cost replaces the estimate
                self.spent += float(r["cost"]) - cost
                cost = float(r["cost"])
            if cost is not None:  # a lease whose call never started cost nothing
                self.totals[e][0] += 1
                self.totals[e][1] += cost
        elif e == "carried":
            self.carried[0] += int(r["calls"])
            self.carried[1] += float(r["cost"])
            self.spent += float(r["cost"])
            self.n_calls += int(r["calls"])
        elif e == "quarantine":
            self.quarantined[r["shard"]] = int(r["rows"])
            self._quarantine[r["shard"]] = r
            self.ever_quarantined.add(r["shard"])
        elif e == "resolved":
            for s in r["shards"]:
                self.quarantined.pop(s, None)
                self._quarantine.pop(s, None)
        elif e == "store":
            self.header = r

    # ---------------------------------------------------------------------------------- leases

    @property
    def position(self) -> int:
        """Bytes read so far: a manifest written now reflects every record before this point."""
        return self._pos

    def knows(self, call: str | None) -> bool:
        """Whether `call` was sent (in flight or finished) according to this ledger."""
        return call in self.cost or call in self.finished

    def open_elsewhere(self) -> bool:
        """Whether a call without an outcome is not in flight in this process (another process's,
        live or dead, or one this process abandoned)."""
        with _LIVE_LOCK:
            return any(c not in _LIVE_CALLS for c in self.open)

    def quarantine_records(self) -> list[dict]:
        """The quarantine records not resolved yet."""
        return list(self._quarantine.values())

    def live_leases(self, *, record: bool = True) -> dict[str, dict]:
        """Sends without an outcome whose process may still answer; the others are recorded `lost`
        (unless `record=False`: a read-only look)."""
        live, now = {}, time.time()
        for call, r in list(self.open.items()):
            if r["host"] == HOST and r["pid"] == os.getpid() and r.get("start") == MY_START:
                with _LIVE_LOCK:
                    alive = call in _LIVE_CALLS
                why = "abandoned by this process (an exception stopped label() mid-call)"
            elif r["host"] == HOST:
                alive = _pid_alive(int(r["pid"]), r.get("start"))
                why = f"process {r['pid']} died before the answer was stored"
            else:
                alive = now - float(r["t"]) < self.lease_timeout_s
                why = f"lease of process {r['pid']} on {r['host']} expired after {self.lease_timeout_s:g} s"
            if alive:
                live[call] = r
            elif record:
                self.append({"e": "lost", "call": call, "why": why})
        return live

    # ---------------------------------------------------------------------------------- writing

    def send(self, ids: list[str], cost: float, call: str | None = None) -> str:
        """Record a call about to be sent (fsynced): its id, owner, ids and cost; `call`: the id
        of the lease it starts. Returns the call id."""
        return self._claim("send", ids, call, cost=float(cost))

    def lease(self, ids: list[str]) -> str:
        """Reserve ids for a call queued in a pool (not on the bill until its `send`)."""
        return self._claim("lease", ids, None)

    def _claim(self, kind: str, ids: list[str], call: str | None, **extra) -> str:
        new = call is None
        call = call or uuid.uuid4().hex[:16]
        with _LIVE_LOCK:
            _LIVE_CALLS.add(call)
        try:
            self.append({"e": kind, "call": call, "pid": os.getpid(), "host": HOST, "start": MY_START,
                         "at": _now(), "t": round(time.time(), 3), "n": len(ids), **extra, "ids": list(ids)},
                        sync=kind == "send")  # a lease need not survive a crash: its process would not
        except BaseException:
            if new:
                release(call)
            raise
        return call

    def append(self, record: dict, *, sync: bool = True) -> None:
        """Append one record (caller holds the folder lock); fsynced unless `sync=False`."""
        line = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY) + b"\n"  # compact, as json's (",", ":")
        fd = self._handle(create=True)
        size = os.fstat(fd).st_size
        if size and size != self._pos and os.pread(fd, 1, size - 1) != b"\n":  # at _pos a line has just ended
            line = b"\n" + line  # after a torn line, start a fresh one
        view = memoryview(line)
        while view:  # a full disk may take part of a line: write the rest, or raise (a torn line is skipped)
            view = view[os.write(fd, view):]
        self._unsynced = not sync
        if sync:
            os.fsync(fd)
        if size == self._pos and line[:1] != b"\n":  # caught up (we hold the lock): apply, don't re-read
            self._pos += len(line)
            self._apply(record)
            self._event(self._pos, record)
        else:
            self.refresh()

    def sync(self) -> None:
        """Make records appended with `sync=False` durable (before a manifest cites them)."""
        if self._unsynced and self._fd is not None:
            os.fsync(self._fd)
            self._unsynced = False

    def summary(self, live: dict[str, dict]) -> dict:
        """The bill by outcome; `live`: the leases in flight (from `live_leases`)."""
        unanswered = [c for c in self.open if c not in live and c in self.cost]  # dead, not recorded (read-only)
        totals = {k: list(v) for k, v in self.totals.items()}
        totals["lost"][0] += len(unanswered)
        totals["lost"][1] += sum(self.cost.get(c, 0.0) for c in unanswered)
        return {"calls": self.n_calls, "spent": self.spent,
                **{k: {"calls": v[0], "cost": v[1]} for k, v in totals.items()},
                "in_flight": {"calls": len(live), "cost": sum(self.cost.get(c, 0.0) for c in live),
                              "owners": sorted({f"pid {r['pid']} on {r['host']}" for r in live.values()})},
                "carried": {"calls": self.carried[0], "cost": self.carried[1]}}


def _is_shard_event(r: dict) -> bool:
    return r.get("e") in SHARD_EVENTS and (r["e"] != "done" or "entry" in r or "frame" in r)


def release(call: str) -> None:
    """This process no longer has `call` in flight (its outcome is recorded, or it was abandoned)."""
    with _LIVE_LOCK:
        _LIVE_CALLS.discard(call)
