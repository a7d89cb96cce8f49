"""The OpenAI-compatible endpoint client against real servers: llama.cpp's server with SmolLM2
(started once per session, see llm_server.py), and small scripted http.server instances on
127.0.0.1 for what llama.cpp cannot be made to do (429 with Retry-After, redirects, non-JSON)."""

from __future__ import annotations

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from llm_server import free_port, llama_server, llama_server_with_key  # noqa: F401 (fixtures)
from mentor.errors import ConfigError, TeacherOutputError
from mentor.teachers.llm.endpoint import (EchoLogprobsShifted, Endpoint, EndpointAuthError, EndpointError,
                                          EndpointUnreachable, LogprobsUnavailable, RateLimiter, UnknownModelError,
                                          _split, continuation_logprob)
from mentor.teachers.llm.usage import Usage

pytest.importorskip("httpx", reason="needs httpx and tenacity: pip install 'mentor[llm]'")
pytest.importorskip("tenacity", reason="needs httpx and tenacity: pip install 'mentor[llm]'")

# SmolLM2's BOS token is <|im_start|>: prompts in its chat format start with it, which is what makes
# llama-cpp-python 0.3.36 echo correctly aligned prompt log-probabilities (see test_echo_alignment).
CHAT = "<|im_start|>user\nTopic of: {}<|im_end|>\n<|im_start|>assistant\n"
LABELS = ["food", "computers"]
MSG = [{"role": "user", "content": "Is pizza food? Answer yes or no."}]


@pytest.fixture(scope="module")
def ep(llama_server):
    with Endpoint(llama_server.base_url, llama_server.model) as client:
        yield client


# ---------------------------------------------------------------------------------------------
# llama.cpp's server, end to end

def test_label_logprobs_single_and_multi_prompt_requests_agree(ep):
    prompts = [CHAT.format("I love pizza."), CHAT.format("My laptop crashed again.")]
    scores, usage = ep.label_logprobs(prompts, LABELS)
    assert scores.shape == (2, 2) and scores.dtype == np.float64
    assert np.isfinite(scores).all() and (scores <= 0).all()
    assert scores[0, 0] > scores[0, 1] and scores[1, 1] > scores[1, 0]  # the obvious topics win
    assert all(u.input_tokens > 0 and u.output_tokens <= len(LABELS) for u in usage)  # 0 when EOS came first
    # llama.cpp's server refuses a list of prompts (HTTP 500): the client found out and sends one per request
    assert ep.prompts_per_request == 1
    alone, _ = ep.label_logprobs(prompts[1:], LABELS)
    np.testing.assert_allclose(alone[0], scores[1], atol=1e-4)


def test_echo_alignment_checked_and_shift_refused(ep):
    """llama-cpp-python 0.3.36 echoes log P(token_i | tokens[..i]) (itself as the NEXT token) when
    the model adds no BOS token: a plain prompt for SmolLM2 must be refused, not scored."""
    assert ep.echo_aligned(CHAT.format("I love pizza.")) is True
    with pytest.raises(EchoLogprobsShifted, match="BOS token"):
        ep.label_logprobs(["Tell me about the weather today, please. Answer:"], [" sunny", " rainy"])
    assert ep._echo_ok["Tell me about th"] is False  # remembered: the next call is refused without probing


def test_top_logprobs(ep):
    top = ep.top_logprobs(MSG, k=20)
    assert 0 < len(top.logprobs) <= 20 and all(v <= 0 for v in top.logprobs.values())
    assert top.text in top.logprobs and top.usage.input_tokens > 0 and top.usage.output_tokens == 1
    assert len(ep.top_logprobs(MSG, k=3).logprobs) <= 3
    with pytest.raises(ConfigError, match="1..20"):
        ep.top_logprobs(MSG, k=21)


def test_samples_are_seeded_and_answer_is_greedy(ep):
    msg = [{"role": "user", "content": "Name a fruit."}]
    a = ep.sample(msg, n=3, temperature=1.0, max_tokens=4, seed=7)
    b = ep.sample(msg, n=3, temperature=1.0, max_tokens=4, seed=7)
    assert len(a.texts) == 3 and a.texts == b.texts
    assert ep._n_supported is False  # llama.cpp's server ignores n: one request per answer
    assert a.usage.input_tokens > 0 and 3 <= a.usage.output_tokens <= 12
    text, usage = ep.answer(msg, max_tokens=4)
    assert text and text == ep.answer(msg, max_tokens=4)[0] and usage.output_tokens > 0


def test_unknown_model_lists_the_served_names(llama_server):
    client = Endpoint(llama_server.base_url, "gpt-9")
    assert client.models() == [llama_server.model]
    with pytest.raises(UnknownModelError, match=r"'gpt-9' is not served .* \['smollm2'\]"):
        client.answer(MSG)


def test_api_key_missing_wrong_and_right(llama_server_with_key, monkeypatch):
    srv, var = llama_server_with_key, "MENTOR_TEST_LLM_KEY"
    monkeypatch.delenv(var, raising=False)
    client = Endpoint(srv.base_url, srv.model, api_key_env=var, max_retries=0)
    with pytest.raises(EndpointAuthError, match=f"{var} .*not set"):
        client.models()
    wrong = "sk-wrong-" + "x" * 16
    monkeypatch.setenv(var, wrong)
    with pytest.raises(EndpointAuthError, match=f"HTTP 401.*set {var} to a valid key") as err:
        client.models()
    assert wrong not in str(err.value) and wrong not in repr(err.value)
    keyless = Endpoint(srv.base_url, srv.model, max_retries=0)
    with pytest.raises(EndpointAuthError, match="set api_key_env"):
        keyless.models()
    monkeypatch.setenv(var, srv.api_key)  # read at each request: the same client now gets in
    assert client.models() == [srv.model]


def test_unreachable_port():
    port = free_port()
    client = Endpoint(f"http://127.0.0.1:{port}/v1", "m", max_retries=1, backoff_s=0.01)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(EndpointUnreachable, match=f"cannot connect .*127.0.0.1:{port}.* after 2 attempt"):
            client.models()
    assert client.n_requests == 2


# ---------------------------------------------------------------------------------------------
# Scripted servers: answers llama.cpp's server never gives

class Scripted:
    """A real ThreadingHTTPServer on 127.0.0.1 answering a list of (status, headers, body) in turn
    (the last one repeats) and recording each request's path and headers."""

    def __init__(self, answers):
        self.answers, self.requests = list(answers), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                n = int(self.headers.get("Content-Length") or 0)
                outer.requests.append((self.command, self.path, dict(self.headers), self.rfile.read(n)))
                status, headers, body = outer.answers[min(len(outer.requests), len(outer.answers)) - 1]
                body = body(self) if callable(body) else body
                body = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def chat_answer(text="yes"):
    return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10,
                      "prompt_tokens_details": {"cached_tokens": 4}}}


def test_retry_after_is_honoured():
    srv = Scripted([(429, {"Retry-After": "1"}, {"error": {"message": "slow down"}}), (200, {}, chat_answer())])
    try:
        client = Endpoint(srv.url, "m", check_model=False, backoff_s=0.0, max_retries=2)
        t = time.monotonic()
        with pytest.warns(UserWarning, match="HTTP 429.*slow down.*retry 1/2 in 1 s"):
            text, usage = client.answer(MSG)
        assert time.monotonic() - t >= 0.95  # backoff_s=0: only Retry-After made it wait
        assert text == "yes" and usage == Usage(9, 1, 4) and client.n_requests == 2
    finally:
        srv.close()


def test_key_never_in_errors_or_warnings(monkeypatch):
    key = "sk-secret-" + "k" * 20
    monkeypatch.setenv("MENTOR_TEST_LLM_KEY", key)
    echo_auth = lambda h: {"error": {"message": "bad: " + h.headers.get("Authorization", "")}}  # noqa: E731
    srv = Scripted([(500, {}, echo_auth), (400, {}, echo_auth)])
    try:
        client = Endpoint(srv.url, "m", api_key_env="MENTOR_TEST_LLM_KEY", check_model=False, backoff_s=0.0,
                          max_retries=1)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with pytest.raises(EndpointError, match=r"HTTP 400 .*Bearer \*\*\*") as err:
                client.answer(MSG)
        assert srv.requests[0][2]["Authorization"] == f"Bearer {key}"  # it was sent, as a header
        shown = [str(err.value), repr(err.value)] + [str(w.message) for w in caught]
        assert len(caught) == 1 and not any(key in s for s in shown)
    finally:
        srv.close()


def test_redirect_to_another_origin_is_refused(monkeypatch):
    monkeypatch.setenv("MENTOR_TEST_LLM_KEY", "sk-" + "r" * 20)
    other = Scripted([(200, {}, chat_answer())])
    srv = Scripted([(307, {"Location": other.url + "/chat/completions"}, b"")])
    try:
        client = Endpoint(srv.url, "m", api_key_env="MENTOR_TEST_LLM_KEY", check_model=False)
        with pytest.raises(EndpointError, match="redirected .* another origin"):
            client.answer(MSG)
        assert other.requests == []
    finally:
        srv.close()
        other.close()


def test_non_json_4xx_message_and_no_logprobs():
    srv = Scripted([(200, {"Content-Type": "text/html"}, b"<html>login</html>"),
                    (400, {}, {"error": {"message": "context length exceeded", "type": "invalid_request_error"}}),
                    (200, {}, chat_answer()),
                    (400, {}, {"error": {"message": "logprobs are not supported with this model"}})])
    try:
        client = Endpoint(srv.url, "m", check_model=False, max_retries=0)
        with pytest.raises(EndpointError, match="not JSON .*text/html.*<html>login"):
            client.answer(MSG)
        with pytest.raises(EndpointError, match="HTTP 400 .*context length exceeded"):
            client.answer(MSG)
        with pytest.raises(LogprobsUnavailable, match="no top_logprobs .*sampling"):
            client.top_logprobs(MSG)
        with pytest.raises(LogprobsUnavailable, match="HTTP 400.*not supported.*scoring mode top_logprobs"):
            client.label_logprobs(["<s>Q: pizza?\nA:"], [" food"])  # verify_echo's first request gets the 400
        assert isinstance(LogprobsUnavailable("x"), TeacherOutputError)
    finally:
        srv.close()


def test_an_answer_that_ends_at_once_is_an_abstention_not_a_server_without_logprobs():
    """Bug: llama.cpp's server answered a few-shot prompt with no token at all (SmolLM2's first token
    was end-of-text: content "", logprobs.content [], finish_reason stop), and mentor concluded the
    endpoint gives no log-probabilities, failing the whole bench entry (2 of 4 in `bench llm
    --suite shots`). The response below is the one recorded from that server."""
    recorded = {"id": "chatcmpl-ff87a330", "object": "chat.completion", "model": "smollm2",
                "choices": [{"index": 0, "message": {"content": "", "role": "assistant"},
                             "logprobs": {"content": [], "refusal": None}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 250, "completion_tokens": 0, "total_tokens": 250}}
    no_field = {"choices": [{"index": 0, "message": {"content": "", "role": "assistant"}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 9, "completion_tokens": 0, "total_tokens": 9}}
    srv = Scripted([(200, {}, recorded), (200, {}, no_field)])
    try:
        client = Endpoint(srv.url, "m", check_model=False, max_retries=0)
        got = client.top_logprobs(MSG)
        assert got.logprobs == {} and got.text == "" and got.usage == Usage(250, 0, 0)
        with pytest.raises(LogprobsUnavailable, match="no top_logprobs"):  # no logprobs field: still refused
            client.top_logprobs(MSG)
    finally:
        srv.close()
    from mentor.teachers.llm.scoring import top_logprobs_probs
    probs, coverage = top_logprobs_probs({}, ["computers", "food", "sports", "medicine"])
    assert coverage == 0.0 and np.allclose(probs, 0.25)  # uniform, and the teacher marks it abstained


# ---------------------------------------------------------------------------------------------
# Pure parts

def _echo_choice(tokens, text, values=None, offsets=None):
    if offsets is None:
        offsets = np.cumsum([0] + [len(t) for t in tokens[:-1]]).tolist()
    values = values or [None] + [-1.0 * (i + 1) for i in range(len(tokens) - 1)]
    return {"text": text, "logprobs": {"tokens": tokens, "text_offset": offsets, "token_logprobs": values}}


def test_continuation_found_from_the_end():
    # vLLM style: special tokens kept as text, the generated token echoed after the prompt
    text = "<|s|>Q: pizza?\nA: food"
    c = _echo_choice(["<|s|>", "Q", ":", " pizza", "?\n", "A", ":", " fo", "od", "\n"], text + "\n")
    assert continuation_logprob(c, text, " food") == (-7.0 + -8.0, 2, False)
    # llama.cpp style: special tokens left out of the offsets, the generated token not echoed
    c = _echo_choice(["Q", ":", " pizza", "?\n", "A", ":", " food"], text + "\n", offsets=[0, 1, 2, 8, 10, 11, 12])
    assert continuation_logprob(c, text, " food") == (-6.0, 1, False)
    # a token straddling the boundary is counted whole, and said
    c = _echo_choice(["A", ": f", "ood"], "A: food")
    assert continuation_logprob(c, "A: food", " food") == (-3.0, 2, True)
    with pytest.raises(EndpointError, match="do not end with the label text"):
        continuation_logprob(_echo_choice(["A", ":"], "A:"), "A: food", " food")
    with pytest.raises(LogprobsUnavailable):
        continuation_logprob({"text": "A: food", "logprobs": None}, "A: food", " food")


def test_split_and_rate_limiter():
    assert _split(10, [1, 1, 1]) == [4, 3, 3] and _split(7, [3, 0, 1]) == [5, 0, 2] and sum(_split(5, [0, 0])) == 5
    limiter = RateLimiter(tokens_per_minute=600)  # 10 tokens/s, a full minute's allowance at start
    assert limiter.acquire(600) < 0.1
    waited = []
    threads = [threading.Thread(target=lambda: waited.append(limiter.acquire(4))) for _ in range(2)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(waited)[0] >= 0.3 and sorted(waited)[1] >= 0.7  # 4 then 8 tokens at 10 tokens/s
    limiter.settle(estimated=100, actual=0)  # a refused request gives its tokens back
    assert limiter.acquire(50) < 0.1
    with pytest.raises(ConfigError, match="requests_per_minute must be > 0"):
        RateLimiter(requests_per_minute=0)


def test_bad_settings():
    with pytest.raises(ConfigError, match="http:// or https://"):
        Endpoint("127.0.0.1:8799/v1", "m")
    with pytest.raises(ConfigError, match="holds a credential"):
        Endpoint("http://h/v1?api_key=sk-abcdef", "m")
    with pytest.raises(ConfigError, match="NAME of an environment variable") as err:
        Endpoint("http://h/v1", "m", api_key_env="sk-abc def")
    assert "sk-abc" not in str(err.value)
    with pytest.raises(ConfigError, match="distinct non-empty"):
        Endpoint("http://h/v1", "m").label_logprobs(["p"], [" a", " a"])


def test_retry_after_as_an_http_date_is_honoured():
    from email.utils import formatdate

    from mentor.teachers.http import _retry_after
    now = 1_800_000_000.0
    assert _retry_after({"Retry-After": formatdate(now + 30, usegmt=True)}, now=now) == pytest.approx(30, abs=1)
    assert _retry_after({"Retry-After": formatdate(now - 30, usegmt=True)}, now=now) == 0.0  # already past
    assert _retry_after({"Retry-After": "7"}) == 7.0
    assert _retry_after({"Retry-After": "soon"}) is None and _retry_after({}) is None
    # end to end: a server that answers 429 with a date 2 s ahead makes the client wait about that long
    srv = Scripted([(429, {"Retry-After": formatdate(time.time() + 2.2, usegmt=True)},
                     {"error": {"message": "slow down"}}), (200, {}, chat_answer())])
    try:
        client = Endpoint(srv.url, "m", check_model=False, backoff_s=0.0, max_retries=2)
        t = time.monotonic()
        with pytest.warns(UserWarning, match="HTTP 429"):
            text, _ = client.answer(MSG)
        assert text == "yes" and time.monotonic() - t >= 1.0  # second-resolution dates: at least 1 s
    finally:
        srv.close()
