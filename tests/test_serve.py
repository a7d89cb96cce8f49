"""`mentor serve`: a student over HTTP, and the cascade that asks a real teacher server when unsure.

Everything runs as real servers on 127.0.0.1: the student under uvicorn, the teacher behind mentor's
own teacher server, clients through httpx, mentor's RemoteTeacher and the official OpenAI client."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time

import httpx
import numpy as np
import pytest
import torch

from mentor.data import load_dataset
from mentor.serve import Cascade, ServedModel, create_app, student_answers
from mentor.students.models import MLP, Featurizer
from mentor.students.train import TrainConfig, predict_proba, train_student
from mentor.teachers import RemoteTeacher, TorchTeacher
from mentor.teachers.http import serve_teacher


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def uvicorn_server(app):
    import uvicorn
    port = _port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    t = threading.Thread(target=server.run, daemon=True)
    t.start()
    deadline = time.time() + 20
    while not server.started:
        if time.time() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        t.join(10)


class TorchPredictor:
    def __init__(self, model, feat):
        self.model, self.feat = model, feat

    def predict_proba(self, inputs):
        return predict_proba(self.model, self.feat.transform(inputs), device="cpu")


@pytest.fixture(scope="module")
def digits():
    """A weak student (logistic on 60 labels) and a stronger teacher (MLP on 600), both real torch models."""
    data = load_dataset("digits")
    x, y = data.features.astype(np.float32), data.labels
    feat = Featurizer("standardize").fit(x)
    torch.manual_seed(0)
    student = MLP(64, 10, hidden=())
    train_student(student, feat.transform(x[:60]), y[:60], config=TrainConfig(epochs=30, min_steps=0, device="cpu"))
    teacher_net = MLP(64, 10, hidden=(64,))
    train_student(teacher_net, feat.transform(x[:600]), y[:600], config=TrainConfig(epochs=30, min_steps=0, device="cpu"))
    teacher = TorchTeacher(_Standardized(teacher_net, feat), 10)
    served = ServedModel(TorchPredictor(student, feat), None, "features", 64, name="digits")
    return data, served, teacher


class _Standardized(torch.nn.Module):
    def __init__(self, net, feat):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(feat.mean_, dtype=torch.float32))
        self.register_buffer("scale", torch.tensor(feat.scale_, dtype=torch.float32))

    def forward(self, x):
        return self.net((x - self.mean) / self.scale)


def test_student_answers_is_the_threshold_rule():
    p = np.array([[0.5, 0.5], [0.91, 0.09], [0.2, 0.8]])
    assert student_answers(p, None).all()
    assert student_answers(p, 0.8).tolist() == [False, True, True]
    assert student_answers(p, 0.95).tolist() == [False, False, False]


def test_cascade_sends_unsure_examples_to_a_real_teacher_server(digits):
    data, served, teacher = digits
    x = data.features[1000:1064].astype(np.float32)
    t_probs = teacher.predict_proba(x)
    s_probs = served.predictor.predict_proba(x)
    threshold = float(np.median(s_probs.max(1)))  # about half go to the teacher
    tserver = serve_teacher(teacher, port=0, background=True, quiet=True)
    try:
        remote = RemoteTeacher(f"http://127.0.0.1:{tserver.server_address[1]}", 10, max_retries=0)
        with uvicorn_server(create_app(Cascade(served, remote, threshold))) as url:
            r = httpx.post(url + "/predict", json={"ids": [f"r{i}" for i in range(64)], "inputs": x.tolist()})
            assert r.status_code == 200, r.text
            body = r.json()
            by = np.array(body["answered_by"])
            unsure = s_probs.max(1) < threshold
            assert (by == "teacher").tolist() == unsure.tolist() and 0 < unsure.sum() < 64
            probs = np.array(body["probs"])
            np.testing.assert_allclose(probs[unsure], t_probs[unsure], atol=1e-6)
            np.testing.assert_allclose(probs[~unsure], s_probs[~unsure], atol=1e-6)
            assert body["ids"] == [f"r{i}" for i in range(64)]
            assert body["labels"] == [str(i) for i in probs.argmax(1)]
            health = httpx.get(url + "/health").json()
            assert health["cascade"] and health["counts"]["teacher"] == int(unsure.sum())

            # a served cascade is itself a mentor teacher (same protocol)
            as_teacher = RemoteTeacher(url + "/predict", 10, max_retries=0)
            np.testing.assert_allclose(as_teacher.predict_proba(x[:10]), probs[:10], atol=1e-6)
    finally:
        tserver.shutdown()
        tserver.server_close()


class _Counting:
    """A teacher behind the teacher server that counts the examples it is asked about (what a paid
    API would bill)."""

    def __init__(self, teacher):
        self.teacher, self.n_classes, self.fingerprint = teacher, teacher.n_classes, teacher.fingerprint
        self.cost_per_example, self.kind, self.asked = 0.0, "counting", 0

    def predict_proba(self, inputs, ids=None):
        self.asked += len(inputs)
        return self.teacher.predict_proba(inputs, ids)

    def answer(self, inputs, ids=None):
        from mentor.teachers.base import TeacherAnswer
        return TeacherAnswer(self.predict_proba(inputs, ids))


def test_cascade_keeps_every_paid_answer_and_never_pays_twice_for_one_input(digits, tmp_path):
    """Before: each fallback call was paid and thrown away; the same input asked again was paid again."""
    from mentor.serve import served_id
    from mentor.store import TeacherStore
    data, served, teacher = digits
    x = data.features[1000:1040].astype(np.float32)
    threshold = float(np.median(served.predictor.predict_proba(x).max(1)))
    counting = _Counting(teacher)
    tserver = serve_teacher(counting, port=0, background=True, quiet=True)
    try:
        remote = RemoteTeacher(f"http://127.0.0.1:{tserver.server_address[1]}", 10, max_retries=0,
                               cost_per_example=0.25)
        store = TeacherStore(tmp_path / "answers", fingerprint=remote.fingerprint, n_classes=10)
        cascade = Cascade(served, remote, threshold, answers=store)
        with uvicorn_server(create_app(cascade)) as url:
            first = httpx.post(url + "/predict", json={"ids": [f"a{i}" for i in range(40)], "inputs": x.tolist()}).json()
            unsure = np.array(first["answered_by"]) == "teacher"
            assert counting.asked == unsure.sum() > 0
            # the same inputs again, under other ids and twice within the request: answered from the store
            again = httpx.post(url + "/predict", json={"inputs": x[unsure].tolist() * 2}).json()
            assert counting.asked == unsure.sum()
            assert set(again["answered_by"]) == {"teacher"}
            np.testing.assert_allclose(np.array(again["probs"]), np.array(first["probs"])[unsure].tolist() * 2,
                                       atol=1e-6)
            health = httpx.get(url + "/health").json()
            assert health["counts"]["teacher_paid"] == unsure.sum()
            assert health["counts"]["teacher_from_store"] == 2 * unsure.sum()
            assert health["teacher_spent"] == pytest.approx(0.25 * unsure.sum())
    finally:
        tserver.shutdown()
        tserver.server_close()
    kept = TeacherStore.open(tmp_path / "answers")
    keys = [served_id(row) for row in x[unsure]]
    assert len(kept) == unsure.sum() and kept.spent == pytest.approx(0.25 * unsure.sum())
    np.testing.assert_allclose(kept.read(keys), teacher.predict_proba(x[unsure]), atol=1e-6)
    inputs = kept.read_extras(keys, columns=["served_input"]).column("served_input").to_pylist()
    np.testing.assert_allclose(np.array([json.loads(v) for v in inputs]), x[unsure])


def test_cascade_answers_go_to_the_row_log_not_a_shard_per_request(digits, tmp_path):
    """Bug: each request's paid answer was written as its own Parquet shard (a service answering
    1,000 fallbacks left 1,000 tiny files). Now they stay in the fsynced row log, readable and
    adopted by a reopen after a kill, and become one shard when the service stops."""
    from mentor.serve import served_id
    from mentor.store import TeacherStore
    data, served, teacher = digits
    x = data.features[1200:1230].astype(np.float32)
    store = TeacherStore(tmp_path / "answers", fingerprint=teacher.fingerprint, n_classes=10)
    cascade = Cascade(served, teacher, 1.0, answers=store)  # threshold 1: the teacher answers everything
    shards = lambda: sorted((tmp_path / "answers").glob("shard-*.parquet"))
    with uvicorn_server(create_app(cascade)) as url:
        for row in x:
            body = httpx.post(url + "/predict", json={"inputs": [row.tolist()]}).json()
            assert body["answered_by"] == ["teacher"]
        assert shards() == []  # 30 requests, 30 paid answers, no shard yet
        after_kill = TeacherStore.open(tmp_path / "answers")  # as a new process would, e.g. after a kill
        np.testing.assert_allclose(after_kill.read([served_id(r) for r in x]), teacher.predict_proba(x), atol=1e-6)
        after_kill.close()
        again = httpx.post(url + "/predict", json={"inputs": x[:5].tolist()}).json()  # kept: not paid again
        assert again["answered_by"] == ["teacher"] * 5
        assert httpx.get(url + "/health").json()["counts"]["teacher_paid"] == 30
    assert len(shards()) == 1  # the shutdown wrote them as one shard
    kept = TeacherStore.open(tmp_path / "answers")
    assert len(kept) == 30 and not kept.manifest["pending"]
    np.testing.assert_allclose(kept.read([served_id(r) for r in x]), teacher.predict_proba(x), atol=1e-6)


class _Slow:
    """A teacher that takes 0.2 s a call, like a remote API, and records how many calls overlapped."""

    def __init__(self, teacher):
        self.teacher, self.n_classes, self.fingerprint = teacher, teacher.n_classes, teacher.fingerprint
        self.cost_per_example, self.asked, self.now, self.most = 0.0, 0, 0, 0
        self.lock = threading.Lock()

    def predict_proba(self, inputs, ids=None):
        with self.lock:
            self.asked += len(inputs)
            self.now += 1
            self.most = max(self.most, self.now)
        time.sleep(0.2)
        with self.lock:
            self.now -= 1
        return self.teacher.predict_proba(inputs, ids)


@pytest.mark.parametrize("calls", [1, 4])
def test_concurrent_fallbacks_are_sent_together_in_parallel_calls(digits, tmp_path, calls):
    """Before: one teacher call at a time, each request's own, so a slow API capped the cascade at
    one call's latency per fallback. Now requests waiting for the teacher go out together, over up to
    `teacher_calls` parallel calls, each distinct input paid once."""
    import concurrent.futures

    from mentor.serve import served_id
    from mentor.store import TeacherStore
    data, served, teacher = digits
    x = data.features[1300:1316].astype(np.float32)
    slow = _Slow(teacher)
    store = TeacherStore(tmp_path / "answers", fingerprint=slow.fingerprint, n_classes=10)
    cascade = Cascade(served, slow, 1.0, answers=store, teacher_calls=calls)
    rows = [x[i % 12:i % 12 + 1] for i in range(16)]  # 16 requests, 12 distinct inputs
    with concurrent.futures.ThreadPoolExecutor(16) as ex:
        outs = list(ex.map(lambda r: cascade.answer(["a"], r), rows))
    assert all(o["answered_by"] == ["teacher"] for o in outs)
    np.testing.assert_allclose(np.array([o["probs"][0] for o in outs]),
                               teacher.predict_proba(np.concatenate(rows)), atol=1e-6)
    assert slow.asked == 12 and len(store) == 12  # each distinct input paid once
    assert cascade.counts["teacher_paid"] == 12 and cascade.counts["teacher_from_store"] == 4
    assert slow.most == calls  # one call at a time, or several at once
    np.testing.assert_allclose(store.read([served_id(r[0]) for r in rows[:12]]),
                               teacher.predict_proba(x[:12]), atol=1e-6)
    cascade.close()


def test_answers_asked_again_come_from_memory_without_reading_the_store(digits, tmp_path):
    """Measured before: a cascade whose 32 inputs per request were all kept still read them from the
    store each time (half the student's rate). The most recent `kept_in_memory` answers skip it."""
    from mentor.store import TeacherStore
    data, served, teacher = digits
    x = data.features[1500:1510].astype(np.float32)
    store = TeacherStore(tmp_path / "answers", fingerprint=teacher.fingerprint, n_classes=10)
    reads = []
    read = store.read
    store.read = lambda ids: reads.append(len(ids)) or read(ids)
    cascade = Cascade(served, teacher, 1.0, answers=store, kept_in_memory=8)
    first = cascade.answer([str(i) for i in range(8)], x[:8])
    assert reads == [8]
    again = cascade.answer([str(i) for i in range(8)], x[:8])
    assert reads == [8] and again["probs"] == first["probs"]  # from memory
    assert cascade.counts["teacher_paid"] == 8 and cascade.counts["teacher_from_store"] == 8
    cascade.answer(["8", "9"], x[8:10])  # 10 inputs seen, 8 kept in memory: the two oldest dropped
    assert reads == [8, 2] and len(cascade._kept) == 8
    out = cascade.answer(["0"], x[:1])
    assert reads == [8, 2, 1] and out["probs"] == first["probs"][:1]  # read from the store again
    np.testing.assert_allclose(np.array(out["probs"]), teacher.predict_proba(x[:1]), atol=1e-6)


def test_no_keep_inputs_keeps_the_answer_and_only_a_hash_of_the_input(digits, tmp_path):
    from mentor.serve import served_id
    from mentor.store import TeacherStore
    data, served, teacher = digits
    x = data.features[1100:1110].astype(np.float32)
    store = TeacherStore(tmp_path / "s", fingerprint=teacher.fingerprint, n_classes=10)
    out = Cascade(served, teacher, 1.0, answers=store, keep_inputs=False).answer([str(i) for i in range(10)], x)
    assert set(out["answered_by"]) == {"teacher"}
    assert "served_input" not in store.extra_columns and "served_at" in store.extra_columns
    np.testing.assert_allclose(store.read([served_id(r) for r in x]), teacher.predict_proba(x), atol=1e-6)


def test_a_store_of_another_teacher_is_refused(digits, tmp_path):
    from mentor.errors import ConfigError
    from mentor.store import TeacherStore
    _, served, teacher = digits
    other = TeacherStore(tmp_path / "s", fingerprint="another-teacher", n_classes=10)
    with pytest.raises(ConfigError, match="another-teacher"):
        Cascade(served, teacher, 0.9, answers=other)


@pytest.mark.parametrize("policy", ["student", "fail"])
def test_unreachable_teacher_follows_the_configured_policy(digits, policy):
    data, served, _ = digits
    dead = RemoteTeacher(f"http://127.0.0.1:{_port()}", 10, max_retries=0, timeout_s=2)  # nothing listens there
    x = data.features[1000:1020].astype(np.float32)
    with uvicorn_server(create_app(Cascade(served, dead, 0.999, on_teacher_error=policy))) as url:
        r = httpx.post(url + "/predict", json={"inputs": x.tolist()})
        if policy == "student":
            assert r.status_code == 200
            assert set(r.json()["answered_by"]) <= {"student", "student-fallback-failed"}
            assert "student-fallback-failed" in r.json()["answered_by"] and r.json()["fallback_error"]
        else:
            assert r.status_code == 503 and "teacher" in r.json()["error"]["message"]
        assert httpx.get(url + "/health").status_code == 200


class _Flaky:
    """A teacher that fails while `down` is set, counting the calls it gets."""

    def __init__(self, teacher):
        self.teacher, self.n_classes, self.fingerprint = teacher, teacher.n_classes, teacher.fingerprint
        self.cost_per_example, self.calls, self.down = 0.0, 0, True

    def predict_proba(self, inputs, ids=None):
        self.calls += 1
        if self.down:
            raise ConnectionError("connection refused")
        return self.teacher.predict_proba(inputs, ids)


def test_a_failed_teacher_is_not_asked_again_until_retry_after(digits, tmp_path):
    """Before: with the teacher down, every request that needed it waited through the teacher's
    own retries (25 s each for an unreachable LLM endpoint) before the student answered. Now the
    requests within `retry_after_s` of a failure do not ask it and say why; the first after asks."""
    from mentor.errors import ConfigError
    from mentor.store import TeacherStore
    data, served, teacher = digits
    flaky = _Flaky(teacher)
    x = data.features[1400:1410].astype(np.float32)
    store = TeacherStore(tmp_path / "answers", fingerprint=flaky.fingerprint, n_classes=10)
    cascade = Cascade(served, flaky, 1.0, answers=store, retry_after_s=3600)
    first = cascade.answer(["a"], x[:1])
    assert first["answered_by"] == ["student-fallback-failed"] and "connection refused" in first["fallback_error"]
    assert flaky.calls == 1
    later = [cascade.answer(["b"], x[i:i + 1]) for i in range(1, 6)]
    assert flaky.calls == 1  # not asked within the hour
    assert all(r["answered_by"] == ["student-fallback-failed"] for r in later)
    assert "failed 0 s ago (ConnectionError: connection refused)" in later[0]["fallback_error"]
    flaky.down = False
    cascade._failed = (cascade._failed[0] - 3601, cascade._failed[1])  # an hour later
    back = cascade.answer(["c"], x[6:7])
    assert back["answered_by"] == ["teacher"] and flaky.calls == 2
    assert cascade.answer(["d"], x[7:8])["answered_by"] == ["teacher"]  # and it stays asked
    every = Cascade(served, _Flaky(teacher), 1.0, retry_after_s=0)  # 0: asked every time
    for i in range(3):
        every.answer(["e"], x[i:i + 1])
    assert every.teacher.calls == 3
    with pytest.raises(ConfigError):
        Cascade(served, teacher, 1.0, retry_after_s=-1)


def test_bad_requests_get_clear_4xx_and_the_service_keeps_running(digits):
    _, served, _ = digits
    row = [0.0] * 64
    with uvicorn_server(create_app(Cascade(served), max_batch=8)) as url:
        cases = [
            (b"not json", "not JSON"),
            (b"[1, 2]", "JSON object"),
            (b'{"ids": [1]}', "inputs"),
            (b'{"ids": [1, 2], "inputs": [%s]}' % str(row).encode(), "as long as"),
            (b'{"inputs": [[1, 2, 3]]}', "64 features"),
            (b'{"inputs": ["some text"]}', "not text"),
            (b'{"inputs": [[1, NaN]]}', None),  # Python's json reads NaN; rejected as not finite or wrong width
            (b'{"inputs": %s}' % str([row] * 9).encode(), "at most 8"),
            (b'{"inputs": []}', "non-empty"),
        ]
        for body, needle in cases:
            r = httpx.post(url + "/predict", content=body, headers={"Content-Type": "application/json"})
            assert 400 <= r.status_code < 500, (body, r.status_code, r.text)
            msg = r.json()["error"]["message"]
            if needle:
                assert needle in msg, (body, msg)
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 400 and "text models" in r.json()["error"]["message"]
        assert httpx.post(url + "/predict", json={"inputs": [row]}).status_code == 200


@pytest.fixture(scope="module")
def text_model():
    """A TF-IDF + logistic student on two fortune-like topics, small enough to train in a second."""
    texts = [f"the cat sat on the mat number {i}" for i in range(40)] + [
        f"stock markets fell sharply today by {i} percent" for i in range(40)]
    y = np.array([0] * 40 + [1] * 40)
    feat = Featurizer("tfidf", max_features=200).fit(texts)
    torch.manual_seed(0)
    net = MLP(feat.n_features, 2, hidden=())
    train_student(net, feat.transform(texts), y, config=TrainConfig(epochs=40, min_steps=0, device="cpu"))
    return ServedModel(TorchPredictor(net, feat), ["pets", "finance"], "text", name="topics")


def test_openai_client_can_point_at_the_cascade(text_model):
    from openai import OpenAI

    class KeywordTeacher:  # a plain teacher object: the cascade calls predict_proba(inputs, ids)
        fingerprint = "keyword"

        def predict_proba(self, inputs, ids=None):
            return np.array([[0.0, 1.0] if "stock" in t else [1.0, 0.0] for t in inputs])

    with uvicorn_server(create_app(Cascade(text_model, KeywordTeacher(), threshold=0.99))) as url:
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list().data] == ["topics"]
        out = client.chat.completions.create(model="topics", messages=[
            {"role": "system", "content": "Classify the topic."},
            {"role": "user", "content": "the cat sat on the mat number 3"}])
        assert out.choices[0].message.content == "pets"
        extra = out.model_extra["mentor"]
        assert extra["answered_by"] in ("student", "teacher")
        # an unfamiliar text is unsure for the student: the teacher answers it
        out = client.chat.completions.create(model="topics", messages=[
            {"role": "user", "content": "stock"}])
        assert out.choices[0].message.content == "finance"
        assert out.model_extra["mentor"]["answered_by"] == "teacher"
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [{"role": "system", "content": "x"}]})
        assert r.status_code == 400 and "no user message" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/chat/completions", json={"model": "topics"})
        assert r.status_code == 400 and "messages" in r.json()["error"]["message"]


def test_a_cascade_needs_a_threshold(text_model):
    from mentor.errors import ConfigError
    with pytest.raises(ConfigError, match="mentor cascade"):
        Cascade(text_model, object(), None)
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        Cascade(text_model, object(), 1.5)


def test_load_test_counts_every_request_and_every_failure(digits):
    from mentor.bench.serve import load_test
    data, served, _ = digits
    good = {"inputs": data.features[:4].astype(float).tolist()}
    bad = {"inputs": [[1.0, 2.0]]}  # wrong width: a 400 for every one of these
    with uvicorn_server(create_app(Cascade(served))) as url:
        res = load_test(url + "/predict", [good], concurrency=4, n_requests=40, warmup=2)
        assert res["requests"] == 40 and res["errors"] == 0 and res["statuses"] == {"200": 40}
        assert 0 < res["p50_ms"] <= res["p95_ms"] <= res["p99_ms"] and res["requests_per_s"] > 0
        res = load_test(url + "/predict", [good, bad], concurrency=4, n_requests=40, warmup=0)
        assert res["errors"] == 20 and res["statuses"] == {"200": 20, "400": 20}


# ---------------------------------------------------------------------------------------------- the CLI

MENTOR = [__import__("sys").executable, "-m", "mentor.cli"]


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A finished run (model folder written) with a cascade threshold chosen on V."""
    import subprocess

    import yaml
    tmp = tmp_path_factory.mktemp("serve-run")
    cfg = {"data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 500, "n_test": 300},
           "teacher": {"kind": "mlp", "epochs": 40, "min_steps": 0}, "student": {"kind": "logistic"},
           "train": {"epochs": 20, "min_steps": 0}, "baseline": False, "output_dir": str(tmp / "run")}
    (tmp / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(MENTOR + ["run", str(tmp / "cfg.yaml")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    r = subprocess.run(MENTOR + ["cascade", str(tmp / "run"), "--target", "0.95"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return tmp / "run"


@contextlib.contextmanager
def cli_server(*args):
    import subprocess
    port = _port()
    proc = subprocess.Popen(MENTOR + ["serve", *map(str, args), "--port", str(port)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"mentor serve exited {proc.returncode}: {proc.stderr.read()[-2000:]}")
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.time() > deadline:
                raise AssertionError("mentor serve did not answer within 120 s")
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(20)


def test_mentor_serve_cascade_end_to_end(digits_run):
    import json
    choice = json.loads((digits_run / "cascade.json").read_text())
    assert choice["met"], choice
    data = load_dataset("digits")
    x = data.features[:200].astype(float).tolist()
    with cli_server(digits_run / "model", "--cascade", digits_run) as url:
        health = httpx.get(url + "/health").json()
        assert health["cascade"] and health["threshold"] == pytest.approx(choice["threshold"])
        body = httpx.post(url + "/predict", json={"inputs": x}, timeout=120).json()
        conf, by = np.array(body["confidence"]), np.array(body["answered_by"])
        assert set(by) <= {"student", "teacher"} and (by == "teacher").any()
        # every example the student kept is at or above the threshold chosen on V
        assert (conf[by == "student"] >= choice["threshold"] - 1e-9).all()
        health = httpx.get(url + "/health").json()
        assert health["answers_store"] == str(digits_run / "served-answers")
        assert health["counts"]["teacher_paid"] == (by == "teacher").sum()
    from mentor.store import TeacherStore
    assert len(TeacherStore.open(digits_run / "served-answers")) == len({tuple(r) for r, b in zip(x, by) if b == "teacher"})
    with cli_server(digits_run / "model", "--runtime", "onnx") as url:  # the student alone, from its ONNX graph
        body = httpx.post(url + "/predict", json={"inputs": x[:20]}).json()
        assert set(body["answered_by"]) == {"student"} and np.allclose(np.sum(body["probs"], 1), 1, atol=1e-5)


def test_mentor_serve_bad_input_exits_2(digits_run, tmp_path):
    import subprocess

    def run(*args):
        r = subprocess.run(MENTOR + ["serve", *map(str, args)], capture_output=True, text=True, timeout=300)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        return r.stderr

    assert "not a mentor model folder" in run(tmp_path)
    assert "run folder, not a model folder" in run(digits_run)
    assert "--cascade RUN_DIR" in run(digits_run / "model", "--threshold", "0.9")
    assert "--cascade RUN_DIR" in run(digits_run / "model", "--answers-store", tmp_path / "a")
    (tmp_path / "run2").mkdir()
    import shutil
    shutil.copy(digits_run / "config.yaml", tmp_path / "run2" / "config.yaml")
    assert "mentor cascade" in run(digits_run / "model", "--cascade", tmp_path / "run2")


def test_bench_serve_measures_student_onnx_and_cascade(digits_run):
    from mentor.bench.serve import bench_serve
    rows = bench_serve(digits_run, n_requests=12, concurrency=2, batch=4, n_inputs=48, log=lambda *_: None)
    assert [r["arm"] for r in rows] == ["student (torch)", "student (onnx)", "cascade (torch + teacher)"]
    assert all(r["errors"] == 0 and r["requests"] == 12 and r["p50_ms"] > 0 for r in rows)
    assert rows[0]["teacher_share"] == 0 and rows[2]["teacher_share"] > 0


def test_bench_serve_on_a_cascade_that_met_no_target_is_a_clear_error(digits_run, tmp_path):
    """Bug: the cascade arm's server refused a cascade.json that met nothing, and `mentor bench serve`
    showed a RuntimeError traceback instead of the server's own message and exit 2."""
    import json
    import shutil
    import subprocess
    run = tmp_path / "run"
    shutil.copytree(digits_run, run, ignore=shutil.ignore_patterns("served-answers"))
    c = json.loads((run / "cascade.json").read_text())
    (run / "cascade.json").write_text(json.dumps({**c, "met": False, "threshold": None, "target": 0.999}))
    r = subprocess.run(MENTOR + ["bench", "serve", str(run), "--requests", "4", "--arms", "cascade"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert "no threshold met its target" in r.stderr and "mentor cascade" in r.stderr
