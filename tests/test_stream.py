"""Training from disk (mentor.students.stream, train.data_path: stream): real Parquet, a real store."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mentor.errors import ConfigError, MentorError, StoreError
from mentor.store import TeacherStore
from mentor.students.models import build_model
from mentor.students.stream import (StreamingPool, join_pool, loader, stream_plan, train_student_stream,
                                    write_pool)
from mentor.students.train import TrainConfig, predict_proba

D, C = 8, 3


def _task(n, seed):
    w = np.random.default_rng(7).normal(size=(D, C))
    x = np.random.default_rng(seed).normal(size=(n, D)).astype(np.float32)
    logits = x @ w
    t = np.exp(2 * logits - (2 * logits).max(1, keepdims=True))
    return x, logits.argmax(1), (t / t.sum(1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def disk(tmp_path_factory):
    """A 3,000-row pool file (row groups of 250) and a store holding its teacher outputs (+ V's)."""
    root = tmp_path_factory.mktemp("stream")
    x, y, t = _task(3000, 0)
    ids = np.array([f"u{i}" for i in range(3000)])
    store = TeacherStore(root / "store", fingerprint="linear", n_classes=C, shard_size=1000)
    store.write(ids, t)
    xv, yv, tv = _task(300, 1)
    store.write([f"v{i}" for i in range(300)], tv)
    write_pool(root / "pool.parquet", ids, x, row_group_rows=250)
    joined = join_pool(root / "pool.parquet", store, root / "joined", other_ids=[f"v{i}" for i in range(300)],
                       bucket_rows=800, row_group_rows=200)
    return dict(root=root, store=store, ids=ids, x=x, y=y, t=t, val=(xv, yv, tv), joined=joined)


def test_every_pool_id_once_per_epoch_in_a_seeded_order(disk):
    xa, ya, _ = _task(40, 2)
    pool = StreamingPool(disk["joined"], xa, ya, batch_size=64, buffer_rows=700, seed=5)
    order = []
    for epoch in (0, 1):
        pool.set_epoch(epoch)
        batches = list(loader(pool))
        ids = [i for b in batches for i in b["id"] if i]
        assert sorted(ids) == sorted(disk["ids"]) and len(ids) == 3000  # each pool id once
        assert sum(int((b["y"] >= 0).sum()) for b in batches) == 40      # each labeled row once
        assert all(len(b["y"]) == 64 for b in batches[:-1]) and len(batches) == len(pool)
        order.append(ids)
        # the teacher's outputs travel with their ids
        for b in batches[:3]:
            rows = np.searchsorted(disk["ids"], b["id"][b["id"] != ""], sorter=np.argsort(disk["ids"]))
            got = b["t"][b["y"] < 0].numpy()
            np.testing.assert_allclose(got, disk["t"][np.argsort(disk["ids"])[rows]], rtol=1e-6)
    assert order[0] != order[1]  # reshuffled each epoch
    again = StreamingPool(disk["joined"], xa, ya, batch_size=64, buffer_rows=700, seed=5)
    again.set_epoch(1)
    assert [i for b in again for i in b["id"] if i] == order[1]  # same seed and epoch: same order
    ahead = [i for b in loader(again, read_ahead=True) for i in b["id"] if i]  # read in a worker process
    assert ahead == order[1]


def test_join_is_reused_and_checks_ids_both_ways(disk, tmp_path):
    note = disk["joined"] / "_joined.json"
    before = note.stat().st_mtime_ns
    join_pool(disk["root"] / "pool.parquet", disk["store"], disk["joined"], other_ids=[f"v{i}" for i in range(300)])
    assert note.stat().st_mtime_ns == before  # same pool file and store contents: not joined again
    # pool ids the store lacks
    write_pool(tmp_path / "more.parquet", np.array([f"u{i}" for i in range(3005)]), _task(3005, 0)[0])
    with pytest.raises(StoreError, match=r"5 pool ids have no teacher output.*label them first") as e:
        join_pool(tmp_path / "more.parquet", disk["store"], tmp_path / "j1", other_ids=[f"v{i}" for i in range(300)])
    assert isinstance(e.value, MentorError) and not (tmp_path / "j1").exists()
    # store rows the pool lacks (V's ids not declared as other ids)
    with pytest.raises(StoreError, match=r"300 rows of the store .* neither the pool file") as e:
        join_pool(disk["root"] / "pool.parquet", disk["store"], tmp_path / "j2")
    assert "extra_store_rows" in str(e.value)
    assert join_pool(disk["root"] / "pool.parquet", disk["store"], tmp_path / "j2", extra_store_rows=True).is_dir()
    # repeated ids in the pool
    ids = np.array([f"u{i}" for i in range(3000)])
    ids[7] = "u8"
    write_pool(tmp_path / "dup.parquet", ids, disk["x"])
    with pytest.raises(StoreError, match="repeats 1 ids"):
        join_pool(tmp_path / "dup.parquet", disk["store"], tmp_path / "j3", extra_store_rows=True)


def test_user_file_with_scalar_feature_columns(disk, tmp_path):
    cols = {"example": pa.array(disk["ids"])} | {f"f{j}": pa.array(disk["x"][:, j]) for j in range(D)}
    pq.write_table(pa.table(cols), tmp_path / "mine.parquet", row_group_size=1000)
    joined = join_pool(tmp_path / "mine.parquet", disk["store"], tmp_path / "j", id_column="example",
                       extra_store_rows=True)
    batch = next(iter(StreamingPool(joined, batch_size=3000)))
    order = np.argsort(batch["id"])
    np.testing.assert_array_equal(batch["x"][order], disk["x"][np.argsort(disk["ids"])])


@pytest.mark.parametrize("method", ["vanilla-soft", "weighted-margin"])
def test_stream_matches_in_memory_accuracy(disk, method):
    """Same data, loss, epochs and seed; only the example order differs. Tolerance: 3 points of accuracy."""
    from mentor.methods import MethodContext, plan_method, train_with_plan
    xa, ya, _ = _task(60, 3)
    xv, yv, tv = disk["val"]
    xt, yt, _ = _task(2000, 4)
    cfg = TrainConfig(epochs=4, min_steps=0, batch_size=64, seed=0)
    options = {"min_val": 20} if method == "weighted-margin" else {}
    plan = stream_plan(method, n_classes=C, joined_dir=disk["joined"], teacher_probs_val=tv, val_labels=yv,
                       options=options)
    torch.manual_seed(0)
    streamed = build_model("mlp", in_features=D, n_classes=C, hidden=(16,))
    res = train_student_stream(streamed, StreamingPool(disk["joined"], xa, ya, batch_size=64, seed=0), plan=plan,
                               config=cfg)
    torch.manual_seed(0)
    whole = build_model("mlp", in_features=D, n_classes=C, hidden=(16,))
    mplan = plan_method(method, MethodContext(n_classes=C, teacher_probs_pool=disk["t"], teacher_probs_val=tv,
                                              val_labels=yv, options=options))
    train_with_plan(whole, xa, ya, disk["x"], disk["t"], mplan, cfg)
    acc = [float((predict_proba(m, xt).argmax(1) == yt).mean()) for m in (streamed, whole)]
    assert len(res.history) == 4 and acc[1] > 0.8
    assert abs(acc[0] - acc[1]) <= 0.03, acc


def test_per_batch_weights_are_the_in_memory_weights(disk):
    """weighted-margin from disk: each example's weight equals the in-memory one (pool-mean normalised)."""
    from mentor.methods import MethodContext, plan_method
    xv, yv, tv = disk["val"]
    plan = stream_plan("weighted-margin", n_classes=C, joined_dir=disk["joined"], teacher_probs_val=tv,
                       val_labels=yv, options={"min_val": 20})
    whole = plan_method("weighted-margin", MethodContext(n_classes=C, teacher_probs_pool=disk["t"],
                                                         teacher_probs_val=tv, val_labels=yv,
                                                         options={"min_val": 20})).pool_weights
    np.testing.assert_allclose(plan.weights(disk["t"][:500]), whole[:500], rtol=1e-5)
    # SLaM's per-example α and calibrated targets: per batch, the same numbers as over the whole pool
    logits = torch.randn(200, C, generator=torch.Generator().manual_seed(0))
    for method in ("slam", "calibrated-soft"):
        ctx = MethodContext(n_classes=C, teacher_probs_pool=disk["t"], teacher_probs_val=tv, val_labels=yv,
                            options={"min_val": 20} if method == "slam" else {})
        mem = plan_method(method, ctx)
        per = stream_plan(method, n_classes=C, joined_dir=disk["joined"], teacher_probs_val=tv, val_labels=yv,
                          options=ctx.options)
        t = torch.as_tensor(disk["t"][:200])
        target = torch.as_tensor(per.targets(disk["t"][:200])) if per.targets else t
        obj = per.objective_for(disk["t"][:200]) if per.objective_for else per.objective
        torch.testing.assert_close(obj.pool_loss(logits, target, torch.arange(200)),
                                   mem.objective.pool_loss(logits, torch.as_tensor(mem.targets(disk["t"])[:200]),
                                                           torch.arange(200)), rtol=1e-5, atol=1e-6)
    with pytest.raises(ConfigError, match="data_path: memory"):
        stream_plan("weighted-disagreement", n_classes=C, joined_dir=disk["joined"], teacher_probs_val=tv,
                    val_labels=yv)


def test_auto_from_disk_without_teacher_outputs_on_v_names_the_fix(disk):
    from mentor.students.stream import stream_auto_plan
    with pytest.raises(ConfigError, match="needs the teacher's outputs on the validation set V"):
        stream_auto_plan(lambda plan: None, n_classes=C, joined_dir=disk["joined"], teacher_probs_val=None,
                         val_labels=disk["val"][1])


def test_a_plans_own_distill_weight_replaces_the_configs(disk):
    """auto's method@λ candidates from disk: StreamPlan.distill_weight acts as train.distill_weight would."""
    from mentor.students.stream import StreamPlan
    xa, ya, _ = _task(60, 3)

    def weights(plan_lam, cfg_lam):
        torch.manual_seed(0)
        m = build_model("logistic", in_features=D, n_classes=C)
        train_student_stream(m, StreamingPool(disk["joined"], xa, ya, batch_size=256, seed=0),
                             plan=StreamPlan(stream_plan("vanilla-soft", n_classes=C).objective,
                                             distill_weight=plan_lam),
                             config=TrainConfig(epochs=1, min_steps=0, batch_size=256, seed=0, distill_weight=cfg_lam))
        return m.state_dict()
    a, b, c = weights(0.25, 1.0), weights(None, 0.25), weights(None, 1.0)
    for k in a:
        torch.testing.assert_close(a[k], b[k])
    assert not torch.allclose(a["linear.weight"] if "linear.weight" in a else next(iter(a.values())),
                              c["linear.weight"] if "linear.weight" in c else next(iter(c.values())))


def test_stream_refuses_a_loader_that_disagrees_with_the_config(disk):
    model = build_model("logistic", in_features=D, n_classes=C)
    with pytest.raises(ConfigError, match="batch_size"):
        train_student_stream(model, StreamingPool(disk["joined"], batch_size=32), config=TrainConfig(batch_size=64))


def test_pipeline_stream_option_and_its_errors(tmp_path, digits):
    """train.data_path: stream in the pipeline; a store that misses pool ids is exit 2 from `mentor
    train` with the fix named; one holding rows of another data set is refused too."""
    from mentor.config import parse_config
    from mentor.pipeline import prepare, train
    raw = {"output_dir": str(tmp_path / "run"), "data": {"name": "digits"}, "store": {"path": str(tmp_path / "store")},
           "method": "weighted-margin", "method_options": {"min_val": 20},
           "split": {"n_labeled": 50, "n_val": 200, "n_test": 300},
           "train": {"epochs": 2, "min_steps": 0, "data_path": "stream"}, "export": {"model_folder": False}}
    (tmp_path / "run.yaml").write_text(json.dumps(raw))
    probs = np.full((len(digits.ids), 10), 0.02, np.float32)
    probs[np.arange(len(digits.ids)), digits.labels] = 0.82
    store = TeacherStore(tmp_path / "store", fingerprint="oracle", n_classes=10)
    store.write(digits.ids[::2], probs[::2])  # half of the pool's ids are missing
    store.close()
    res = subprocess.run([sys.executable, "-m", "mentor.cli", "train", str(tmp_path / "run.yaml")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "have no teacher output" in res.stderr and "Traceback" not in res.stderr
    store = TeacherStore.open(tmp_path / "store")
    store.write(list(digits.ids[1::2]) + ["someone-else"], np.concatenate([probs[1::2], probs[:1]]))
    ctx = prepare(parse_config(raw))
    with pytest.raises(StoreError, match="neither the pool file.*someone-else"):
        train(ctx, store)
    store = TeacherStore(tmp_path / "store2", fingerprint="oracle", n_classes=10)
    store.write(digits.ids, probs)
    info = train(ctx, store)
    assert info["data_path"] == "stream" and info["epochs"] == 2 and info["teacher_fingerprint"] == "oracle"


@pytest.mark.parametrize("select", [{}, {"select_on": "val_accuracy", "patience": 3}])
def test_auto_trains_from_disk_and_chooses_as_in_memory(tmp_path, digits, select):
    """`method: auto` with train.data_path: stream trains every candidate from disk (labeled-only and
    method@λ included, cross-fitted on V). With one batch per epoch the example order cannot
    matter, so every candidate's V accuracy, the choice and the final weights equal the in-memory
    ones. The teacher is right on 60% of the digits and confidently wrong elsewhere, so the
    candidates differ. With train.select_on every candidate keeps its best epoch, chosen on the
    other fold, from disk as in memory."""
    from mentor.config import parse_config
    from mentor.pipeline import prepare, train
    rng = np.random.default_rng(0)
    said = np.where(rng.uniform(size=len(digits.ids)) < 0.6, digits.labels, rng.integers(0, 10, len(digits.ids)))
    probs = np.full((len(digits.ids), 10), 0.03, np.float32)
    probs[np.arange(len(digits.ids)), said] = 0.73
    runs = {}
    for path in ("memory", "stream"):
        store = TeacherStore(tmp_path / f"store-{path}", fingerprint="noisy", n_classes=10)
        store.write(digits.ids, probs)
        raw = {"output_dir": str(tmp_path / path), "data": {"name": "digits"}, "seed": 0, "method": "auto",
               "method_options": {"min_val": 20, "auto_candidates": ["labeled-only", "vanilla-soft",
                                                                     "vanilla-soft@0.25", "weighted-margin", "slam"]},
               "split": {"n_labeled": 40, "n_val": 200, "n_test": 300}, "student": {"kind": "logistic"},
               "train": {"epochs": 20, "min_steps": 0, "batch_size": 2048, "lr": 0.01, "data_path": path, **select},
               "export": {"model_folder": False}}
        ctx = prepare(parse_config(raw))
        info = train(ctx, store)
        runs[path] = info, torch.load(ctx.out / "student.pt", weights_only=True)["model"]
    (mem, w_mem), (disk, w_disk) = runs["memory"], runs["stream"]
    assert disk["data_path"] == "stream" and disk["auto"]["folds"] == 2
    accs = mem["auto"]["val_accuracy"]
    assert len(set(accs.values())) >= 3, accs  # the candidates differ, so the comparison means something
    assert disk["auto"]["order"] == mem["auto"]["order"]
    for name, acc in accs.items():
        assert disk["auto"]["val_accuracy"][name] == pytest.approx(acc, abs=1e-9), (name, disk["auto"])
    assert disk["auto"]["chosen"] == mem["auto"]["chosen"]
    if select:
        assert disk["auto"]["cross_fitted"] == mem["auto"]["cross_fitted"] == mem["auto"]["order"]
        assert disk["best_epoch"] == mem["best_epoch"] and disk["epochs_trained"] == mem["epochs_trained"]
    for k, w in w_mem.items():
        torch.testing.assert_close(w_disk[k], w, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("kind", ["sparse", "tokens"])
def test_sparse_rows_and_token_ids_stay_as_they_are_on_disk_and_in_batches(tmp_path, kind):
    """A TF-IDF pool stays sparse (values + column indices, never densified on disk or in a buffer)
    and token ids stay int64; every row arrives once per epoch, unchanged, with its teacher row."""
    import scipy.sparse as sp
    from mentor.students.stream import FEATURE_INDEX
    n, d = 900, 5000
    rng = np.random.default_rng(0)
    x = (sp.random(n, d, density=0.002, format="csr", dtype=np.float32, random_state=1) if kind == "sparse"
         else rng.integers(0, 30000, (n, 16)).astype(np.int64))
    xa = x[:30] if kind == "sparse" else rng.integers(0, 30000, (30, 16))
    ids = np.array([f"p{i}" for i in range(n)])
    t = rng.dirichlet(np.ones(C), n).astype(np.float32)
    store = TeacherStore(tmp_path / "store", fingerprint="f", n_classes=C)
    store.write(ids, t)
    write_pool(tmp_path / "pool.parquet", ids, x, row_group_rows=200)
    joined = join_pool(tmp_path / "pool.parquet", store, tmp_path / "joined", bucket_rows=400, row_group_rows=150)
    schema = pq.ParquetFile(sorted(joined.glob("part-*.parquet"))[0]).schema_arrow
    if kind == "sparse":  # on disk: the nonzero values and their columns, not d floats per row
        assert FEATURE_INDEX in schema.names and not pa.types.is_fixed_size_list(schema.field("features").type)
    else:
        assert schema.field("features").type.value_type == pa.int64()
    pool = StreamingPool(joined, xa, np.arange(30) % C, batch_size=64, buffer_rows=300, seed=3)
    assert (pool.kind, pool.n_features) == ((kind, d) if kind == "sparse" else (kind, 16))
    row = {i: k for k, i in enumerate(ids)}
    seen, labeled = [], 0
    for b in loader(pool):
        got = b["x"]
        if kind == "sparse":
            assert sp.issparse(got)
            got = got.toarray()
        else:
            assert got.dtype == torch.int64
            got = got.numpy()
        pool_rows = b["y"].numpy() < 0
        want = np.stack([x[row[i]].toarray()[0] if kind == "sparse" else x[row[i]] for i in b["id"][pool_rows]])
        np.testing.assert_array_equal(got[pool_rows], want)
        np.testing.assert_array_equal(b["t"].numpy()[pool_rows], t[[row[i] for i in b["id"][pool_rows]]])
        seen += list(b["id"][pool_rows])
        labeled += int((~pool_rows).sum())
    assert sorted(seen) == sorted(ids) and labeled == 30
    model = build_model("logistic", in_features=d, n_classes=C) if kind == "sparse" else None
    if model is not None:  # the trainer densifies a batch at a time and trains
        res = train_student_stream(model, pool, config=TrainConfig(epochs=2, min_steps=0, batch_size=64, seed=3))
        assert len(res.history) == 2 and np.isfinite(res.history[-1]["loss"])


def test_a_method_that_cannot_train_from_disk_is_refused_before_anything_is_paid(tmp_path):
    """A method that needs the pool in memory with `train.data_path: stream` used to label the whole
    pool (and pay for it) and only then refuse at training; the config check refuses it up front.
    auto streams when every candidate does; a candidate that cannot is named."""
    from mentor.config import parse_config
    raw = {"output_dir": str(tmp_path / "run"), "data": {"name": "digits"}, "method": "dho",
           "split": {"n_labeled": 50, "n_val": 200, "n_test": 300}, "train": {"data_path": "stream"}}
    with pytest.raises(ConfigError, match="cannot train from disk.*data_path: memory"):
        parse_config(raw)
    (tmp_path / "run.yaml").write_text(json.dumps(raw))
    res = subprocess.run([sys.executable, "-m", "mentor.cli", "label", str(tmp_path / "run.yaml")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "cannot train from disk" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()  # nothing labeled, nothing paid
    parse_config({**raw, "method": "slam"})  # a method that streams is accepted
    parse_config({**raw, "method": "auto"})  # so is auto with its default candidates
    bad = {**raw, "method": "auto", "method_options": {"auto_candidates": ["labeled-only", "slam@0.5",
                                                                           "cleanlab-filter"]}}
    with pytest.raises(ConfigError, match="trains from disk only if every candidate does, and cleanlab-filter "):
        parse_config(bad)
