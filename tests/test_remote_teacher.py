"""The HTTP teacher against a real server: a ThreadingHTTPServer on 127.0.0.1 serving a
scikit-learn model fit on digits, with faults injected per request (503s, 400s, wrong shapes,
a server that dies mid-run) to check retries, errors, and that nothing paid for is lost."""

import io
import json
import math
import os
import subprocess
import sys
import threading
import time
from contextlib import contextmanager

import numpy as np
import pytest
import yaml

from mentor.config import parse_config
from mentor.errors import ConfigError, StoreError, TeacherOutputError
from mentor.pipeline import get_teacher, label, prepare
from mentor.store import TeacherStore
from mentor.teachers import RemoteTeacher, RemoteTeacherError, teacher_server

FAST = {"backoff_s": 0.001, "max_backoff_s": 0.01}  # retries without waiting in tests


class Served:
    """A running server plus what it saw: requests (parsed bodies, in order) and their headers."""

    def __init__(self, server):
        self.server, self.requests, self.headers, self.paths, self.lock = server, [], [], [], threading.Lock()
        self.fault = None  # fault(n, request) -> None (serve normally) or (status, body: dict | str | bytes)
        host, port = server.server_address[:2]
        self.url = f"http://{host}:{port}/predict"

    @property
    def ids_seen(self) -> list:
        return [i for r in self.requests for i in r["ids"]]


@contextmanager
def serve(teacher, fault=None):
    server = teacher_server(teacher, "127.0.0.1", 0)
    served = Served(server)
    served.fault = fault
    base = server.RequestHandlerClass

    class Faulty(base):
        def do_POST(self):  # noqa: N802
            raw = self.rfile.read(int(self.headers["Content-Length"]))
            with served.lock:
                served.requests.append(json.loads(raw))
                served.headers.append(dict(self.headers))
                served.paths.append(self.path)
                n = len(served.requests)
            answer = served.fault(n, served.requests[-1]) if served.fault else None
            if answer is None:
                self.rfile = io.BytesIO(raw)
                return super().do_POST()
            status, body, *extra = answer  # extra: a dict of response headers (e.g. Location)
            body = body if isinstance(body, bytes) else (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            for k, v in (extra[0] if extra else {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

    server.RequestHandlerClass = Faulty
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield served
    finally:
        server.shutdown()
        server.server_close()


def _batches(ids, x, size):
    return ((ids[i:i + size], x[i:i + size]) for i in range(0, len(ids), size))


# ---------------------------------------------------------------------------------------------- outputs

def test_outputs_equal_the_local_model(digits, model):
    x, ids = digits.features[300:650], digits.ids[300:650]
    with serve(model) as s:
        remote = RemoteTeacher(s.url, 10, batch_size=100)
        probs = remote.predict_proba(x, ids)
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-6)
    assert len(s.requests) == 4 and [len(r["ids"]) for r in s.requests] == [100, 100, 100, 50]
    assert s.ids_seen == ids.tolist()
    assert np.allclose(np.asarray(s.requests[0]["inputs"]), x[:100])


def test_logits_and_topk_answers(digits, model):
    x = digits.features[:40]
    p = model.predict_proba(x)
    logits = lambda n, r: (200, {"logits": (np.log(p[:len(r["ids"])] + 1e-12) + 3.0).tolist()})  # noqa: E731
    with serve(model, fault=logits) as s:
        got = RemoteTeacher(s.url, 10, output="logits", batch_size=40).predict_proba(x)
    np.testing.assert_allclose(got, p, atol=1e-5)
    top = np.argsort(-p, axis=1)[:, :3]

    def topk(n, r):
        return 200, {"topk_index": top.tolist(), "topk_logprob": np.log(np.take_along_axis(p, top, 1)).tolist()}
    with serve(model, fault=topk) as s:
        got = RemoteTeacher(s.url, 10, output="topk", batch_size=40).predict_proba(x)
    np.testing.assert_allclose(np.take_along_axis(got, top, 1), np.take_along_axis(p, top, 1), atol=1e-5)
    assert np.allclose(got.sum(1), 1, atol=1e-5)


def test_text_inputs_are_sent_as_strings():
    class Echo:  # counts characters: enough to see the strings arrive intact
        def predict_proba(self, inputs, ids=None):
            return np.array([[1.0, 0.0] if len(t) % 2 else [0.0, 1.0] for t in inputs])
    texts = np.array(["odd", "even", "naïve ünïcode"], dtype=object)
    with serve(Echo()) as s:
        got = RemoteTeacher(s.url, 2).predict_proba(texts, ids=["a", "b", "c"])
    assert s.requests[0] == {"ids": ["a", "b", "c"], "inputs": list(texts)}
    assert got.argmax(1).tolist() == [0, 1, 0]


# ---------------------------------------------------------------------------------------------- retries

def test_retries_503_twice_then_succeeds(digits, model):
    x = digits.features[:50]
    with serve(model, fault=lambda n, r: (503, "busy") if n <= 2 else None) as s:
        with pytest.warns(UserWarning, match="HTTP 503"):
            probs = RemoteTeacher(s.url, 10, **FAST).predict_proba(x)
    assert len(s.requests) == 3
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-6)


def test_429_with_retry_after_and_timeouts_are_retried(digits, model):
    x = digits.features[:20]
    with serve(model, fault=lambda n, r: (429, "slow down") if n == 1 else None) as s:
        with pytest.warns(UserWarning, match="HTTP 429"):
            RemoteTeacher(s.url, 10, **FAST).predict_proba(x)
    assert len(s.requests) == 2

    def slow_once(n, r):
        if n == 1:
            time.sleep(1.0)
        return None
    with serve(model, fault=slow_once) as s:
        with pytest.warns(UserWarning, match="retry 1/"):
            probs = RemoteTeacher(s.url, 10, timeout_s=0.3, **FAST).predict_proba(x)
    assert len(s.requests) == 2
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-6)


def test_gives_up_after_max_retries(digits, model):
    with serve(model, fault=lambda n, r: (500, "boom")) as s:
        with pytest.warns(UserWarning), pytest.raises(RemoteTeacherError, match=r"gave up after 3 attempt.*500.*boom"):
            RemoteTeacher(s.url, 10, max_retries=2, **FAST).predict_proba(digits.features[:5])
    assert len(s.requests) == 3
    dead = f"http://127.0.0.1:{s.server.server_address[1]}/predict"  # the server is closed now
    teacher = RemoteTeacher(dead, 10, max_retries=1, **FAST)
    with pytest.warns(UserWarning), pytest.raises(RemoteTeacherError, match="gave up after 2 attempt.*cannot connect"):
        teacher.predict_proba(digits.features[:5])
    assert teacher.n_requests == 2


def test_400_fails_at_once_with_status_and_body(digits, model):
    body = "invalid input: feature 3 out of range " + "x" * 400
    with serve(model, fault=lambda n, r: (400, body)) as s:
        with pytest.raises(RemoteTeacherError) as info:
            RemoteTeacher(s.url, 10, **FAST).predict_proba(digits.features[:5])
    assert len(s.requests) == 1
    msg = str(info.value)
    assert "HTTP 400" in msg and "not retried" in msg and "invalid input: feature 3 out of range" in msg
    assert body[:300] in msg and body[:301] not in msg  # the first 300 characters, no more


# ---------------------------------------------------------------------------------------------- bad answers

def _wrong(kind, p):
    def fault(n, r):
        k = len(r["ids"])
        return 200, {
            "classes": {"probs": p[:k, :9].tolist()},
            "rows": {"probs": p[:k - 1].tolist()},
            "key": {"scores": p[:k].tolist()},
            "json": "<html>Gateway</html>",
            "ids": {"ids": r["ids"][::-1], "probs": p[:k].tolist()},
            "sum": {"probs": (p[:k] * 2).tolist()},
            "ragged": {"probs": [[0.5, 0.5]] + p[1:k].tolist()},
        }[kind]
    return fault


@pytest.mark.parametrize("kind, match", [
    ("classes", "gives 9 classes but the labels have 10"),
    ("rows", r"shape \(4, 10\) for 5 examples"),
    ("key", "the answer has no 'probs' field"),
    ("json", "not JSON: '<html>Gateway</html>'"),
    ("ids", "would be misattributed"),
    ("sum", "do not sum to 1"),
    ("ragged", "not a numeric matrix"),
])
def test_bad_answers_fail_with_a_clear_error(digits, model, kind, match):
    x = digits.features[:5]
    with serve(model, fault=_wrong(kind, model.predict_proba(x))) as s:
        with pytest.raises(TeacherOutputError, match=match):
            RemoteTeacher(s.url, 10, **FAST).predict_proba(x)
    assert len(s.requests) == 1  # a bad answer is not retried


# ---------------------------------------------------------------------------------------------- the store

def test_store_pays_each_id_once(digits, model, tmp_path):
    ids, x = digits.ids[:230], digits.features[:230]
    with serve(model) as s:
        teacher = RemoteTeacher(s.url, 10, batch_size=100, cost_per_example=0.01)
        store = TeacherStore(tmp_path / "store", fingerprint=teacher.fingerprint, n_classes=10)
        first = store.label(teacher, _batches(ids, x, teacher.batch_size))
        n_first = len(s.requests)
        second = store.label(teacher, _batches(ids, x, teacher.batch_size))
    assert n_first == 3 and len(s.requests) == 3  # the second run makes no request at all
    assert (first.n_new, second.n_new, second.n_skipped) == (230, 0, 230)
    assert store.spent == pytest.approx(2.3) and store.n_calls == 3
    np.testing.assert_allclose(store.read(ids), model.predict_proba(x), atol=1e-6)


def _http_config(tmp_path, url, **teacher):
    return parse_config({
        "seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "digits"},
        "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
        "teacher": {"kind": "http", "url": url, "cost_per_example": 0.5, **teacher},
        "store": {"batch_size": 1024}, "student": {"kind": "logistic"}, "train": {"epochs": 5, "min_steps": 100}})


def test_server_dying_mid_run_keeps_answered_batches_and_rerun_asks_only_the_rest(tmp_path, model):
    with serve(model, fault=lambda n, r: (503, "down for good") if n > 3 else None) as s:
        cfg = _http_config(tmp_path, s.url, batch_size=100, max_retries=2)
        assert cfg.store.batch_size == 100  # one store write per request
        ctx = prepare(cfg)
        teacher = get_teacher(ctx)
        teacher.backoff_s = teacher.max_backoff_s = 0.001
        with pytest.warns(UserWarning), pytest.raises(RemoteTeacherError, match="gave up after 3"):
            label(ctx, teacher)
        answered = s.ids_seen[:300]
        assert len(s.requests) == 3 + 3  # three answered, then one request tried three times
        store = TeacherStore.open(ctx.out / "store")
        assert sorted(store.stored_ids()) == sorted(answered)  # every answered request is on disk
        # the bill counts every call sent; the refused one is listed apart as failed
        assert store.spent == pytest.approx(400 * 0.5) and store.status()["failed"]["cost"] == pytest.approx(50)

        s.fault, s.requests[:] = None, []  # the server is healthy again: rerun the same config
        ctx = prepare(cfg)
        label(ctx, get_teacher(ctx))
        everything = ctx.data.ids[np.concatenate([ctx.splits.val, ctx.splits.test, ctx.splits.pool])]
        missing = sorted(set(everything) - set(answered))
        assert sorted(s.ids_seen) == missing  # only the ids not stored, each once
        assert len(s.requests) == math.ceil(len(missing) / 100)
    store = TeacherStore.open(ctx.out / "store")
    assert len(store) == len(everything) and store.spent == pytest.approx((len(everything) + 100) * 0.5)
    np.testing.assert_allclose(store.read(everything), model.predict_proba(ctx.data.features[
        np.concatenate([ctx.splits.val, ctx.splits.test, ctx.splits.pool])]), atol=1e-6)


def test_a_call_larger_than_batch_size_says_what_was_lost(digits, model):
    with serve(model, fault=lambda n, r: (503, "gone") if n > 1 else None) as s:
        with pytest.raises(RemoteTeacherError, match=r"(?s)gave up.*10 of the 30 examples.*chunks of at most batch_size=10"):
            RemoteTeacher(s.url, 10, batch_size=10, max_retries=0, **FAST).predict_proba(digits.features[:30])
    assert len(s.requests) == 2


# ---------------------------------------------------------------------------------------------- config, auth

def test_config_validation_and_batch_sizes():
    with pytest.raises(ConfigError, match="teacher kind 'http' needs teacher.url"):
        parse_config({"teacher": {"kind": "http"}})
    with pytest.raises(ConfigError, match="must start with http:// or https://"):
        parse_config({"teacher": {"kind": "http", "url": "localhost:8000"}})
    with pytest.raises(ConfigError, match="only used by teacher kind 'http'"):
        parse_config({"teacher": {"kind": "mlp", "url": "http://x"}})
    with pytest.raises(ConfigError, match="teacher.max_retries"):
        parse_config({"teacher": {"kind": "http", "url": "http://x", "max_retries": -1}})
    with pytest.raises(ConfigError, match="teacher.batch_size"):
        parse_config({"teacher": {"kind": "http", "url": "http://x", "batch_size": 0}})
    cfg = parse_config({"teacher": {"kind": "http", "url": "http://x"}, "store": {"batch_size": 64}})
    assert cfg.teacher.batch_size == cfg.store.batch_size == 64
    cfg = parse_config({"teacher": {"kind": "http", "url": "http://x", "batch_size": 5000}})
    assert cfg.teacher.batch_size == cfg.store.batch_size == 1024
    with pytest.raises(ConfigError, match="http:// or https://"):
        RemoteTeacher("ftp://x", 10)
    with pytest.raises(ConfigError, match="MENTOR_TEST_UNSET_VAR"):
        RemoteTeacher("http://x", 10, headers_env={"Authorization": "MENTOR_TEST_UNSET_VAR"})


def test_fingerprint_is_url_output_and_model_version_only(monkeypatch, tmp_path):
    monkeypatch.setenv("MENTOR_TEST_TOKEN", "Bearer secret-1")
    a = RemoteTeacher("http://h:1/p", 10, headers_env={"Authorization": "MENTOR_TEST_TOKEN"}, model_version="v1")
    monkeypatch.setenv("MENTOR_TEST_TOKEN", "Bearer secret-2")
    b = RemoteTeacher("http://h:1/p", 10, batch_size=7, timeout_s=3, headers_env={"Authorization": "MENTOR_TEST_TOKEN"},
                      model_version="v1")
    assert a.fingerprint == b.fingerprint == RemoteTeacher("http://h:1/p", 10, model_version="v1").fingerprint
    others = {RemoteTeacher("http://h:1/p", 10, model_version="v2").fingerprint,
              RemoteTeacher("http://h:1/p", 10, output="logits", model_version="v1").fingerprint,
              RemoteTeacher("http://h:2/p", 10, model_version="v1").fingerprint}
    assert len(others) == 3 and a.fingerprint not in others
    assert "secret" not in json.dumps(a.describe()) and a.describe()["headers_env"] == ["Authorization"]
    TeacherStore(tmp_path, fingerprint=a.fingerprint, n_classes=10)
    with pytest.raises(StoreError, match="holds outputs of teacher"):  # a new model version is refused
        TeacherStore(tmp_path, fingerprint=RemoteTeacher("http://h:1/p", 10, model_version="v2").fingerprint,
                     n_classes=10)


def test_mentor_run_cli_with_an_http_teacher_and_auth_from_env(tmp_path, digits, model):
    token = "Bearer tok-" + os.urandom(6).hex()

    def auth(n, r):  # the server checks the header the way an API would
        return None if s.headers[n - 1].get("Authorization") == token else (401, "missing token")
    with serve(model, fault=auth) as s:
        cfg = {"seed": 0, "output_dir": "run", "method": "vanilla-soft", "data": {"name": "digits"},
               "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
               "teacher": {"kind": "http", "url": s.url, "output": "probs", "batch_size": 256,
                           "headers_env": {"Authorization": "MENTOR_TEST_API_KEY"}, "model_version": "lr-300",
                           "cost_per_example": 0.001},
               "student": {"kind": "logistic"}, "train": {"epochs": 5, "min_steps": 100}}
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
        env = {**os.environ, "MENTOR_TEST_API_KEY": token}
        res = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(tmp_path / "config.yaml")],
                             capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
        assert res.returncode == 0, res.stderr
        n_requests = len(s.requests)
        no_key = subprocess.run([sys.executable, "-m", "mentor.cli", "label", str(tmp_path / "config.yaml")],
                                capture_output=True, text=True, cwd=tmp_path, timeout=600,
                                env={k: v for k, v in os.environ.items() if k != "MENTOR_TEST_API_KEY"})
    assert no_key.returncode == 2 and "MENTOR_TEST_API_KEY" in no_key.stderr and "Traceback" not in no_key.stderr
    assert all(h.get("Authorization") == token for h in s.headers)
    out = tmp_path / "run"
    m = json.loads((out / "metrics.json").read_text())
    ctx = prepare(parse_config({**cfg, "output_dir": str(out)}))
    n_labeled_by_teacher = len(ctx.splits.val) + len(ctx.splits.test) + len(ctx.splits.pool)
    assert n_requests == math.ceil(n_labeled_by_teacher / 256)  # V, test and pool, each id once
    local = model.predict_proba(ctx.data.features[ctx.splits.test]).argmax(1)
    assert m["teacher"]["accuracy"] == pytest.approx(float((local == ctx.data.labels[ctx.splits.test]).mean()))
    assert m["test_accuracy"] > 0.5 and "gap_closed" in m and m["store"]["spent"] == pytest.approx(n_labeled_by_teacher * 0.001)
    fp = RemoteTeacher(s.url, 10, model_version="lr-300").fingerprint  # no header: the token is not in it
    assert m["teacher_fingerprint"] == fp and json.loads((out / "teacher.json").read_text())["fingerprint"] == fp
    for f in out.rglob("*"):  # the token is written nowhere
        if f.is_file():
            assert token.encode() not in f.read_bytes(), f


# ---------------------------------------------------------------------------------------------- credentials

@contextmanager
def recorder():
    """Another origin (127.0.0.1 on another port) that records every request it gets, any method."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    seen = []

    class Record(BaseHTTPRequestHandler):
        def _record(self):
            seen.append((self.command, self.path, dict(self.headers)))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        do_GET = do_POST = _record  # noqa: N815

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Record)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/predict", seen
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_redirect_to_another_origin_is_refused_and_the_credentials_stay_home(monkeypatch, digits, model, code):
    monkeypatch.setenv("MENTOR_TEST_API_KEY", "Bearer tok-redirect-secret")
    with recorder() as (elsewhere, seen), \
            serve(model, fault=lambda n, r: (code, "moved", {"Location": elsewhere + "?x=1"})) as s:
        assert s.url.rsplit(":", 1)[0] == elsewhere.rsplit(":", 1)[0] and s.url != elsewhere  # two origins
        t = RemoteTeacher(s.url, 10, headers_env={"Authorization": "MENTOR_TEST_API_KEY"},
                          headers={"Cookie": "session=cookie-secret"}, **FAST)
        with pytest.raises(RemoteTeacherError, match=f"redirected \\(HTTP {code}\\) to .*another origin.*set "
                                                     "teacher.url"):
            t.predict_proba(digits.features[:5])
    assert s.headers[0]["Authorization"] == "Bearer tok-redirect-secret"  # the first server did get it
    assert [h for _, _, h in seen if "Authorization" in h or "Cookie" in h] == []
    assert seen == []  # nothing at all is sent to the other origin


@pytest.mark.parametrize("code", [302, 307, 308])
def test_redirect_within_the_origin_resends_the_same_post(monkeypatch, digits, model, code):
    monkeypatch.setenv("MENTOR_TEST_API_KEY", "Bearer tok-same-origin")
    x = digits.features[:30]
    with serve(model, fault=lambda n, r: (code, "moved", {"Location": "/v2/predict"}) if n == 1 else None) as s:
        probs = RemoteTeacher(s.url, 10, headers_env={"Authorization": "MENTOR_TEST_API_KEY"}).predict_proba(x)
    np.testing.assert_allclose(probs, model.predict_proba(x), atol=1e-6)
    assert s.paths == ["/predict", "/v2/predict"] and s.requests[0] == s.requests[1]
    assert [h["Authorization"] for h in s.headers] == ["Bearer tok-same-origin"] * 2


def test_which_redirects_keep_credentials():
    from mentor.teachers.http import _same_site_redirect as ok
    assert ok("http://h:8000/p", "http://h:8000/q") and ok("https://H/p", "https://h:443/q")
    assert ok("http://h/p", "https://h/p")  # the upgrade to TLS on the same host
    for dst in ("http://h:8001/p", "http://other/p", "https://h:8443/p", "http://evil.h/p"):
        assert not ok("http://h:8000/p" if dst != "http://evil.h/p" else "http://h/p", dst)
    assert not ok("https://h/p", "http://h/p")  # never downgrade


def test_keys_in_the_url_are_redacted_everywhere(monkeypatch, tmp_path, digits, model):
    from mentor.teachers import redact_url
    assert (redact_url("https://bob:pa55word@h:8/p?model=m1&api_key=K1&X-Amz-Signature=S&sig=q&k=${KEY}")
            == "https://***@h:8/p?model=m1&api_key=***&X-Amz-Signature=***&sig=***&k=${KEY}")
    secret = "sk-" + os.urandom(8).hex()
    with serve(model, fault=lambda n, r: (400, f"bad key {secret} for {s.paths[-1]}")) as s:
        with pytest.warns(UserWarning, match=r"a key is written in it \(shown as \*\*\*; mentor saves it nowhere.*\$\{VAR"):
            t = RemoteTeacher(f"{s.url}?api_key={secret}&model=m1", 10)
            rotated = RemoteTeacher(f"{s.url}?api_key=another-key&model=m1", 10)
        assert secret not in json.dumps(t.describe()) and "api_key=***&model=m1" in t.describe()["url"]
        assert t.fingerprint == rotated.fingerprint  # a new key keeps the store
        with pytest.raises(RemoteTeacherError) as err:
            t.predict_proba(digits.features[:3])
    assert "HTTP 400" in str(err.value) and secret not in str(err.value) and "***" in str(err.value)
    assert s.paths[0].endswith(f"api_key={secret}&model=m1")  # the server itself did get the key
    # a key kept in the environment: written `${VAR}` in the config, filled in per request
    with pytest.raises(ConfigError, match=r"MENTOR_TEST_URL_KEY.*named in the url are not set"):
        RemoteTeacher("http://h/p?api_key=${MENTOR_TEST_URL_KEY}", 10)
    monkeypatch.setenv("MENTOR_TEST_URL_KEY", secret)
    with serve(model) as s:
        cfg = {"seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "digits"},
               "split": {"n_labeled": 100, "n_val": 100, "n_test": 100, "n_pool": 100},
               "teacher": {"kind": "http", "url": s.url + "?api_key=${MENTOR_TEST_URL_KEY}", "batch_size": 200}}
        label(prepare(parse_config(cfg)))
    assert {p.split("api_key=")[1] for p in s.paths} == {secret}
    for f in (tmp_path / "run").rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    assert "${MENTOR_TEST_URL_KEY}" in (tmp_path / "run" / "teacher.json").read_text()
