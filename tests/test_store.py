"""The teacher-output store: never pay twice, survive kills, stay readable by standard tools."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from mentor.checks import dense_to_topk, topk_to_dense
from mentor.errors import ConfigError, StoreError, TeacherOutputError
from mentor.store import MANIFEST_NAME, LabelReport, TeacherStore, _merge_groups

import _store_worker as worker
from conftest import kill_before_done

C = 5
RNG = np.random.default_rng(0)
IDS = np.array([f"x{i}" for i in range(300)])
P = RNG.dirichlet(np.full(C, 0.3), len(IDS)).astype(np.float32)
TRUTH = dict(zip(IDS.tolist(), P))


class CountingTeacher:
    """Answers from TRUTH and records every id it is asked about."""

    def __init__(self, fingerprint="t1", cost=0.25, corrupt=None):
        self.fingerprint, self.n_classes, self.cost_per_example = fingerprint, C, cost
        self.asked: list[str] = []
        self.calls = 0
        self.corrupt = corrupt  # optional function applied to the outputs of call number 2

    def predict_proba(self, inputs, ids=None):
        assert len(inputs) == len(ids)
        self.calls += 1
        self.asked += list(ids)
        out = np.stack([TRUTH[i] for i in ids])
        return self.corrupt(out) if self.corrupt and self.calls == 2 else out


def chunks(ids, size=40):
    """A generator, like a pool streamed from disk."""
    for i in range(0, len(ids), size):
        yield ids[i:i + size], np.zeros((len(ids[i:i + size]), 2))


def snapshot(path: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.iterdir())}


def shard_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.glob("shard-*.parquet"))


# ------------------------------------------------------------------------------------------ roundtrip

@pytest.mark.parametrize("top_k,precision,atol", [(None, "float32", 0.0), (None, "float16", 2e-3),
                                                   (2, "float32", 1e-6), (2, "float16", 2e-3)])
def test_roundtrip_aligned_to_any_order(tmp_path, top_k, precision, atol):
    store = TeacherStore(tmp_path / "s", fingerprint="t1", n_classes=C, top_k=top_k, precision=precision,
                         shard_size=64)
    assert store.write(IDS, P) == len(IDS)
    want = P if top_k is None else topk_to_dense(*dense_to_topk(P, top_k), C)
    order = RNG.permutation(len(IDS))
    got = TeacherStore.open(tmp_path / "s").read(IDS[order])
    assert got.dtype == np.float32 and got.shape == (len(IDS), C)
    assert np.allclose(got, want[order], atol=atol, rtol=0)
    assert np.allclose(got.sum(axis=1), 1.0, atol=1e-3)
    ids, probs = store.read_all()
    assert ids.tolist() == IDS.tolist() and np.allclose(probs, want, atol=atol, rtol=0)
    assert np.array_equal(store.read(), probs)
    if top_k:  # only the top k are on disk
        assert {"topk_index", "topk_prob"} <= set(pq.read_schema(tmp_path / "s" / shard_files(tmp_path / "s")[0]).names)


def test_store_settings_are_validated(tmp_path):
    for bad in ({"top_k": C + 1}, {"precision": "int8"}, {"temperature": 0}, {"shard_size": 0}):
        with pytest.raises(ConfigError):
            TeacherStore(tmp_path / "s", fingerprint="t1", n_classes=C, **bad)
    with pytest.raises(StoreError, match="Run labeling first"):
        TeacherStore.open(tmp_path / "nothing-here")


def test_read_of_missing_ids_says_how_many_and_what_to_do(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    store.write(IDS[:10], P[:10])
    with pytest.raises(StoreError, match=r"2 of 3 requested ids .*Run labeling"):
        store.read(["x0", "nope", "nope2"])
    assert store.missing(["nope", "x1", "x99", "x2"]).tolist() == ["nope", "x99"]


# ------------------------------------------------------------------------------------------ never pay twice

def test_rerun_only_sends_new_ids_and_accounts_cost(tmp_path):
    teacher = CountingTeacher(cost=0.25)
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C, shard_size=64)
    r1 = store.label(teacher, chunks(IDS[:100]))
    assert isinstance(r1, LabelReport) and (r1.n_requested, r1.n_new, r1.n_skipped) == (100, 100, 0)
    assert r1.cost == pytest.approx(25.0) and r1.seconds >= 0

    teacher2 = CountingTeacher(cost=0.25)
    again = np.concatenate([IDS[50:150], IDS[140:150]])  # overlap with the store and inside the request
    r2 = TeacherStore.open(tmp_path).label(teacher2, chunks(again, 37))
    assert sorted(teacher2.asked) == sorted(IDS[100:150].tolist())
    assert (r2.n_requested, r2.n_new, r2.n_skipped, r2.cost) == (110, 50, 60, pytest.approx(12.5))

    reopened = TeacherStore.open(tmp_path)
    assert len(reopened) == 150 and reopened.stored_ids() == set(IDS[:150].tolist())
    assert reopened.spent == pytest.approx(37.5) and reopened.manifest["spent"] == pytest.approx(37.5)
    assert reopened.n_calls == teacher.calls + teacher2.calls
    assert np.array_equal(reopened.read(IDS[:150]), P[:150])
    assert TeacherStore.open(tmp_path).label(CountingTeacher(), chunks(IDS[:150])).n_new == 0


def test_write_skips_stored_and_repeated_ids(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    assert store.write(IDS[:5], P[:5]) == 5
    assert store.write(IDS[[3, 5, 5, 6]], P[[3, 5, 5, 6]]) == 2
    assert len(store) == 7 and store.spent == 0


# ------------------------------------------------------------------------------------------ wrong teacher

def test_other_fingerprint_is_refused_and_nothing_changes(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="teacher-A", n_classes=C)
    store.write(IDS[:10], P[:10])
    (tmp_path / "_shard-000099.parquet.tmp").write_bytes(b"half")  # would be cleaned by a valid open
    before = snapshot(tmp_path)
    with pytest.raises(StoreError, match=r"teacher-A.*teacher-B.*another store path.*delete the folder"):
        TeacherStore(tmp_path, fingerprint="teacher-B", n_classes=C)
    with pytest.raises(StoreError, match=r"top_k=None \(asked 2\)"):
        TeacherStore(tmp_path, fingerprint="teacher-A", n_classes=C, top_k=2)
    assert snapshot(tmp_path) == before


def test_label_refuses_a_teacher_with_another_fingerprint(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    teacher = CountingTeacher(fingerprint="t2")
    with pytest.raises(StoreError, match=r"'t2' differs from the store's 't1'"):
        store.label(teacher, chunks(IDS[:10]))
    assert teacher.calls == 0 and len(store) == 0


# ------------------------------------------------------------------------------------------ bad outputs

@pytest.mark.parametrize("corrupt,match", [
    (lambda p: np.where(np.arange(C) == 0, np.nan, p), "NaN"),
    (lambda p: p[:, :-1], "classes"),
    (lambda p: p * 2, "do not sum to 1"),
    (lambda p: p[:-1], "rows for"),
    (lambda p: p[0], "2-d array"),
])
def test_bad_teacher_output_raises_and_keeps_earlier_batches(tmp_path, corrupt, match):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    with pytest.raises(TeacherOutputError, match=match):
        store.label(CountingTeacher(corrupt=corrupt), chunks(IDS[:120]))
    again = TeacherStore.open(tmp_path)
    assert again.stored_ids() == set(IDS[:40].tolist())  # the first call; nothing of the second
    assert np.array_equal(again.read(IDS[:40]), P[:40])
    # both calls were sent and answered, so both are on the bill; the second one's answer is not kept
    assert again.n_calls == 2 and again.spent == pytest.approx(80 * 0.25)
    assert again.status()["failed"] == {"calls": 1, "cost": pytest.approx(40 * 0.25)}


# ------------------------------------------------------------------------------------------ crash recovery

def _foreign_shard(tmp_path, name, ids, probs, fingerprint="t1", cost=0.0):
    """A shard as a killed writer of an older mentor (one shard per call, before the ledger) left
    it: renamed into place, not in the manifest, its call's spend in its metadata."""
    other = TeacherStore(tmp_path / f"other-{name}", fingerprint=fingerprint, n_classes=C)
    other.write(ids, probs)
    table = pq.read_table(other.path / other.manifest["shards"][0]["file"])
    meta = {**table.schema.metadata, b"spent": repr(cost * len(ids)).encode(), b"calls": b"1"}
    out = tmp_path / f"other-{name}.parquet"
    pq.write_table(table.replace_schema_metadata(meta), out)
    return out.read_bytes()


def test_orphan_shards_are_adopted_without_duplicates_and_tmp_files_removed(tmp_path):
    path = tmp_path / "s"
    store = TeacherStore(path, fingerprint="t1", n_classes=C)
    store.write(IDS[:20], P[:20])
    (path / "shard-000007.parquet").write_bytes(_foreign_shard(tmp_path, "a", IDS[15:30], P[15:30], cost=1.0))
    (path / "shard-000008.parquet").write_bytes(_foreign_shard(tmp_path, "b", IDS[25:35], P[25:35]))
    (path / "_shard-000009.parquet.tmp").write_bytes(b"PAR1 half written")
    (path / f"_{MANIFEST_NAME}.tmp").write_text("{")

    again = TeacherStore(path, fingerprint="t1", n_classes=C)
    assert not list(path.glob("*.tmp"))
    assert len(again) == 35 and again.stored_ids() == set(IDS[:35].tolist())
    assert np.array_equal(again.read(IDS[:35]), P[:35])
    assert again.spent == pytest.approx(10.0)  # the adopted call's 10 new rows of 15, cost 1 each
    ids = pd.read_parquet(path)["id"]
    assert len(ids) == 35 and ids.is_unique  # duplicates were dropped from the files too
    assert sorted(s["file"] for s in again.manifest["shards"]) == shard_files(path)
    again.verify()


def test_foreign_orphan_is_refused_and_kept(tmp_path):
    path = tmp_path / "s"
    TeacherStore(path, fingerprint="t1", n_classes=C).write(IDS[:5], P[:5])
    (path / "shard-000005.parquet").write_bytes(_foreign_shard(tmp_path, "x", IDS[5:9], P[5:9], fingerprint="zz"))
    with pytest.raises(StoreError, match=r"shard-000005.parquet.*'zz'.*Move it out"):
        TeacherStore(path, fingerprint="t1", n_classes=C)
    assert (path / "shard-000005.parquet").exists()


def test_kill_between_shard_rename_and_its_commit_loses_nothing(tmp_path, monkeypatch):
    """The one window a random kill rarely hits (the shard is renamed into place, its commit line
    in the ledger is not written yet), made certain by interrupting that line."""
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C, shard_size=10**6)
    store.label(CountingTeacher(cost=1.0), chunks(IDS[:40]))
    kill_before_done(store, monkeypatch)
    teacher = CountingTeacher(cost=1.0)
    with pytest.raises(KeyboardInterrupt):
        store.label(teacher, chunks(IDS[:80]))
    monkeypatch.undo()
    assert teacher.asked == IDS[40:80].tolist()  # paid, on disk, not committed

    again = TeacherStore.open(tmp_path)
    assert len(again) == 80 and again.spent == pytest.approx(80.0) and again.n_calls == 2
    teacher2 = CountingTeacher()
    again.label(teacher2, chunks(IDS[:80]))
    assert teacher2.calls == 0


def test_verify_detects_changed_shards(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C)
    store.write(IDS[:10], P[:10])
    store.verify()
    f = tmp_path / shard_files(tmp_path)[0]
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 1  # same size, one bit flipped
    f.write_bytes(bytes(data))
    with pytest.raises(StoreError, match=r"shard-000001.parquet is damaged: it does not match the checksum.*10 paid rows"):
        store.verify()
    assert (tmp_path / "_quarantine" / f.name).exists() and not f.exists() and len(store) == 0


# ------------------------------------------------------------------------------------------ open formats

@pytest.mark.parametrize("top_k", [None, 2])
def test_standard_tools_read_the_folder(tmp_path, top_k):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C, top_k=top_k, temperature=2.0, shard_size=50)
    store.label(CountingTeacher(), chunks(IDS[:120]))
    assert len(shard_files(tmp_path)) > 1

    df = pd.read_parquet(tmp_path)
    assert sorted(df["id"]) == sorted(IDS[:120]) and set(df["teacher"].astype(str)) == {"t1"}
    table = ds.dataset(tmp_path, format="parquet").to_table()
    assert table.num_rows == 120
    row = duckdb.sql(f"select count(*), count(distinct id), min(teacher) "
                     f"from read_parquet('{tmp_path}/*.parquet')").fetchall()[0]
    assert row == (120, 120, "t1")
    if top_k is None:
        i = df["id"].tolist().index("x7")
        assert np.allclose(np.asarray(df["probs"][i], dtype=np.float32), P[7])
    meta = pq.read_schema(tmp_path / shard_files(tmp_path)[0]).metadata
    assert meta[b"fingerprint"] == b"t1" and meta[b"n_classes"] == b"5" and float(meta[b"temperature"]) == 2.0
    assert pq.read_schema(tmp_path / shard_files(tmp_path)[0]).field("teacher").type.id == 29  # dictionary
    manifest = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert manifest["rows"] == 120 and manifest["fingerprint"] == "t1" and manifest["top_k"] == top_k


# ------------------------------------------------------------------------------------------ streaming, compaction

def test_streaming_label_iter_batches_and_bounded_shards(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C, shard_size=100)
    report = store.label(CountingTeacher(), chunks(IDS, 30))  # 10 calls of 30
    assert report.n_new == 300
    sizes = [s["rows"] for s in store.manifest["shards"]]
    assert len(sizes) <= 4 and sum(sizes) == 300  # small per-call shards were merged on the way
    batches = list(store.iter_batches(batch_rows=70))
    assert [len(b[0]) for b in batches] == [70, 70, 70, 70, 20]
    assert np.concatenate([b[0] for b in batches]).tolist() == IDS.tolist()
    assert np.array_equal(np.concatenate([b[1] for b in batches]), P)


def test_compact_merges_small_shards_and_keeps_order(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="t1", n_classes=C, shard_size=100)
    for i in range(0, 90, 10):
        store.write(IDS[i:i + 10], P[i:i + 10])
    assert len(shard_files(tmp_path)) == 9
    store.compact()
    assert shard_files(tmp_path) == [s["file"] for s in store.manifest["shards"]] and len(shard_files(tmp_path)) == 1
    again = TeacherStore.open(tmp_path)
    assert again.read_all()[0].tolist() == IDS[:90].tolist() and np.array_equal(again.read(IDS[:90]), P[:90])


def test_merge_groups():
    assert _merge_groups([1, 1, 1, 1, 5, 1, 1], 4, final=False) == [(0, 4)]
    assert _merge_groups([1, 1, 1, 1, 5, 1, 1], 4, final=True) == [(0, 4), (5, 7)]
    assert _merge_groups([5, 1, 5], 4, final=True) == []


# ------------------------------------------------------------------------------------------ the kill test

def _run_worker(store, log, n):
    return subprocess.Popen([sys.executable, worker.__file__, str(store), str(log), str(n)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _lines(log: Path) -> int:
    return log.read_text().count("\n") if log.exists() else 0


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume(tmp_path):
    """Kill a real labeling process three times, resume, and check no id is lost, duplicated or
    paid for more than the one call in flight at each kill."""
    n, store, log = 3000, tmp_path / "store", tmp_path / "calls.log"
    rng = random.Random(7)
    kills = 0
    for _ in range(3):
        start = _lines(log)
        proc = _run_worker(store, log, n)
        deadline = time.time() + 20
        while _lines(log) < start + 3 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.05))
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the worker finished before it could be killed; raise n"
    proc = _run_worker(store, log, n)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()

    final = TeacherStore.open(store)
    ids, probs = final.read_all()
    assert len(ids) == n and len(set(ids.tolist())) == n
    assert set(ids.tolist()) == {f"id{i}" for i in range(n)}
    assert np.array_equal(probs, worker.expected_probs(ids))
    sent = log.read_text().split()
    assert len(sent) <= n + kills * worker.CHUNK
    files = pd.read_parquet(store)["id"]
    assert len(files) == n and files.is_unique  # no leftover duplicate shard on disk
    assert not list(store.glob("*.tmp"))
    # the bill: every id the teacher received is in a ledger `send` (a call cut off by a kill too),
    # and spent is exactly the ledger's sum; a send can precede the kill without reaching the teacher
    billed = [x for r in map(json.loads, (store / "_ledger.jsonl").read_text().splitlines())
              if r["e"] == "send" for x in r["ids"]]
    assert not Counter(sent) - Counter(billed)
    assert len(billed) - len(sent) <= kills * worker.CHUNK
    assert final.spent == pytest.approx(0.5 * len(billed)) and final.spent >= 0.5 * len(sent)
    status = final.status()
    assert status["in_flight"]["calls"] == 0 and status["lost"]["calls"] <= kills  # a kill may land between calls
    assert status["done"]["cost"] + status["lost"]["cost"] == pytest.approx(final.spent)


def test_id_lookup_matches_a_dict_and_survives_hash_collisions(tmp_path, monkeypatch):
    """The store's compact id index (store/ids.py) answers as a dict would: built at once, grown a
    call at a time past its merges, and with every hash equal (each hit is confirmed on the ids)."""
    from mentor.store import ids as id_index
    rng = np.random.default_rng(3)
    stored = np.array([f"doc-{rng.integers(10**9)}-é{i}" for i in range(3000)])
    query = np.concatenate([stored[rng.permutation(3000)[:2000]],
                            ["nope", stored[0] + "x", stored[1][:-1], "doc-" + "9" * 40]])
    truth = {s: i for i, s in enumerate(stored)}
    expect = np.array([truth.get(q, -1) for q in query])
    whole = id_index.IdIndex([stored[:1000].tolist(), pa.array(stored[1000:].tolist())])
    assert np.array_equal(whole.positions(query.tolist()), expect)
    monkeypatch.setattr(id_index, "MERGE_MIN", 64)  # many merges of the recent ids
    grown = id_index.IdIndex()
    for s in range(0, 3000, 16):
        assert grown.add(stored[s:s + 16].tolist())
    assert len(grown._chunks) > 5 and grown._recent  # merged several times, some ids still recent
    assert np.array_equal(grown.positions(query.tolist()), expect)
    assert grown.ids().to_pylist() == stored.tolist()
    assert not grown.add([stored[5]]) and not grown.add(["new", "new"]) and len(grown) == 3000
    with pytest.raises(id_index.RepeatedId) as e:
        id_index.IdIndex([stored[:10].tolist(), ["other", stored[3]]])
    assert e.value.part == 1
    # every hash equal: hits are confirmed (and collisions walked) on the ids themselves
    monkeypatch.setattr(id_index, "_hashes", lambda ids: np.zeros(len(ids), np.int64))
    clash = id_index.IdIndex([stored[:200].tolist()])
    for s in range(200, 400, 16):
        assert clash.add(stored[s:s + 16].tolist())
    clash._merge()
    q = np.concatenate([stored[:400][::-1], ["nope"]])
    assert np.array_equal(clash.positions(q.tolist()), np.r_[np.arange(399, -1, -1), -1])
    with pytest.raises(id_index.RepeatedId):
        id_index.IdIndex([stored[:50].tolist(), [stored[49]]])
    # reads of many ids use IdLookup (vectorised FNV hashes): right, and when its hashes collide
    # too it says so and the store falls back to the index above (every hash equal there as well)
    assert np.array_equal(id_index.IdLookup(stored).positions(query), expect)
    monkeypatch.setattr(id_index, "id_hashes", lambda ids, width: np.zeros(len(ids), np.uint64))
    assert not id_index.IdLookup(stored).unique
    store = TeacherStore(tmp_path / "s", fingerprint="t", n_classes=2)
    probs = np.tile([[0.25, 0.75]], (len(stored), 1)).astype(np.float32)
    probs[:, 0] = np.linspace(0, 1, len(stored))
    probs[:, 1] = 1 - probs[:, 0]
    store.write(stored, probs)
    many = stored[rng.integers(0, 3000, 6000)]  # a store whose every id hash collides reads right
    assert np.allclose(store.read(many), probs[[truth[s] for s in many]])


def test_an_open_store_holds_a_few_dozen_bytes_per_stored_id(tmp_path):
    """The id index of an open store: ~34 bytes per id (Arrow strings shared with the shards' id
    arrays, a sorted hash and a position), not the ~130 of a dict of Python strings it replaced,
    which made the store the part of training from disk that grew with the pool."""
    import gc
    import tracemalloc
    n = 200_000
    store = TeacherStore(tmp_path / "s", fingerprint="t", n_classes=2, shard_size=65536)
    store.write(np.array([f"pool-{i:09d}" for i in range(n)]), np.full((n, 2), 0.5, np.float32))
    store.close()
    del store
    gc.collect()
    arrow_before = pa.total_allocated_bytes()
    tracemalloc.start()
    try:
        reopened = TeacherStore.open(tmp_path / "s")
        gc.collect()
        held = tracemalloc.get_traced_memory()[0] + pa.total_allocated_bytes() - arrow_before
    finally:
        tracemalloc.stop()
    assert len(reopened) == n and reopened.read(["pool-000123456"])[0][0] == 0.5
    assert held / n < 50, f"{held / n:.0f} bytes per stored id"
