"""The row log: small teacher calls are kept as fsynced frames and written as Parquet once per
`shard_size` rows. Rows in the log are stored rows (read, never re-paid); a torn or orphan frame
never hides a committed one; a damaged frame is caught like a damaged shard. Real files, no mocks
of the file system (monkeypatch only stops a run at a chosen moment, as a kill would)."""

import contextlib
import json
import os
import warnings

import numpy as np
import pandas as pd
import pytest

from mentor.errors import StoreError
from mentor.store import StoreWarning, TeacherStore
from mentor.store import rowlog

C = 4
IDS = np.array([f"r{i}" for i in range(200)])


def probs_of(ids) -> np.ndarray:
    k = np.array([int(i[1:]) for i in ids], dtype=np.float64)[:, None]
    e = np.exp(np.sin(k * np.arange(1, C + 1) * 0.29))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class Teacher:
    fingerprint, n_classes, cost_per_example = "log-test", C, 0.5

    def __init__(self):
        self.asked = []

    def predict_proba(self, inputs, ids=None):
        self.asked += list(ids)
        return probs_of(ids)


def chunks(ids, size=20):
    for i in range(0, len(ids), size):
        yield ids[i:i + size], np.zeros((len(ids[i:i + size]), 1))


def logs(path):
    return sorted(p for p in path.iterdir() if rowlog.is_log(p.name))


def unflushed(path, ids, monkeypatch, shard_size=10**6):
    """A store whose run stopped before its end-of-run flush (as a kill there would): its rows are
    frames of the row log, committed in the ledger."""
    store = TeacherStore(path, fingerprint="log-test", n_classes=C, shard_size=shard_size)
    monkeypatch.setattr(store, "_checkpoint", lambda: None)
    store.label(Teacher(), chunks(ids))
    store.close()
    return store


def test_small_calls_become_one_shard_per_shard_size_rows_and_no_log_is_left(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=50)
    store.label(Teacher(), chunks(IDS, 20))  # 10 calls of 20 rows
    assert [s["rows"] for s in store.manifest["shards"]] == [60, 60, 60, 20]  # flushed at >= 50 rows, then the rest
    assert not logs(tmp_path) and store.manifest["pending"] == []
    table = pd.read_parquet(tmp_path)
    assert len(table) == len(IDS) and set(table["teacher"]) == {"log-test"}  # every row, for Parquet readers
    assert store.read([]).shape == (0, C) and store.read_extras([]).num_rows == 0
    store.label(Teacher(), chunks(np.array([f"r{i}" for i in range(200, 240)]), 20))
    assert [s["rows"] for s in store.manifest["shards"]] == [60, 60, 60, 60]  # the short one merged with the next
    ledger = [json.loads(x) for x in (tmp_path / "_ledger.jsonl").read_text().splitlines()]
    assert sum(r["e"] == "done" and "frame" in r for r in ledger) == 12 and sum(r["e"] == "flush" for r in ledger) == 5


def test_rows_in_the_row_log_are_read_and_never_paid_again(tmp_path, monkeypatch):
    unflushed(tmp_path, IDS[:100], monkeypatch)
    assert logs(tmp_path) and not list(tmp_path.glob("shard-*.parquet"))
    again = TeacherStore.open(tmp_path)
    assert len(again) == 100 and again.manifest["pending"] and again.status()["unflushed_rows"] == 100
    from mentor.store.status import status
    assert "100 stored in 0 shards and the row log (100 rows" in status(tmp_path)
    order = np.random.default_rng(0).permutation(100)
    assert np.array_equal(again.read(IDS[order]), probs_of(IDS[order]))
    ids, probs = again.read_all()
    assert ids.tolist() == IDS[:100].tolist() and np.array_equal(probs, probs_of(IDS[:100]))
    teacher = Teacher()
    again.label(teacher, chunks(IDS))
    assert teacher.asked == IDS[100:].tolist() and again.spent == pytest.approx(0.5 * len(IDS))
    assert not logs(tmp_path) and np.array_equal(TeacherStore.open(tmp_path).read(IDS), probs_of(IDS))


def test_a_torn_frame_never_hides_the_frames_after_it(tmp_path, monkeypatch):
    unflushed(tmp_path, IDS[:40], monkeypatch)
    log = logs(tmp_path)[0]
    frame = log.read_bytes()[:200]
    with open(log, "ab") as f:  # a writer that does not write zeros ahead (an older mentor), killed mid-frame
        f.write(frame)
    again = TeacherStore.open(tmp_path)
    monkeypatch.setattr(again, "_checkpoint", lambda: None)
    again.label(Teacher(), chunks(IDS[:80]))  # an older writer's torn bytes past the zeros: a new log
    again.close()
    third = TeacherStore.open(tmp_path)
    assert len(third) == 80 and np.array_equal(third.read(IDS[:80]), probs_of(IDS[:80]))
    assert third.spent == pytest.approx(40.0)


def test_a_frame_torn_in_the_zeros_written_ahead_is_cut_once_and_never_reloaded_for(tmp_path, monkeypatch):
    """This version's writer, killed mid-frame, leaves part of a frame at the end of the last
    committed one, inside the zeros the log grows by. The next writer adopts what is sound and
    cuts the torn bytes: its calls are stored after them, and it does not reload the store on every
    call because the log still looks like a crashed writer's (it did, before the cut)."""
    first = unflushed(tmp_path, IDS[:40], monkeypatch)
    log = logs(tmp_path)[0]
    end = first._ledger.frame_end[log.name]
    assert log.stat().st_size % rowlog.ROOM == 0 and log.stat().st_size > end  # zeros ahead
    torn = log.read_bytes()[:200]
    fd = os.open(log, os.O_WRONLY)
    os.pwrite(fd, torn, end)
    os.close(fd)
    again = TeacherStore.open(tmp_path)
    monkeypatch.setattr(again, "_checkpoint", lambda: None)
    loads, load = [], again._load
    monkeypatch.setattr(again, "_load", lambda: (loads.append(1), load())[1])
    teacher = Teacher()
    again.label(teacher, chunks(IDS[:200]))  # 8 calls with new ids
    again.close()
    assert len(loads) <= 1 and sorted(teacher.asked) == sorted(IDS[40:200].tolist())
    third = TeacherStore.open(tmp_path)
    assert len(third) == 200 and np.array_equal(third.read(IDS), probs_of(IDS))
    assert third.spent == pytest.approx(100.0)


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="names open files through /proc (Linux)")
def test_small_calls_sync_the_log_data_alone_once_it_has_room(tmp_path, monkeypatch):
    """Frames land in zeros written ahead: after the first call (which writes the log's first
    step of zeros), a call's frame needs fdatasync alone, not an fsync that grows the file."""
    syncs = {"fsync": [], "fdatasync": []}
    real_fsync, real_fdatasync = os.fsync, rowlog._fdatasync
    monkeypatch.setattr(os, "fsync", lambda fd: (syncs["fsync"].append(os.readlink(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(rowlog, "_fdatasync", lambda fd: (syncs["fdatasync"].append(
        os.readlink(f"/proc/self/fd/{fd}")), real_fdatasync(fd))[1])
    unflushed(tmp_path, IDS[:200], monkeypatch)  # 10 calls of 20 rows
    on_logs = {k: [p for p in v if rowlog.is_log(os.path.basename(p))] for k, v in syncs.items()}
    assert len(on_logs["fsync"]) == 1 and len(on_logs["fdatasync"]) == 9


def test_a_disk_with_room_for_the_answers_but_not_the_zeros_ahead_stores_them_all():
    """The zeros a log grows by are an optimisation: on a disk too small for them, every answer
    that fits is still stored (they took the first answer's place before the fallback)."""
    from test_store_trust import small_disk
    with small_disk(256) as mnt:
        store = TeacherStore(mnt / "s", fingerprint="log-test", n_classes=C, shard_size=10**6)
        store._checkpoint = lambda: None
        teacher = Teacher()
        store.label(teacher, chunks(IDS))
        log = logs(mnt / "s")[0]
        assert log.stat().st_size == store._ledger.frame_end[log.name]  # no zeros ahead: no room
        store.close()
        again = TeacherStore.open(mnt / "s")
        assert len(again) == len(IDS) and np.array_equal(again.read(IDS), probs_of(IDS))
        assert again.spent == pytest.approx(0.5 * len(IDS)) and len(teacher.asked) == len(IDS)
        again.close()


def test_row_offsets_kept_per_frame_match_the_parts_and_reads(tmp_path):
    """Each frame extends the row offsets by one part (not a recount of every part per call);
    they must equal the recount, through flushes and merges, and reads must follow them."""
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=50)
    store._checkpoint = lambda: None
    store.label(Teacher(), chunks(IDS[:130], 7))
    kept = store._offsets.copy()
    store._update_offsets()
    assert np.array_equal(kept, store._offsets) and kept[-1] == 130
    assert np.array_equal(store.read(IDS[129::-1]), probs_of(IDS[129::-1]))


def killed_before_commit(other, ids):
    """`other` labels `ids` and is killed between its frame and its commit line (no failure
    record, no checkpoint: a killed process writes neither)."""
    append = other._ledger.append

    def killed(record, **kw):
        if record["e"] == "done":
            raise KeyboardInterrupt
        return append(record, **kw)

    other._ledger.append = killed
    other._checkpoint = other._record_failure = lambda *a: None
    with pytest.raises(KeyboardInterrupt):
        other.label(Teacher(), chunks(ids))
    other._ledger.append = append


def test_an_answer_written_but_not_committed_is_adopted_even_after_later_frames(tmp_path, monkeypatch):
    """Another writer is killed between its frame and its commit line while this one's call is in
    flight; this one then appends after the orphan frame. The orphan is adopted, not lost."""
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)
    monkeypatch.setattr(store, "_checkpoint", lambda: None)
    store.label(Teacher(), chunks(IDS[:20]))

    other = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)  # opened earlier

    class DiesMeanwhile(Teacher):
        def predict_proba(self, inputs, ids=None):
            killed_before_commit(other, IDS[100:120])
            return super().predict_proba(inputs, ids)

    store.label(DiesMeanwhile(), chunks(IDS[20:40]))
    assert any(r.get("note") == "adopted after a crash" for _, r in store._ledger.events)  # by the writer
    store.close()
    again = TeacherStore.open(tmp_path)
    want = np.concatenate([IDS[:40], IDS[100:120]])
    assert again.stored_ids() == set(want.tolist()) and np.array_equal(again.read(want), probs_of(want))
    assert again.spent == pytest.approx(30.0)  # 60 ids at 0.5: the orphan's call was billed before it was sent
    teacher = Teacher()
    again.label(teacher, chunks(want))
    assert teacher.asked == []


def test_a_damaged_frame_is_quarantined_and_not_paid_again_without_asking(tmp_path, monkeypatch):
    unflushed(tmp_path, IDS[:60], monkeypatch)
    log = logs(tmp_path)[0]
    data = bytearray(log.read_bytes())
    second = list(rowlog.scan(bytes(data)))[1][0]
    data[second + rowlog.HEADER + 40] ^= 0x01
    log.write_bytes(bytes(data))
    with pytest.warns(StoreWarning, match=rf"{log.name}@{second} is damaged.*20 paid rows"):
        again = TeacherStore.open(tmp_path)
    assert again.stored_ids() == set(IDS[:20].tolist()) | set(IDS[40:60].tolist())
    teacher = Teacher()
    with pytest.raises(StoreError, match="before sending anything"):
        again.label(teacher, chunks(IDS[:60]))
    assert teacher.asked == []
    again.repair(repay=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", StoreWarning)
        again.label(teacher, chunks(IDS[:60]))
    assert teacher.asked == IDS[20:40].tolist() and np.array_equal(again.read(IDS[:60]), probs_of(IDS[:60]))


def test_a_lost_manifest_is_rebuilt_with_the_row_log(tmp_path, monkeypatch):
    unflushed(tmp_path, IDS[:60], monkeypatch, shard_size=30)  # shards and unflushed frames both
    (tmp_path / "_manifest.json").unlink()
    with pytest.warns(StoreWarning, match="rebuilt"):
        again = TeacherStore.open(tmp_path)
    assert len(again) == 60 and np.array_equal(again.read(IDS[:60]), probs_of(IDS[:60]))
    assert again.spent == pytest.approx(30.0)


def test_a_ledger_line_the_full_disk_cut_is_never_counted(tmp_path):
    """A full disk may take only part of a line (write() returns short): the record must then fail,
    not be counted in memory while the file holds a torn line (the bill and the file disagreed)."""
    from test_store_trust import small_disk

    from mentor.store.ledger import Ledger
    with small_disk(64) as mnt:
        ledger, again = Ledger(mnt), Ledger(mnt)
        try:
            ledger.append({"e": "store", "pad": "x" * 3900})  # most of the file's first 4 KiB page
            fd = os.open(mnt / "filler", os.O_WRONLY | os.O_CREAT)  # then the rest of the disk
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * 4096)
            os.close(fd)
            with pytest.raises(OSError):
                ledger.send([f"id{i}" for i in range(40)], cost=20.0)  # crosses into a page with no room
            assert ledger.spent == 0 and ledger.n_calls == 0
            (mnt / "filler").unlink()
            ledger.send(["a", "b"], cost=1.0)
            again.refresh()
            assert again.spent == ledger.spent == 1.0 and again.n_calls == 1
        finally:
            ledger.close()
            again.close()


def test_a_labeler_alone_on_its_store_lists_the_folder_on_few_calls(tmp_path, monkeypatch):
    """Looking for a crashed writer's leftovers lists the folder; alone on the store, nothing can
    leave any, so 50 calls list it only after a load or a change of the folder's names."""
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)
    listed = []
    real = os.listdir
    monkeypatch.setattr(os, "listdir", lambda p=".": listed.append(p) or real(p))
    teacher = Teacher()
    store.label(teacher, chunks(np.array([f"r{i}" for i in range(1000)])))
    assert len(teacher.asked) == 1000
    assert len(listed) <= 3, len(listed)  # 50 before


def test_a_shard_left_without_its_ledger_line_during_a_run_is_adopted_not_paid_again(tmp_path):
    """Another process's `write()` killed after its shard but before its ledger line leaves a shard
    only the folder's names show (no ledger line, no call in flight): the next call still finds
    and adopts it, so its ids are not sent to the teacher."""
    import shutil
    import time
    elsewhere = TeacherStore(tmp_path / "elsewhere", fingerprint="log-test", n_classes=C)
    elsewhere.write(IDS[100:120], probs_of(IDS[100:120]))
    shard = next(p for p in (tmp_path / "elsewhere").iterdir() if p.name.startswith("shard-"))
    store = TeacherStore(tmp_path / "s", fingerprint="log-test", n_classes=C, shard_size=10**6)
    teacher = Teacher()

    def batches():
        yield from chunks(IDS[:20])
        time.sleep(0.02)  # past the file system's timestamp tick
        shutil.copy(shard, tmp_path / "s" / "shard-009999.parquet")
        yield from chunks(IDS[100:120])

    store.label(teacher, batches())
    assert teacher.asked == IDS[:20].tolist()
    assert np.array_equal(store.read(IDS[100:120]), probs_of(IDS[100:120]))


def one_per_call(ids):
    for i in ids:
        yield np.array([i]), np.zeros((1, 1))


def test_a_service_storing_one_answer_per_call_does_not_keep_every_ledger_event(tmp_path, monkeypatch):
    """`label(..., checkpoint=False)` once per request (what `mentor serve --cascade` does) held every
    call's ledger event in memory (~0.8 kB each) for as long as it ran; the manifest is now written
    at a flush once many are held, and the events it covers are forgotten. Nothing stored is lost:
    a lost manifest is rebuilt from the ledger file, and another process reads every row."""
    from mentor.store import core
    monkeypatch.setattr(core, "EVENTS_HELD", 16)
    ids = np.array([f"r{i}" for i in range(200)])
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10)
    for chunk in one_per_call(ids):
        store.label(Teacher(), [chunk], checkpoint=False)
    assert len(store._ledger.events) < 16 + 12 and store._ledger.forgotten > 150
    assert not store._ledger.cost and not store._ledger.open  # a finished call leaves its id only
    assert np.array_equal(TeacherStore.open(tmp_path).read(ids), probs_of(ids))
    (tmp_path / "_manifest.json").unlink()
    teacher = Teacher()
    store.label(teacher, one_per_call(ids[:5]), checkpoint=False)  # rebuilt, with the forgotten events
    assert teacher.asked == [] and len(store) == 200 and store.spent == pytest.approx(100.0)
    assert np.array_equal(store.read(ids), probs_of(ids))


def test_an_orphan_frame_is_adopted_by_a_writer_that_forgot_its_events(tmp_path, monkeypatch):
    """A writer that has forgotten the events of its committed frames still tells them from a
    killed writer's uncommitted one: only the orphan is adopted, no row twice."""
    from mentor.store import core
    monkeypatch.setattr(core, "EVENTS_HELD", 4)
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)
    monkeypatch.setattr(store, "_checkpoint", lambda: None)
    for chunk in one_per_call(IDS[:30]):
        store.label(Teacher(), [chunk])
    store._commit()
    assert store._ledger.forgotten >= 30 and len(logs(tmp_path)) == 1
    killed_before_commit(TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6), IDS[100:110])
    teacher = Teacher()
    store.label(teacher, chunks(np.concatenate([IDS[:30], IDS[100:110], IDS[30:40]])))
    assert teacher.asked == IDS[30:40].tolist()
    assert len(store) == 50
    again = TeacherStore.open(tmp_path)
    want = np.concatenate([IDS[:40], IDS[100:110]])
    assert len(again) == 50 and np.array_equal(again.read(want), probs_of(want))


def test_a_writer_killed_between_two_calls_of_a_labeler_has_its_answer_adopted_not_repaid(tmp_path, monkeypatch):
    """Between two `label()` runs of one process, another process sends a call, writes its answer
    and is killed before committing it (no new file: same row log). The next call must look for
    that answer (the ledger shows the other's call) before deciding what to pay for."""
    store = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)
    other = TeacherStore(tmp_path, fingerprint="log-test", n_classes=C, shard_size=10**6)  # opened first
    monkeypatch.setattr(store, "_checkpoint", lambda: None)
    store.label(Teacher(), chunks(IDS[:40]))  # two calls: the second looks after the row log's creation
    killed_before_commit(other, IDS[100:120])
    teacher = Teacher()
    store.label(teacher, chunks(IDS[100:120]))
    assert teacher.asked == []
    assert np.array_equal(store.read(IDS[100:120]), probs_of(IDS[100:120]))
