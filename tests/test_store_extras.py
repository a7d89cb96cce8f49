"""A teacher's full answer in the store: extras kept beside the probabilities (verified with them),
and the bill holding each call's real cost. Real teacher classes, real Parquet, a real second process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from mentor.errors import StoreError, TeacherOutputError
from mentor.store import TeacherStore
from mentor.teachers.base import Teacher, TeacherAnswer
from mentor.teachers.pools import ThreadTeacherPool
from conftest import kill_before_done

ROOT = Path(__file__).resolve().parents[1]
C = 3
IDS = np.array([f"q{i}" for i in range(120)])
LABELS = ["neg", "neu", "pos"]


def probs_of(ids) -> np.ndarray:
    k = np.array([int(i[1:]) for i in ids], dtype=np.float64)[:, None]
    e = np.exp(np.cos(k * np.arange(1, C + 1) * 0.41))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class PricedLLM(Teacher):
    """What an LLM teacher returns: per-row raw text, per-label scores as JSON, token counts, a cost
    per row and an abstention flag; the call's cost is its rows' token costs (not the estimate)."""

    fingerprint, n_classes, cost_per_example, kind = "llm-test", C, 0.01, "llm"

    def __init__(self, fail_call: int | None = None):
        self.calls, self.fail_call = 0, fail_call

    def answer(self, inputs, ids=None):
        self.calls += 1
        if self.calls == self.fail_call:
            raise ConnectionError("server went away")
        p = probs_of(ids)
        k = np.array([int(i[1:]) for i in ids])
        tokens_in, tokens_out = 40 + k % 7, 1 + k % 3
        cost = tokens_in * 1e-5 + tokens_out * 3e-5
        extras = {"text": [f"answer: {LABELS[j]}" for j in p.argmax(1)],
                  "scores": [json.dumps(dict(zip(LABELS, map(float, np.log(r))))) for r in p],
                  "input_tokens": tokens_in.tolist(), "output_tokens": tokens_out.tolist(),
                  "cost": cost.tolist(), "abstained": (k % 10 == 0).tolist()}
        return TeacherAnswer(p, extras, float(cost.sum()))


def row_cost(ids) -> np.ndarray:
    k = np.array([int(i[1:]) for i in ids])
    return (40 + k % 7) * 1e-5 + (1 + k % 3) * 3e-5


class PlainTeacher:
    """A user's own teacher: predict_proba only, same fingerprint."""

    fingerprint, n_classes, cost_per_example = "llm-test", C, 0.01

    def predict_proba(self, inputs, ids=None):
        return probs_of(ids)


def chunks(ids, size=16):
    for i in range(0, len(ids), size):
        yield ids[i:i + size], [f"text {x}" for x in ids[i:i + size]]


def test_extras_round_trip_and_the_bill_is_the_real_cost(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C, shard_size=50)
    report = store.label(PricedLLM(), chunks(IDS))
    assert report.n_new == len(IDS) and report.cost == pytest.approx(row_cost(IDS).sum())
    assert store.extra_columns == ["text", "scores", "input_tokens", "output_tokens", "cost", "abstained"]
    order = np.random.default_rng(1).permutation(len(IDS))
    got = store.read_extras(IDS[order])
    assert got.column_names == ["id", *store.extra_columns]
    assert got.column("id").to_pylist() == IDS[order].tolist()
    assert got.schema.field("input_tokens").type == pa.int64() and got.schema.field("abstained").type == pa.bool_()
    assert got.column("cost").to_pylist() == pytest.approx(row_cost(IDS[order]).tolist())
    assert got.column("abstained").to_pylist() == [int(i[1:]) % 10 == 0 for i in IDS[order]]
    p = probs_of(IDS[order])
    assert got.column("text").to_pylist() == [f"answer: {LABELS[j]}" for j in p.argmax(1)]
    assert [json.loads(s)["pos"] for s in got.column("scores").to_pylist()] == pytest.approx(np.log(p[:, 2]).tolist())
    assert np.array_equal(store.read(IDS[order]), p)  # extras never change the probabilities
    two = store.read_extras(["q7", "q3"], columns=["output_tokens"])
    assert two.to_pydict() == {"id": ["q7", "q3"], "output_tokens": [2, 1]}

    real = row_cost(IDS).sum()  # the estimate would be 120 * 0.01 = 1.2
    assert store.spent == pytest.approx(real) and store.status()["done"]["cost"] == pytest.approx(real)
    again = TeacherStore.open(tmp_path)
    assert again.spent == pytest.approx(real) and again.manifest["spent"] == pytest.approx(real)
    assert json.loads((tmp_path / "_manifest.json").read_text())["spent"] == pytest.approx(real)
    assert again.read_extras(IDS[:5]).equals(store.read_extras(IDS[:5]))
    again.verify()  # the extras are in the shard bytes the sha256 covers
    from mentor.store.status import status
    assert f"spent        {real:,.4g} over 8 teacher calls" in status(tmp_path)


def test_a_failed_call_keeps_its_estimate_and_answered_calls_their_real_cost(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C)
    with pytest.raises(ConnectionError):
        store.label(PricedLLM(fail_call=2), chunks(IDS[:48]))
    s = store.status()
    assert s["done"]["calls"] == 1 and s["done"]["cost"] == pytest.approx(row_cost(IDS[:16]).sum())
    assert s["failed"] == {"calls": 1, "cost": pytest.approx(16 * 0.01)}  # never answered: the estimate
    assert store.spent == pytest.approx(row_cost(IDS[:16]).sum() + 0.16)
    store.label(PricedLLM(), chunks(IDS[:48]))
    assert store.spent == pytest.approx(row_cost(IDS[:48]).sum() + 0.16) and len(store) == 48


def test_answered_but_unusable_call_is_billed_its_real_cost(tmp_path):
    class BadExtras(PricedLLM):
        def answer(self, inputs, ids=None):
            got = super().answer(inputs, ids)
            got.extras["text"] = got.extras["text"][:-1]  # one value short
            return got

    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C)
    with pytest.raises(TeacherOutputError, match=r"extra column 'text' has 15 values for 16 rows"):
        store.label(BadExtras(), chunks(IDS[:16]))
    assert len(store) == 0
    assert store.status()["failed"] == {"calls": 1, "cost": pytest.approx(row_cost(IDS[:16]).sum())}


@pytest.mark.parametrize("extras,match", [({"probs": [1] * 16}, "name 'probs' is not allowed"),
                                          ({"n": 3}, "extra column 'n' has None values")])
def test_bad_extras_are_a_clear_teacher_error(tmp_path, extras, match):
    class Bad(PlainTeacher):
        def answer(self, inputs, ids=None):
            return TeacherAnswer(probs_of(ids), extras)

    with pytest.raises(TeacherOutputError, match=match):
        TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C).label(Bad(), chunks(IDS[:16]))


def test_rows_without_extras_read_null_and_types_are_unified_across_calls(tmp_path):
    class Varying(PlainTeacher):
        calls = 0

        def answer(self, inputs, ids=None):
            self.calls += 1
            n = len(ids)
            extras = [{"score": [1] * n, "note": [None] * n},       # ints; a column all None
                      {"score": [0.5] * n, "note": ["x"] * n},      # floats; text
                      {"score": ["high"] * n}][self.calls - 1]       # text
            return TeacherAnswer(probs_of(ids), extras)

    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C, shard_size=10**6)
    store.label(PlainTeacher(), chunks(IDS[:4], 4))  # no extras at all
    teacher = Varying()
    store.label(teacher, chunks(IDS[4:8], 4))
    store.label(teacher, chunks(IDS[8:12], 4))
    assert store.read_extras(IDS[:12]).to_pydict() == {
        "id": IDS[:12].tolist(), "score": [None] * 4 + [1.0] * 4 + [0.5] * 4, "note": [None] * 8 + ["x"] * 4}
    store.label(teacher, chunks(IDS[12:16], 4))
    assert store.read_extras(IDS[2:14], "score").column("score").to_pylist() == \
        [None] * 2 + ["1"] * 4 + ["0.5"] * 4 + ["high"] * 2
    before = store.read_extras(IDS[:16])
    store.compact()  # merged into one shard: same values, same types
    assert len(store.manifest["shards"]) == 1 and store.read_extras(IDS[:16]).equals(before)
    assert np.array_equal(TeacherStore.open(tmp_path).read(IDS[:16]), probs_of(IDS[:16]))
    with pytest.raises(StoreError, match=r"no extra column 'tokens'.*it has 'score', 'note'"):
        store.read_extras(IDS[:2], ["tokens"])


def test_store_without_extras_reads_only_ids(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C)
    store.label(PlainTeacher(), chunks(IDS[:20]))
    assert store.extra_columns == [] and store.read_extras(["q3", "q1"]).to_pydict() == {"id": ["q3", "q1"]}
    assert store.spent == pytest.approx(0.2)
    with pytest.raises(StoreError, match="1 of 1 requested ids have no stored teacher output"):
        store.read_extras(["nope"])


def test_thread_pool_keeps_extras_and_real_costs(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C, shard_size=40)
    with ThreadTeacherPool(PricedLLM(), workers=3) as pool:
        store.label(pool.teacher, chunks(IDS, 8), pool=pool)
    assert len(store) == len(IDS) and store.spent == pytest.approx(row_cost(IDS).sum())
    got = store.read_extras(IDS)
    assert got.column("cost").to_pylist() == pytest.approx(row_cost(IDS).tolist())
    assert got.column("input_tokens").to_pylist() == (40 + np.arange(len(IDS)) % 7).tolist()


def test_a_plain_teacher_in_a_thread_pool_still_works(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C)
    with ThreadTeacherPool(PlainTeacher(), workers=2) as pool:
        store.label(pool.teacher, chunks(IDS[:40], 8), pool=pool)
    assert np.array_equal(store.read(IDS[:40]), probs_of(IDS[:40])) and store.spent == pytest.approx(0.4)


def test_another_process_reads_the_extras(tmp_path):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C, shard_size=50)
    store.label(PricedLLM(), chunks(IDS))
    code = ("import json, sys; from mentor.store import TeacherStore; s = TeacherStore.open(sys.argv[1]); "
            "t = s.read_extras(['q11', 'q0'], ['text', 'cost', 'abstained']); "
            "print(json.dumps({'cols': s.extra_columns, 'rows': t.to_pylist(), 'spent': s.spent}))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["cols"] == store.extra_columns and got["spent"] == pytest.approx(store.spent)
    want = store.read_extras(["q11", "q0"], ["text", "cost", "abstained"]).to_pylist()
    assert got["rows"] == want and want[1]["abstained"] is True


def test_kill_before_the_commit_line_keeps_the_real_cost(tmp_path, monkeypatch):
    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C, shard_size=10**6)
    kill_before_done(store, monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        store.label(PricedLLM(), chunks(IDS[:16]))
    monkeypatch.undo()
    store.close()
    again = TeacherStore.open(tmp_path)  # adopts the shard renamed into place
    assert len(again) == 16 and again.spent == pytest.approx(row_cost(IDS[:16]).sum())
    assert again.read_extras(IDS[:16], "cost").column("cost").to_pylist() == pytest.approx(row_cost(IDS[:16]).tolist())


@pytest.mark.parametrize("cost", [-1.0, float("nan"), "free"])
def test_an_impossible_cost_is_a_teacher_error(tmp_path, cost):
    class Odd(PlainTeacher):
        def answer(self, inputs, ids=None):
            return TeacherAnswer(probs_of(ids), {}, cost)

    store = TeacherStore(tmp_path, fingerprint="llm-test", n_classes=C)
    with pytest.raises(TeacherOutputError, match="cost is a finite number >= 0"):
        store.label(Odd(), chunks(IDS[:16]))
    assert store.spent == pytest.approx(0.16)
