"""The store's bill and integrity: a ledger that is the bill, leases across processes, damaged
shards quarantined (never silently used or re-paid), a lost manifest rebuilt, clean errors on a
read-only or full disk. Real subprocesses, a real HTTP teacher, real Parquet files."""

import contextlib
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import warnings
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mentor.errors import StoreError
from mentor.store import MANIFEST_NAME, StoreWarning, TeacherStore

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("faults", ROOT / "scripts" / "faults.py")
faults = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(faults)

C = 4
IDS = np.array([f"id{i}" for i in range(400)])


class Teacher:
    """In-process teacher with the drill's answers; counts the ids it is asked about."""

    fingerprint, n_classes, cost_per_example = "t1", C, 0.5

    def __init__(self):
        self.asked = Counter()

    def predict_proba(self, inputs, ids=None):
        self.asked.update(ids)
        return faults.expected_probs(ids)


def chunks(ids, size=40):
    for i in range(0, len(ids), size):
        yield ids[i:i + size], np.zeros((len(ids[i:i + size]), 1))


def labeled(path, ids=IDS, shard_size=100, size=40):
    store = TeacherStore(path, fingerprint="t1", n_classes=C, shard_size=shard_size)
    teacher = Teacher()
    store.label(teacher, chunks(ids, size))
    return store, teacher


def ledger(path) -> list[dict]:
    return [json.loads(line) for line in (Path(path) / "_ledger.jsonl").read_text().splitlines()]


def cli(*args, timeout=120):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "mentor.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


# ------------------------------------------------------------------------------------------ the bill, leases

@pytest.mark.slow
def test_two_processes_with_thread_pools_never_send_an_id_twice(tmp_path):
    """Two labeling processes (threads engine) on one store, a real HTTP teacher counting ids."""
    teacher = faults.CountingTeacher(delay_s=0.01)
    server, url = faults.serve(teacher)
    n, store = 1500, tmp_path / "store"
    try:
        procs = faults.together(store, url, n, threads=4, chunk=25)
        errs = [p.communicate(timeout=240)[1].decode() for p in procs]
    finally:
        server.shutdown()
    assert [p.returncode for p in procs] == [0, 0], errs
    assert sum(teacher.received.values()) == n and max(teacher.received.values()) == 1  # each id sent once
    final = TeacherStore.open(store)
    assert len(final) == n and final.spent == pytest.approx(0.5 * n)
    assert faults.ledger_ids(store) == teacher.received  # the bill is the teacher's own count
    owners = {r["pid"] for r in ledger(store) if r["e"] == "send"}
    assert len(owners) == 2  # both processes did part of the work
    np.testing.assert_allclose(final.read(IDS[:100].tolist()), faults.expected_probs(IDS[:100]), atol=1e-6)


def test_a_call_cut_off_by_a_kill_is_on_the_bill_and_shown_in_flight_then_lost(tmp_path):
    gate = threading.Event()
    teacher = faults.CountingTeacher(delay_s=0, gate=gate)  # the first call runs until we kill
    server, url = faults.serve(teacher)
    store = tmp_path / "store"
    try:
        proc = faults.spawn(store, url, 50, threads=0, chunk=50)
        faults.wait_for(teacher, 1, proc)
        assert proc.poll() is None and teacher.requests == 1
        live = cli("store", "status", str(store))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        gate.set()
        server.shutdown()
    assert live.returncode == 0, live.stderr
    assert "in flight  25 for 1 calls running now (pid" in live.stdout  # 50 ids at 0.5, leased
    st = TeacherStore.open(store)
    assert len(st) == 0 and st.spent == pytest.approx(25.0) and st.n_calls == 1  # main: 0.0, nothing known
    s = st.status()
    assert s["lost"] == {"calls": 1, "cost": pytest.approx(25.0)} and s["in_flight"]["calls"] == 0
    assert "lost       25 for 1 calls that never returned" in cli("store", "status", str(store)).stdout


def test_an_exception_mid_call_releases_the_lease_in_this_process(tmp_path):
    class Interrupted(Teacher):
        def predict_proba(self, inputs, ids=None):
            raise KeyboardInterrupt

    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    with pytest.raises(KeyboardInterrupt):
        store.label(Interrupted(), chunks(IDS[:40]))
    teacher = Teacher()
    assert store.label(teacher, chunks(IDS[:40])).n_new == 40  # not blocked by its own dead lease
    assert store.spent == pytest.approx(40.0) and store.status()["failed"]["calls"] == 1


# ------------------------------------------------------------------------------------------ damage

def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def test_flipped_byte_is_quarantined_never_used_and_not_repaid_without_asking(tmp_path):
    store, _ = labeled(tmp_path)
    shard = store.manifest["shards"][1]
    f = tmp_path / shard["file"]
    _flip(f, len(f.read_bytes()) // 2)  # main used this row silently (one summed to 1.73)
    with pytest.warns(StoreWarning, match=rf"{shard['file']} is damaged.*{shard['rows']} paid rows"):
        again = TeacherStore.open(tmp_path)
    assert (tmp_path / "_quarantine" / shard["file"]).exists() and not f.exists()
    assert len(again) == len(IDS) - shard["rows"]
    ids, probs = again.read_all()
    np.testing.assert_allclose(probs, faults.expected_probs(ids), atol=1e-6)  # nothing wrong is served
    with pytest.raises(StoreError, match="quarantined.*store repair"):
        again.read(IDS)
    teacher = Teacher()
    with pytest.raises(StoreError, match="labeling stopped before sending anything.*--repay"):
        again.label(teacher, chunks(IDS))
    assert not teacher.asked
    spent = again.spent
    assert again.repair(repay=True)["repay"] == [shard["file"]]  # the user's explicit choice
    assert again.label(teacher, chunks(IDS)).n_new == shard["rows"]
    assert sum(teacher.asked.values()) == shard["rows"] and again.spent == pytest.approx(spent + 0.5 * shard["rows"])
    np.testing.assert_allclose(again.read(IDS), faults.expected_probs(IDS), atol=1e-6)


def flip_an_id(f: Path) -> str:
    """Rewrite shard `f` as valid Parquet with one id's bit flipped ("id17" -> "id07"), metadata kept."""
    table = pq.read_table(f)
    ids = table.column("id").to_pylist()
    ids[17] = ids[17][:2] + chr(ord(ids[17][2]) ^ 1) + ids[17][3:]
    pq.write_table(table.set_column(0, "id", pa.array(ids, pa.string())), f)
    return ids[17]


def test_flipped_id_is_detected_and_the_bogus_id_never_stored(tmp_path):
    store, _ = labeled(tmp_path, shard_size=40)  # one shard per 40-id call
    f = tmp_path / store.manifest["shards"][0]["file"]
    bogus = flip_an_id(f)  # main kept the bogus id and paid again for the real one
    with pytest.warns(StoreWarning, match=f"{f.name} is damaged"):
        again = TeacherStore.open(tmp_path)
    teacher = Teacher()
    with pytest.raises(StoreError, match="before sending anything"):
        again.label(teacher, chunks(IDS))
    assert not teacher.asked and len(again) == len(IDS) - 40 and bogus not in again.stored_ids()


def test_truncated_shard_gives_a_clean_error_and_the_cli_shows_it(tmp_path):
    store, _ = labeled(tmp_path)
    shard = store.manifest["shards"][0]
    f = tmp_path / shard["file"]
    f.write_bytes(f.read_bytes()[:100])
    r = cli("store", "status", str(tmp_path))  # opening quarantines it (a warning, no traceback)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"quarantined  {f.name}: {shard['rows']} paid rows" in r.stdout
    assert r.stderr.startswith("warning: ") and "truncated" in r.stderr
    r = cli("store", "repair", str(tmp_path))
    assert r.returncode == 0 and "still quarantined" in r.stdout
    with pytest.raises(StoreError, match=f"{f.name}.*{shard['rows']} paid rows"):
        TeacherStore.open(tmp_path).label(Teacher(), chunks(IDS))


def test_a_shard_damaged_while_open_is_caught_when_read(tmp_path):
    store, _ = labeled(tmp_path)
    f = tmp_path / store.manifest["shards"][0]["file"]
    _flip(f, len(f.read_bytes()) // 2)
    with pytest.raises(StoreError, match="damaged"), pytest.warns(StoreWarning):
        store.read(IDS)


def test_restored_shard_is_taken_back_by_repair(tmp_path):
    store, _ = labeled(tmp_path)
    f = tmp_path / store.manifest["shards"][0]["file"]
    good = f.read_bytes()
    f.write_bytes(good[:50])
    with pytest.warns(StoreWarning):
        again = TeacherStore.open(tmp_path)
    (tmp_path / "_quarantine" / f.name).write_bytes(good)  # the user restores it from a backup
    assert again.repair()["restored"] == [f.name]
    teacher = Teacher()
    assert again.label(teacher, chunks(IDS)).n_new == 0 and not teacher.asked


@pytest.mark.parametrize("how", ["deleted", "garbled"])
def test_lost_manifest_is_rebuilt_keeping_the_spend_history(tmp_path, how):
    store, teacher = labeled(tmp_path, shard_size=60)  # merges: merged shards carry no cost of their own
    spent, calls = store.spent, store.n_calls
    assert spent == pytest.approx(0.5 * len(IDS)) and calls == 10
    m = tmp_path / MANIFEST_NAME
    m.unlink() if how == "deleted" else m.write_text('{"format": 1, "shards": [')
    with pytest.warns(StoreWarning, match=f"rebuilt it from .*spent {spent:g} over {calls} calls kept"):
        again = TeacherStore.open(tmp_path)  # main: spent 0.0, calls 0 after a deletion
    assert (again.spent, again.n_calls, len(again)) == (pytest.approx(spent), calls, len(IDS))
    assert again.label(teacher, chunks(IDS)).n_new == 0
    np.testing.assert_allclose(again.read(IDS), faults.expected_probs(IDS), atol=1e-6)


def test_status_of_something_that_is_not_a_store_exits_2(tmp_path):
    r = cli("store", "status", str(tmp_path))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "is not a teacher-output store" in " ".join(r.stderr.split())


def test_status_of_a_run_config_finds_its_store(tmp_path):
    labeled(tmp_path / "shared")
    cfg = tmp_path / "run.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\ndata: {{name: digits}}\nstore: {{path: {tmp_path / 'shared'}}}\n")
    r = cli("store", "status", str(cfg))
    assert r.returncode == 0, r.stderr
    assert "rows         400 stored" in r.stdout and "spent        200 over 10 teacher calls" in r.stdout


# ------------------------------------------------------------------------------------------ read-only, full disk

@contextlib.contextmanager
def read_only(path: Path):
    """`path` read-only for this process: chmod for a normal user; root ignores modes, so a
    read-only bind mount (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        for p in [path, *path.iterdir()]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            yield
        finally:
            for p in [path, *path.iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)
        return
    if subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True).returncode:
        pytest.skip("cannot make a read-only mount here")
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(path)], check=True, capture_output=True)
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


def test_read_only_store_reads_and_refuses_to_label_cleanly(tmp_path):
    store, _ = labeled(tmp_path / "s")
    store.close()
    with read_only(tmp_path / "s"), TeacherStore.open(tmp_path / "s") as ro:
        assert not ro.writable and len(ro) == len(IDS)
        np.testing.assert_allclose(ro.read(IDS), faults.expected_probs(IDS), atol=1e-6)
        teacher = Teacher()
        with pytest.raises(StoreError, match=r"read-only.*400 stored rows are kept.*nothing was sent"):
            ro.label(teacher, chunks(np.array([f"id{i}" for i in range(500)])))
        assert not teacher.asked
        r = cli("store", "status", str(tmp_path / "s"))
        assert r.returncode == 0 and "(read-only)" in r.stdout, r.stderr


def test_shards_are_parsed_from_arrow_memory_never_from_python_bytes(tmp_path, monkeypatch):
    """Parquet parsed from Python `bytes` leaves Arrow's worker threads a buffer whose release
    needs the GIL; released while the interpreter exits, it aborted the process after its work
    was done (`mentor store status` exited with SIGABRT in about 1 run in 200). Verifying on
    open, `verify()` and adopting an orphan shard all read the file into memory first: Arrow's."""
    store, _ = labeled(tmp_path / "s")
    store.close()
    more = np.array([f"id{i}" for i in range(400, 500)])
    labeled(tmp_path / "o", ids=more)[0].close()  # an orphan shard of new ids: adopted as it is
    shutil.copy(tmp_path / "o" / "shard-000001.parquet", tmp_path / "s" / "shard-000009.parquet")
    given = []
    real = pa.BufferReader

    def spy(obj):
        given.append(type(obj))
        return real(obj)

    monkeypatch.setattr(pa, "BufferReader", spy)
    with TeacherStore.open(tmp_path / "s") as again:
        again.verify()
        assert len(again) == len(IDS) + len(more)
        np.testing.assert_allclose(again.read(more), faults.expected_probs(more), atol=1e-6)
    assert len(given) >= 2 * 4 + 1 and set(given) == {pa.Buffer}, given


@pytest.mark.slow
def test_store_status_exits_cleanly_every_time(tmp_path):
    """The same abort seen from outside: many `mentor store status` runs, none may end in a
    signal or an Arrow/C++ abort message once the report is printed."""
    store, _ = labeled(tmp_path / "s")
    store.close()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mentor.cli", "store", "status", str(tmp_path / "s")]
    bad = []
    for _ in range(8):
        runs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                for _ in range(3)]
        for r in runs:
            out, err = r.communicate(timeout=120)
            if r.returncode or "terminate called" in err or "400 stored" not in out.replace(",", ""):
                bad.append((r.returncode, err[-300:]))
    assert not bad, bad


@contextlib.contextmanager
def small_disk(kib: int):
    if os.geteuid() != 0:
        pytest.skip("a small tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="mentor-full-"))
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={kib}k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)
        mnt.rmdir()


def test_full_disk_stops_with_a_clean_error_and_a_complete_bill(tmp_path):
    ids = np.array([f"id{i}" for i in range(4000)])
    with small_disk(128) as mnt:
        store = TeacherStore(mnt / "s", fingerprint="t1", n_classes=C, shard_size=200)
        teacher = Teacher()
        with pytest.raises(StoreError, match=r"No space left on device.*rows stored before are kept.*free space"):
            store.label(teacher, chunks(ids, 50))
        assert not list((mnt / "s").glob("*.tmp"))
        billed = faults.ledger_ids(mnt / "s")
        assert not teacher.asked - billed  # every id the teacher answered is on the bill
        store.close()
        with TeacherStore.open(mnt / "s") as again:
            assert again.spent == pytest.approx(0.5 * sum(billed.values()))
            stored, probs = again.read_all()
        np.testing.assert_allclose(probs, faults.expected_probs(stored), atol=1e-6)


def test_damaged_merged_shard_is_caught_even_with_the_manifest_gone(tmp_path):
    """Merges are logged in the ledger with their checksums, so a rebuilt manifest still verifies them."""
    store, teacher = labeled(tmp_path, shard_size=60)
    merged = next(e for e in store.manifest["shards"] if e["rows"] >= 60)
    store.close()
    _flip(tmp_path / merged["file"], merged["bytes"] // 2)
    (tmp_path / MANIFEST_NAME).unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        again = TeacherStore.open(tmp_path)
    said = [str(w.message) for w in caught if issubclass(w.category, StoreWarning)]
    assert any("was missing: rebuilt it" in m for m in said)
    assert any(f"{merged['file']} is damaged: it does not match the checksum" in m for m in said)
    assert len(again) == len(IDS) - merged["rows"] and again.spent == pytest.approx(0.5 * len(IDS))
    with pytest.raises(StoreError, match="before sending anything"):
        again.label(teacher, chunks(IDS))


def test_waiting_for_another_processs_call_says_so_then_finishes(tmp_path):
    """Ids leased by another live process are not sent; label() says it is waiting (instead of
    looking hung) and, once that process is gone, labels them itself."""
    import numpy as np

    from mentor.store import StoreWarning, TeacherStore
    from mentor.store.ledger import HOST, LEDGER_NAME, _proc_start

    class Teacher:
        fingerprint, n_classes, cost_per_example = "t", 2, 1.0

        def predict_proba(self, inputs, ids=None):
            return np.tile([[0.3, 0.7]], (len(inputs), 1))

    TeacherStore(tmp_path / "s", fingerprint="t", n_classes=2)
    # another process (a child here, so it lingers as a zombie until reaped: that counts as ended)
    other = subprocess.Popen(["sleep", "3"])
    pid = other.pid
    with open(tmp_path / "s" / LEDGER_NAME, "a") as f:  # what that process's `send` line looks like
        f.write(json.dumps({"e": "send", "call": "other-call", "pid": pid, "host": HOST, "start": _proc_start(pid),
                            "at": "now", "t": 0, "n": 2, "cost": 2.0, "ids": ["a", "b"]}) + "\n")
    ids = np.array(["a", "b", "c"])
    with pytest.warns(StoreWarning, match="2 ids are being labeled by another process"):
        TeacherStore.open(tmp_path / "s").label(Teacher(), [(ids, np.zeros((3, 1)))])
    assert other.poll() is not None  # it waited for the other process to end
    assert len(TeacherStore.open(tmp_path / "s")) == 3
