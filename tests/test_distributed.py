"""Teacher pools: Ray actors in a real local Ray cluster (separate worker processes) and threads
against a real HTTP teacher; the store's guarantees must hold with calls running at once."""

import contextlib
import json
import os
import threading
import time

import numpy as np
import pytest

from mentor.config import parse_config
from mentor.teachers.pools import RayTeacherPool, TeacherWorkerError, ThreadTeacherPool, make_pool
from mentor.errors import ConfigError, DataError, StoreError
from mentor.pipeline import label, prepare
from mentor.store import TeacherStore
from mentor.teachers import RemoteTeacher, SklearnTeacher
from test_remote_teacher import serve

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def cluster():
    """A two-CPU local Ray cluster, shared by the tests of this module."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def ray_pool(cluster, model):
    """Two actors on half a CPU each (starting workers is the slow part: share them), leaving a
    CPU for the pipeline test's own pool."""
    with RayTeacherPool(model, 2, cpus_per_worker=0.5) as pool:
        yield pool


def _batches(ids, x, size):
    return [(ids[i:i + size], x[i:i + size]) for i in range(0, len(ids), size)]


def test_ray_pool_stores_exactly_what_the_teacher_gives_once_per_id(ray_pool, digits, model, tmp_path):
    ids, x = digits.ids, digits.features
    with contextlib.nullcontext(ray_pool) as pool:
        assert {w["pid"] for w in pool.where} != {os.getpid()} and len({w["pid"] for w in pool.where}) == 2
        store = TeacherStore(tmp_path / "s", fingerprint=model.fingerprint, n_classes=10)
        rep = store.label(model, _batches(ids, x, 100), pool=pool)
        assert rep.n_new == len(ids) and store.n_calls == -(-len(ids) // 100)
        again = store.label(model, _batches(ids, x, 100), pool=pool)
        assert again.n_new == 0 and again.n_skipped == len(ids)
        assert pool.describe()["workers"] == 2
    np.testing.assert_allclose(store.read(ids), model.predict_proba(x), rtol=1e-6, atol=1e-7)
    store.verify()


def test_a_failing_ray_call_keeps_the_others_and_a_rerun_asks_only_the_rest(ray_pool, digits, model, tmp_path):
    ids, x = digits.ids[:600], digits.features[:600].copy()
    x[250] = np.nan  # LogisticRegression refuses NaN: the call holding row 250 fails on its worker
    store = TeacherStore(tmp_path / "s", fingerprint=model.fingerprint, n_classes=10)
    with contextlib.nullcontext(ray_pool) as pool:
        with pytest.raises(TeacherWorkerError, match=r"(?s)Ray worker \d .*ValueError.*NaN.*rerun to label the rest"):
            store.label(model, _batches(ids, x, 100), pool=pool)
        stored = store.stored_ids()
        assert ids[250] not in stored and set(ids[200:300]).isdisjoint(stored)
        assert set(ids[:200]) <= stored  # calls that returned before (or beside) the failure are kept
        x[250] = digits.features[250]
        rep = store.label(model, _batches(ids, x, 100), pool=pool)
    assert rep.n_new == len(ids) - len(stored)
    np.testing.assert_allclose(store.read(ids), model.predict_proba(x), rtol=1e-6, atol=1e-7)


def test_ray_pool_sends_a_call_only_when_a_worker_is_free_and_bills_it_then(cluster, digits, model, tmp_path):
    """A call waiting behind another on a Ray worker is not on the bill yet (it was, at submit):
    a run killed then would have been billed for calls never sent."""
    x = digits.features[:50]
    priced = SklearnTeacher(model.estimator, 10, cost_per_example=0.5)
    with RayTeacherPool(priced, 1, cpus_per_worker=0.5, in_flight_per_worker=3) as pool:
        futures, seen = [], []
        for i in range(3):
            futures.append(pool.submit(x[i * 10:(i + 1) * 10], digits.ids[i * 10:(i + 1) * 10],
                                       before=lambda: seen.append(sum(f.done() for f in futures))))
        for f in futures:
            f.result(timeout=60)
        assert seen == [0, 1, 2]  # each call started (and was billed) after the one before it returned
        store = TeacherStore(tmp_path / "s", fingerprint=priced.fingerprint, n_classes=10)
        store.label(priced, _batches(digits.ids[:300], digits.features[:300], 50), pool=pool)
    events = [json.loads(line) for line in (tmp_path / "s" / "_ledger.jsonl").read_text().splitlines()]
    kinds = [e["e"] for e in events if e["e"] in ("lease", "send")]
    assert kinds.count("lease") == 6 and kinds.count("send") == 6  # leased when queued, billed when sent
    assert store.spent == pytest.approx(150.0)


def test_ray_pool_refuses_more_than_the_cluster_has_and_other_teachers(ray_pool, digits, model, tmp_path):
    with pytest.raises(ConfigError, match="CPU needed 8, cluster has 2"):
        RayTeacherPool(model, 8)  # counts the cluster, not what is free: an idle cluster could not host it either
    with pytest.raises(ConfigError, match="GPU needed 1, cluster has 0"):
        RayTeacherPool(model, 1, gpus_per_worker=1)
    other = SklearnTeacher(model.estimator, 10, fingerprint="another-teacher")
    store = TeacherStore(tmp_path / "s", fingerprint=model.fingerprint, n_classes=10)
    with ThreadTeacherPool(other, 2) as pool, pytest.raises(StoreError, match="pool's teacher"):
        store.label(model, _batches(digits.ids, digits.features, 100), pool=pool)


def test_thread_pool_overlaps_http_calls(digits, model, tmp_path):
    state = {"now": 0, "most": 0}
    lock = threading.Lock()

    def slow(n, request):  # each request takes 50 ms, as a remote API would; count the overlap
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
    with serve(model, fault=slow) as s:
        remote = RemoteTeacher(s.url, 10, batch_size=50, output="probs", model_version="lr")
        store = TeacherStore(tmp_path / "s", fingerprint=remote.fingerprint, n_classes=10)
        with ThreadTeacherPool(remote, 4) as pool:
            rep = store.label(remote, _batches(digits.ids[:800], digits.features[:800], 50), pool=pool)
    assert rep.n_new == 800 and len(s.ids_seen) == 800 and len(set(s.ids_seen)) == 800
    assert state["most"] >= 2  # calls really overlapped
    np.testing.assert_allclose(store.read(digits.ids[:800]), model.predict_proba(digits.features[:800]), atol=1e-6)


def _run_cfg(tmp_path, **distribute):
    return {"seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "digits"},
            "split": {"n_labeled": 100, "n_val": 200, "n_test": 300}, "teacher": {"kind": "logistic"},
            "store": {"batch_size": 128}, "distribute": distribute, "student": {"kind": "logistic"}}


def test_mentor_label_on_ray_equals_labeling_here(cluster, tmp_path):
    ctx = prepare(parse_config(_run_cfg(tmp_path, engine="ray", workers=2, cpus_per_worker=0.5)))
    store = label(ctx)
    info = json.loads((ctx.out / "teacher.json").read_text())
    assert info["last_label_run"]["pool"]["engine"] == "ray" and info["last_label_run"]["pool"]["workers"] == 2
    here = prepare(parse_config(_run_cfg(tmp_path / "here")))
    ref = label(here)
    ids = np.concatenate([ctx.data.ids[ctx.splits.val], ctx.data.ids[ctx.splits.test], ctx.data.ids[ctx.splits.pool]])
    assert store.fingerprint == ref.fingerprint
    np.testing.assert_allclose(store.read(ids), ref.read(ids), atol=1e-7)


def test_distribute_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="distribute.engine"):
        parse_config({**_run_cfg(tmp_path), "distribute": {"engine": "spark"}})
    with pytest.raises(ConfigError, match="workers"):
        parse_config({**_run_cfg(tmp_path), "distribute": {"engine": "ray", "workers": 0}})
    cfg = parse_config(_run_cfg(tmp_path, engine="threads"))

    class FileLike:
        kind = "file"
    with pytest.raises(ConfigError, match="nothing to compute"):
        make_pool(cfg.distribute, FileLike())
    assert make_pool(parse_config(_run_cfg(tmp_path)).distribute, FileLike()) is None


def test_a_bad_batch_stops_labeling_but_calls_in_flight_are_stored(digits, model, tmp_path):
    ids, x = digits.ids[:400], digits.features[:400]
    batches = _batches(ids, x, 100)[:3] + [(ids[300:400], x[300:350])]  # the 4th batch is malformed
    store = TeacherStore(tmp_path / "s", fingerprint=model.fingerprint, n_classes=10)
    with ThreadTeacherPool(model, 2, in_flight_per_worker=4) as pool:  # 3 calls in flight when it fails
        with pytest.raises(DataError, match="100 ids but 50 inputs"):
            store.label(model, batches, pool=pool)
    assert store.stored_ids() == set(ids[:300])


def test_ray_workers_that_cannot_start_give_a_clear_error(cluster, tmp_path):
    """The teacher cannot be rebuilt on the workers (its class's module is missing there)."""
    mod = tmp_path / "driver_only_teacher.py"
    mod.write_text("class T:\n    fingerprint = 'x'\n    n_classes = 2\n")
    import sys
    sys.path.insert(0, str(tmp_path))
    try:
        import driver_only_teacher
        with pytest.raises(ConfigError, match="(?s)could not start.*installed on every node"):
            # generous: the worker fails as soon as it starts, but starting took over 120 s on a loaded machine
            RayTeacherPool(driver_only_teacher.T(), 1, cpus_per_worker=0.1, start_timeout_s=400)
    finally:
        sys.path.remove(str(tmp_path))
