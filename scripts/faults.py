"""Fault drill for the teacher-output store: is every payment on the bill, and is damage caught?

A real HTTP teacher (mentor.teachers.teacher_server on 127.0.0.1) counts every id it receives.
Labeling runs in real subprocesses (RemoteTeacher + a threads pool, as `mentor label` with
`distribute.engine: threads` does), and the drill
  1. SIGKILLs labeling at random moments (--kills times), then lets a run finish;
  2. runs two labeling processes at once on one fresh store;
  3. damages shards (a flipped byte in the data, a flipped id, a truncated file), deletes the
     manifest, then labels again (which must refuse to re-pay) and repairs with --repay;
  4. fills a small disk (a 96 KiB tmpfs, when run as root), then makes it read-only;
and prints, per scenario: duplicates and gaps in the store, ids the teacher received twice (and
whether each receipt is in the ledger), the ledger's total vs the teacher's own count, damaged
shards made vs detected, and rows that differ from the teacher's answer (undetected corruption).

    python scripts/faults.py --kills 20 --json benchmarks/faults.json
    python scripts/faults.py worker STORE URL N [--threads W] [--chunk C]   (one labeling process)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

N_CLASSES, PRICE = 4, 0.5


def expected_probs(ids) -> np.ndarray:
    """The teacher's answer as a pure function of the id, so any stored row can be checked."""
    k = np.array([int(str(i)[2:]) for i in ids], dtype=np.float64)[:, None]
    e = np.exp(np.sin(k * np.arange(1, N_CLASSES + 1) * 0.37))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class CountingTeacher:
    """Served over HTTP: answers `expected_probs` after `delay_s` (and, if given, once `gate` is
    set), counting every id received."""

    fingerprint, n_classes, cost_per_example = "fault-drill", N_CLASSES, PRICE

    def __init__(self, delay_s: float = 0.02, gate: threading.Event | None = None):
        self.delay_s, self.gate, self.received, self.requests = delay_s, gate, Counter(), 0
        self._lock = threading.Lock()

    def predict_proba(self, inputs, ids=None):
        with self._lock:
            self.received.update(str(i) for i in ids)
            self.requests += 1
        time.sleep(self.delay_s)
        if self.gate is not None:
            self.gate.wait(60)
        return expected_probs(ids)


def serve(teacher):
    """Start the HTTP teacher on a free port; returns (server, url)."""
    from mentor.teachers import teacher_server
    server = teacher_server(teacher, "127.0.0.1", 0)
    server.handle_error = lambda request, address: None  # a killed client's broken pipe is expected
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}/predict"


# ------------------------------------------------------------------------------------------ the worker

def worker(store: str, url: str, n: int, threads: int, chunk: int, go: str | None = None) -> int:
    """One labeling process: ids id0..id{n-1} through the store, as `mentor label` would. With
    `go`, it first writes `go.ready.PID` and waits for the file `go` (to start processes together)."""
    from mentor.teachers.pools import ThreadTeacherPool
    from mentor.errors import MentorError
    from mentor.store import TeacherStore
    from mentor.teachers import RemoteTeacher
    teacher = RemoteTeacher(url, N_CLASSES, batch_size=chunk, cost_per_example=PRICE, max_retries=1, backoff_s=0.01)
    ids = np.array([f"id{i}" for i in range(n)])
    batches = ((ids[i:i + chunk], np.zeros((len(ids[i:i + chunk]), 1), np.float32)) for i in range(0, n, chunk))
    try:
        store_ = TeacherStore(store, fingerprint=teacher.fingerprint, n_classes=N_CLASSES, shard_size=200)
        if go:
            Path(f"{go}.ready.{os.getpid()}").touch()
            while not os.path.exists(go):
                time.sleep(0.005)
        if threads:
            with ThreadTeacherPool(teacher, threads) as pool:
                store_.label(teacher, batches, pool=pool)
        else:
            store_.label(teacher, batches)
    except MentorError as e:  # what the CLI does: one message, exit 2
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def spawn(store: Path, url: str, n: int, threads: int, chunk: int, go: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, __file__, "worker", str(store), url, str(n), "--threads", str(threads),
                             "--chunk", str(chunk)] + (["--go", str(go)] if go else []),
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def together(store: Path, url: str, n: int, threads: int, chunk: int, k: int = 2) -> list[subprocess.Popen]:
    """`k` labeling processes on one store, released at the same moment once all have started."""
    go = store.parent / f"{store.name}.go"
    procs = [spawn(store, url, n, threads, chunk, go) for _ in range(k)]
    deadline = time.time() + 120
    while len(list(go.parent.glob(f"{go.name}.ready.*"))) < k and time.time() < deadline:
        if any(p.poll() is not None for p in procs):
            break
        time.sleep(0.01)
    go.touch()
    return procs


# ------------------------------------------------------------------------------------------ the checks

def sends(store: Path) -> list[dict]:
    """The ledger's `send` records (a line torn by a full disk or a kill is skipped, as the store does)."""
    out = []
    p = store / "_ledger.jsonl"
    for line in (p.read_text().splitlines() if p.exists() else []):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if r.get("e") == "send":
            out.append(r)
    return out


def ledger_ids(store: Path) -> Counter:
    """How many times the ledger says each id was sent."""
    out = Counter()
    for r in sends(store):
        out.update(r["ids"])
    return out


def audit(store: Path, received: Counter, n: int) -> dict:
    """The figures for one store: compare its rows, its ledger and the teacher's own count."""
    import warnings
    from mentor.store import TeacherStore
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TeacherStore.open(store) as st:
            ids, probs = st.read_all()
            status = st.status()
    billed = ledger_ids(store)
    valid = {f"id{i}" for i in range(n)}
    stored = ids.tolist()
    ok = np.array([x in valid for x in stored], bool)
    wrong = int((~ok).sum())
    if ok.any():
        wrong += int((np.abs(probs[ok] - expected_probs(ids[ok])).max(axis=1) > 1e-6).sum())
    twice = {i: c for i, c in received.items() if c > 1}
    return {
        "rows": len(stored), "duplicates": len(stored) - len(set(stored)), "gaps": len(valid - set(stored)),
        "wrong_rows": wrong,
        "teacher_received": sum(received.values()), "ids_sent_twice": len(twice),
        "resends_on_bill": sum(min(c, billed[i]) - 1 for i, c in twice.items()),
        "resends": sum(c - 1 for c in twice.values()),
        "unaccounted_sends": sum(max(0, c - billed[i]) for i, c in received.items()),
        "ledger_sends": sum(billed.values()),
        "billed_not_received": sum(max(0, c - received[i]) for i, c in billed.items()),
        "spent": status["spent"], "teacher_count_cost": PRICE * sum(received.values()),
        "lost_calls": status["lost"]["calls"], "failed_calls": status["failed"]["calls"],
        "in_flight_calls": status["in_flight"]["calls"],
        "quarantined": len(status["quarantined"]),
        "processes_that_sent": len({r["pid"] for r in sends(store)}),
        "warnings": [str(w.message)[:160] for w in caught],
    }


def wait_for(teacher: CountingTeacher, k: int, proc: subprocess.Popen, timeout: float = 60) -> None:
    start, deadline = teacher.requests, time.time() + timeout
    while teacher.requests < start + k and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)


# ------------------------------------------------------------------------------------------ scenarios

def kills(work: Path, n: int, n_kills: int, rng: random.Random, threads: int, chunk: int) -> dict:
    teacher = CountingTeacher()
    server, url = serve(teacher)
    store, killed = work / "kills", 0
    try:
        for _ in range(n_kills):
            proc = spawn(store, url, n, threads, chunk)
            wait_for(teacher, 1, proc)
            time.sleep(rng.uniform(0.0, 0.25))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                killed += 1
            proc.wait()
        proc = spawn(store, url, n, threads, chunk)
        _, err = proc.communicate(timeout=300)
        out = audit(store, teacher.received, n)
    finally:
        server.shutdown()
    return {"kills": killed, "final_exit": proc.returncode, "stderr": err.decode()[-300:], **out}


def two_at_once(work: Path, n: int, threads: int, chunk: int) -> dict:
    teacher = CountingTeacher()
    server, url = serve(teacher)
    store = work / "two"
    try:
        procs = together(store, url, n, threads, chunk)
        errs = [p.communicate(timeout=300)[1].decode() for p in procs]
        out = audit(store, teacher.received, n)
    finally:
        server.shutdown()
    return {"exits": [p.returncode for p in procs], "stderr": "".join(errs)[-300:], **out}


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def damage(work: Path, n: int, rng: random.Random, chunk: int) -> dict:
    """Damage three shards and delete the manifest; the store must detect all three, refuse to
    re-pay, keep its spend history, and re-pay only when told (`repair --repay`)."""
    from mentor.store import TeacherStore
    teacher = CountingTeacher(delay_s=0.0)
    server, url = serve(teacher)
    store = work / "damage"
    try:
        assert worker(str(store), url, n, 0, chunk) == 0
        with TeacherStore.open(store) as before:
            spent, calls = before.spent, before.n_calls
        shards = [store / s["file"] for s in before.manifest["shards"]]
        a, b, c = rng.sample(shards, 3)
        _flip(a, len(a.read_bytes()) // 2)  # a byte in the data pages
        raw = b.read_bytes()
        pos = raw.index(b"id", 8) + 2  # the first id's first digit: a flipped id
        _flip(b, pos)
        c.write_bytes(c.read_bytes()[: len(c.read_bytes()) // 2])  # truncated
        (store / "_manifest.json").unlink()
        sent_before = sum(teacher.received.values())
        code = worker(str(store), url, n, 0, chunk)  # must refuse: paid rows are quarantined
        resent_without_asking = sum(teacher.received.values()) - sent_before
        with TeacherStore.open(store) as after:
            kept = {"spent_before": spent, "spent_after_rebuild": after.spent, "calls_before": calls,
                    "calls_after_rebuild": after.n_calls}
        from mentor.cli import app
        from typer.testing import CliRunner
        repair = CliRunner().invoke(app, ["store", "repair", str(store), "--repay"])
        code2 = worker(str(store), url, n, 0, chunk)
        out = audit(store, teacher.received, n)
    finally:
        server.shutdown()
    return {"damaged_made": 3, "label_exit_while_quarantined": code, "resent_without_asking": resent_without_asking,
            **kept, "repair_exit": repair.exit_code, "label_exit_after_repay": code2, **out}


def disk_full(work: Path, n: int, chunk: int) -> dict:
    """A store on a 96 KiB tmpfs: labeling must stop with a clean error and a complete bill; after
    the disk grows it resumes; then read-only. Needs root (mount); otherwise says so."""
    mnt = Path(tempfile.mkdtemp(prefix="mentor-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mnt)], capture_output=True).returncode:
        return {"skipped": "cannot mount a small tmpfs here (needs root): disk-full not exercised"}
    teacher = CountingTeacher(delay_s=0.0)
    server, url = serve(teacher)
    store = mnt / "store"
    try:
        proc = spawn(store, url, n, 0, chunk)
        _, err = proc.communicate(timeout=300)
        full = {"exit_when_full": proc.returncode, "message": err.decode().strip()[-400:],
                "traceback": "Traceback" in err.decode(), "teacher_received_when_full": sum(teacher.received.values()),
                "billed_when_full": sum(ledger_ids(store).values())}
        subprocess.run(["mount", "-o", "remount,size=64m", str(mnt)], check=True)
        proc = spawn(store, url, n, 0, chunk)
        proc.communicate(timeout=300)
        full["exit_after_growing"] = proc.returncode
        subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
        proc = spawn(store, url, n + 100, 0, chunk)  # 100 more ids: must refuse, read-only
        _, err = proc.communicate(timeout=300)
        full.update({"exit_read_only": proc.returncode, "read_only_message": err.decode().strip()[-300:]})
        subprocess.run(["mount", "-o", "remount,rw", str(mnt)], check=True)
        out = audit(store, teacher.received, n)
    finally:
        server.shutdown()
        subprocess.run(["umount", str(mnt)], capture_output=True)
        shutil.rmtree(mnt, ignore_errors=True)
    return {**full, **out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=3000, help="ids to label")
    ap.add_argument("--kills", type=int, default=20, help="SIGKILLs at random moments")
    ap.add_argument("--threads", type=int, default=4, help="threads pool of each labeling process")
    ap.add_argument("--chunk", type=int, default=50, help="ids per teacher call")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--only", default="kills,two,damage,disk", help="scenarios to run")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="mentor-faults-"))
    todo = {"kills": lambda: kills(work, args.n, args.kills, rng, args.threads, args.chunk),
            "two": lambda: two_at_once(work, args.n, args.threads, args.chunk),
            "damage": lambda: damage(work, args.n, rng, args.chunk),
            "disk": lambda: disk_full(work, args.n, args.chunk)}
    results = {}
    try:
        for name in args.only.split(","):
            t = time.time()
            results[name] = {**todo[name](), "seconds": round(time.time() - t, 1)}
            print(f"== {name}")
            for k, v in results[name].items():
                print(f"  {k}: {v}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    bad = {k: (r.get("unaccounted_sends", 0), r.get("wrong_rows", 0)) for k, r in results.items()}
    print("unaccounted sends / undetected wrong rows per scenario:", bad)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, **results}, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        wp = argparse.ArgumentParser()
        wp.add_argument("cmd")
        wp.add_argument("store")
        wp.add_argument("url")
        wp.add_argument("n", type=int)
        wp.add_argument("--threads", type=int, default=0)
        wp.add_argument("--chunk", type=int, default=50)
        wp.add_argument("--go", default=None)
        a = wp.parse_args()
        sys.exit(worker(a.store, a.url, a.n, a.threads, a.chunk, a.go))
    main()
