"""An OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp's server, ...) as an LLM teacher's backend:
exact label log-probabilities from echoed prompts, the top log-probabilities of a chat answer's first
token, sampled answers and greedy answers, each with the token usage the server reports.

httpx carries the requests (pooled connections, redirects never followed to another origin),
tenacity retries what is worth retrying (connection errors, timeouts, 429, 5xx; backoff with jitter,
Retry-After honoured). The API key is read from the environment at each request and goes nowhere
else: not into the object, an exception, a warning or a file.
"""

from __future__ import annotations

import json
import os
import threading
import time
import warnings
from typing import NamedTuple
from urllib.parse import urljoin, urlsplit

import numpy as np

from ...credentials import redact_url
from ...errors import ConfigError, TeacherOutputError
from ..http import _retry_after, _same_site_redirect, _snippet
from .usage import Usage

_MAX_REDIRECTS = 5
_MULTI_PROMPT_MAX = 16       # prompt strings per /completions request when the server takes a list
_ECHO_TOLERANCE = 0.05       # nats: the same token's log-prob echoed vs generated, on a healthy server
INSTALL_HINT = "pip install 'mentor[llm]'"


# ----------------------------------------------------------------------------------------------
# Errors: each names the problem and the fix

class EndpointError(TeacherOutputError):
    """The endpoint refused a request or answered something unusable."""


class EndpointUnreachable(EndpointError):
    """No connection to the endpoint, after the retries."""


class LogprobsUnavailable(EndpointError):
    """The endpoint returned no log-probabilities where the scoring mode needs them."""


class EchoLogprobsShifted(LogprobsUnavailable):
    """The endpoint echoes prompt log-probabilities that belong to the wrong tokens."""


class EndpointAuthError(ConfigError):
    """The API key is missing, unusable, or refused (HTTP 401/403)."""


class UnknownModelError(ConfigError):
    """The configured model is not among the endpoint's models."""


class _Retryable(Exception):
    """An HTTP answer worth retrying (429, 5xx)."""

    def __init__(self, status: int, message: str, retry_after: float | None):
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class TopLogprobs(NamedTuple):
    logprobs: dict          # token text -> log-probability, for the answer's first token
    text: str               # the answer (one token)
    usage: Usage


class Answers(NamedTuple):
    texts: list
    usage: Usage


def _deps():
    try:
        import httpx
        import tenacity
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ConfigError(f"the LLM endpoint client needs httpx and tenacity ({e.name} is missing): "
                          f"{INSTALL_HINT}") from None
    return httpx, tenacity


# ----------------------------------------------------------------------------------------------
# Rate limits

class RateLimiter:
    """Requests and tokens per minute, shared by every thread that calls one endpoint.

    Two buckets that refill continuously and hold at most one minute's allowance (a burst after an
    idle minute is allowed, as providers allow it). A request's tokens are not known before its
    answer: `acquire` takes an estimate, `settle` corrects it with the server's count. A request
    larger than the whole allowance goes when the bucket is full and leaves it in debt.
    """

    def __init__(self, requests_per_minute: float | None = None, tokens_per_minute: float | None = None):
        for name, v in (("requests_per_minute", requests_per_minute), ("tokens_per_minute", tokens_per_minute)):
            if v is not None and not float(v) > 0:
                raise ConfigError(f"{name} must be > 0 (or unset for no limit), got {v}.")
        self.caps = {"requests": requests_per_minute and float(requests_per_minute),
                     "tokens": tokens_per_minute and float(tokens_per_minute)}
        self._level = {k: c for k, c in self.caps.items() if c}
        self._t = time.monotonic()
        self._cond = threading.Condition()

    def _refill(self) -> None:
        now = time.monotonic()
        for k, level in self._level.items():
            self._level[k] = min(self.caps[k], level + (now - self._t) * self.caps[k] / 60.0)
        self._t = now

    def acquire(self, tokens: int = 0) -> float:
        """Block until one request of about `tokens` tokens fits; return the seconds waited."""
        if not self._level:
            return 0.0
        need, start = {"requests": 1.0, "tokens": float(max(0, tokens))}, time.monotonic()
        with self._cond:
            while True:
                self._refill()
                wait = max([(min(need[k], self.caps[k]) - level) * 60.0 / self.caps[k]
                            for k, level in self._level.items()] + [0.0])
                if wait <= 0:
                    for k in self._level:
                        self._level[k] -= need[k]
                    return time.monotonic() - start
                self._cond.wait(wait)

    def settle(self, estimated: int, actual: int) -> None:
        """Correct an `acquire` estimate with the tokens the server counted (0 for a refused request)."""
        if "tokens" in self._level:
            with self._cond:
                self._level["tokens"] = min(self.caps["tokens"], self._level["tokens"] + estimated - actual)
                self._cond.notify_all()


# ----------------------------------------------------------------------------------------------
# Pure parsing of the servers' answers

def usage_of(data: dict) -> Usage:
    """Usage from an answer's `usage` field (zeros when the server reports none)."""
    u = data.get("usage") or {}
    details = u.get("prompt_tokens_details") or {}
    return Usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0),
                 int(details.get("cached_tokens") or 0))


def continuation_logprob(choice: dict, text: str, continuation: str) -> tuple[float, int, bool]:
    """(summed log-prob, number of tokens, merged) of the tokens covering the last
    `len(continuation)` characters of the echoed prompt `text`, from one choice of a
    `/completions` answer with `echo: true, logprobs: >=1`.

    Offsets are taken from the END of the echoed prompt, because servers count them differently
    (llama.cpp's server leaves special tokens such as `<|im_start|>` out of the offsets, vLLM keeps
    them); the continuation itself must hold no special token. The one token the request generated
    may follow the prompt in the echo (vLLM, llama.cpp when the model adds a BOS token) or not.
    `merged` is True when a token straddles the prompt/continuation boundary: its log-prob is then
    counted in full (the score of the tokens covering the continuation's characters).
    """
    lp = choice.get("logprobs") or {}
    tokens, offsets, values = lp.get("tokens"), lp.get("text_offset"), lp.get("token_logprobs")
    if not tokens or not offsets or not values or not len(tokens) == len(offsets) == len(values):
        raise LogprobsUnavailable("the endpoint answered an echo request without prompt log-probabilities "
                                  "(tokens, text_offset, token_logprobs); it cannot score labels exactly. Use the "
                                  "scoring mode top_logprobs or sampling for this endpoint.")
    said = choice.get("text") or ""
    generated = said[len(text):] if said.startswith(text) else ""
    joined = "".join(tokens)
    ends = list(offsets[1:]) + [offsets[-1] + len(tokens[-1])]
    if generated and tokens[-1] == generated and joined[:len(joined) - len(generated)].endswith(continuation):
        last, end = len(tokens) - 1, offsets[-1]            # the generated token is echoed: leave it out
    elif joined.endswith(continuation):
        last, end = len(tokens), ends[-1]
    else:
        raise EndpointError(f"the echoed tokens do not end with the label text {continuation!r} (echo ends with "
                            f"{joined[-40:]!r}); the server tokenised the prompt in a way mentor cannot align. A "
                            "label text must not contain special tokens; report this with the server's name.")
    start = end - len(continuation)
    idx = [i for i in range(last) if ends[i] > start]
    if not idx or any(values[i] is None for i in idx):
        raise LogprobsUnavailable(f"the endpoint gave no log-probability for the first token of {text[:60]!r}; a "
                                  "label can be scored only after a non-empty prompt (check the template).")
    return float(sum(values[i] for i in idx)), len(idx), offsets[idx[0]] < start


def _split(total: int, weights: list) -> list:
    """`total` split in proportion to `weights`, in integers that sum to `total` (largest remainder)."""
    w = np.asarray(weights, dtype=np.float64)
    share = total * w / w.sum() if w.sum() > 0 else np.full(len(w), total / len(w))
    out = np.floor(share).astype(int)
    out[np.argsort(-(share - out))[:total - out.sum()]] += 1
    return out.tolist()


def _messages(messages) -> list:
    if (not isinstance(messages, (list, tuple)) or not messages
            or not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                       for m in messages)):
        raise ConfigError("messages must be a non-empty list of {'role': str, 'content': str} dicts (the OpenAI chat "
                          "format), e.g. [{'role': 'user', 'content': 'Is this positive?'}].")
    return list(messages)


# ----------------------------------------------------------------------------------------------
# The client

class Endpoint:
    """A client for one model behind an OpenAI-compatible base URL (`http://127.0.0.1:8799/v1`,
    `https://api.openai.com/v1`).

    `api_key_env` names the environment variable holding the key (sent as `Authorization: Bearer`,
    read at each request; None for a server without keys). Connection errors, timeouts, 429 and 5xx
    are retried `max_retries` times, waiting a jittered `backoff_s`·2^attempt (at most
    `max_backoff_s`) or the server's Retry-After. `requests_per_minute` / `tokens_per_minute` are
    shared by all threads using this object. `prompts_per_request`: prompt strings per
    `/completions` request in `label_logprobs` (None: find out whether the server takes a list).
    `check_model`: before the first call, check that `model` is among the served models.
    `verify_echo`: before the first label scoring of a prompt head, check that the server's echoed
    prompt log-probabilities belong to the right tokens (llama-cpp-python 0.3.36 shifts them by one
    when the model adds no BOS token).
    """

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None, timeout_s: float = 60.0,
                 max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 requests_per_minute: float | None = None, tokens_per_minute: float | None = None,
                 prompts_per_request: int | None = None, check_model: bool = True, verify_echo: bool = True):
        httpx, self._tenacity = _deps()
        self._httpx = httpx
        url = str(base_url).rstrip("/")
        parsed = urlsplit(url)
        self.shown_url = redact_url(url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"endpoint base_url must be an http:// or https:// URL such as http://127.0.0.1:8799/v1, "
                              f"got {self.shown_url!r}.")
        if self.shown_url != url:
            raise ConfigError(f"endpoint base_url {self.shown_url} holds a credential; remove it and put the key in an "
                              "environment variable named by api_key_env.")
        if not model or not isinstance(model, str):
            raise ConfigError("endpoint model must be the model's name on the server (see GET /v1/models).")
        if api_key_env is not None and not (isinstance(api_key_env, str) and api_key_env.isidentifier()):
            raise ConfigError(f"api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), got "
                              f"something else ({len(str(api_key_env))} characters, not shown: it may be a key).")
        if not float(timeout_s) > 0 or int(max_retries) < 0 or float(backoff_s) < 0 or float(max_backoff_s) < 0:
            raise ConfigError(f"endpoint needs timeout_s > 0, max_retries >= 0, backoff_s >= 0 and max_backoff_s >= 0; "
                              f"got {timeout_s}, {max_retries}, {backoff_s}, {max_backoff_s}.")
        if prompts_per_request is not None and int(prompts_per_request) < 1:
            raise ConfigError(f"prompts_per_request must be >= 1 (or unset to find out), got {prompts_per_request}.")
        self.base_url, self.model, self.api_key_env = url, model, api_key_env
        self.timeout_s, self.max_retries = float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.limiter = RateLimiter(requests_per_minute, tokens_per_minute)
        self.prompts_per_request = None if prompts_per_request is None else int(prompts_per_request)
        self.check_model, self.verify_echo = bool(check_model), bool(verify_echo)
        self.n_requests = 0            # HTTP requests sent, retries included
        self.boundary_merges = 0       # label scores whose first token straddled the prompt/label boundary
        self.overhead = Usage()        # tokens spent on checks (echo alignment, list support), not on examples
        self._lock = threading.Lock()
        self._model_checked = False
        self._echo_ok: dict = {}       # prompt head -> True / None (could not tell)
        self._n_supported: bool | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(self.timeout_s, connect=min(10.0, self.timeout_s)),
                                    follow_redirects=False, headers={"Accept": "application/json"})

    def describe(self) -> dict:
        return {"base_url": self.shown_url, "model": self.model, "api_key_env": self.api_key_env}  # names only

    def close(self) -> None:
        self._client.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- HTTP ----------------------------------------------------------------------------------

    def _key(self) -> str | None:
        if self.api_key_env is None:
            return None
        key = os.environ.get(self.api_key_env, "").strip()
        if not key:
            raise EndpointAuthError(f"endpoint {self.shown_url}: the environment variable {self.api_key_env} "
                                    "(api_key_env) is not set or empty; export it with your API key before running.")
        if not key.isascii() or not key.isprintable():
            raise EndpointAuthError(f"endpoint {self.shown_url}: the value of {self.api_key_env} holds characters an "
                                    "HTTP header cannot carry (a newline, a non-ASCII letter); set it to the key alone.")
        return key

    def _scrub(self, text: str) -> str:
        """`text` without the key's value (a server may echo it back in an error)."""
        key = os.environ.get(self.api_key_env or "", "").strip() if self.api_key_env else ""
        return text.replace(key, "***") if len(key) >= 4 else text

    def _server_message(self, resp) -> str:
        try:
            body = resp.json()
            err = body.get("error", body.get("detail", body)) if isinstance(body, dict) else body
            msg = err.get("message") or json.dumps(err) if isinstance(err, dict) else str(err)
            return self._scrub(repr(str(msg)[:400]))
        except ValueError:
            return self._scrub(_snippet(resp.content))

    def _once(self, method: str, path: str, payload: dict | None, est_tokens: int) -> dict:
        """One request (redirects within the origin followed), its answer checked."""
        self.limiter.acquire(est_tokens)
        spent = 0
        try:
            key = self._key()
            headers = {"Authorization": f"Bearer {key}"} if key else {}
            url = self.base_url + path
            for _ in range(_MAX_REDIRECTS + 1):
                self.n_requests += 1
                resp = self._client.request(method, url, json=payload, headers=headers)
                location = resp.headers.get("location") if resp.status_code in (301, 302, 303, 307, 308) else None
                if not location:
                    break
                target = urljoin(url, location)
                if not _same_site_redirect(url, target):
                    raise EndpointError(f"endpoint {self.shown_url} redirected (HTTP {resp.status_code}) to "
                                        f"{redact_url(target)}, another origin; mentor does not follow it, so that the "
                                        "key never reaches another server. If that server is the right one, set "
                                        "base_url to it.")
                url = target
            else:
                raise EndpointError(f"endpoint {self.shown_url}: more than {_MAX_REDIRECTS} redirects; set base_url to "
                                    "the final address.")
            status = resp.status_code
            if status == 429 or status >= 500:
                raise _Retryable(status, self._server_message(resp), _retry_after(resp.headers))
            if status in (401, 403):
                fix = (f"set {self.api_key_env} to a valid key for this server" if self.api_key_env else
                       "the server wants a key: set api_key_env to the name of the environment variable holding it")
                raise EndpointAuthError(f"endpoint {self.shown_url} refused the request (HTTP {status}: "
                                        f"{self._server_message(resp)}): {fix}.")
            if status >= 400:
                msg = self._server_message(resp)
                if status == 404 and "model" in msg.lower():
                    raise UnknownModelError(f"endpoint {self.shown_url} does not serve model {self.model!r} (HTTP "
                                            f"404: {msg}); set the model to one it lists at {self.shown_url}/models.")
                hint = (f" Check that base_url ends with the API's version (e.g. http://127.0.0.1:8799/v1): "
                        f"{self.shown_url}{path} does not exist." if status == 404 else
                        " The request was refused as it is; fix the setting the message names.")
                raise EndpointError(f"endpoint {self.shown_url} answered HTTP {status} to {path}: {msg}.{hint}")
            try:
                data = resp.json()
            except ValueError:
                raise EndpointError(self._scrub(
                    f"endpoint {self.shown_url}{path} answered HTTP {status} with a body that is not JSON "
                    f"({resp.headers.get('content-type', 'no content-type')}): {_snippet(resp.content)}. Check that "
                    "base_url is the OpenAI-compatible API (ending in /v1), not a web page or a proxy's "
                    "login.")) from None
            if not isinstance(data, dict):
                raise EndpointError(f"endpoint {self.shown_url}{path} answered a JSON {type(data).__name__}, not an "
                                    "object; it does not speak the OpenAI protocol there. Check base_url.")
            u = usage_of(data)
            spent = u.input_tokens + u.output_tokens
            return data
        finally:
            self.limiter.settle(est_tokens, spent)

    def _call(self, method: str, path: str, payload: dict | None = None, *, retries: bool = True) -> dict:
        httpx, tn = self._httpx, self._tenacity
        est = len(json.dumps(payload)) // 4 + int((payload or {}).get("max_tokens") or 0) * int(
            (payload or {}).get("n") or 1) if payload else 0
        attempts = self.max_retries + 1 if retries else 1
        jitter = tn.wait_random_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)
        retryable = (_Retryable, httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)

        def wait(state):
            after = getattr(state.outcome.exception(), "retry_after", None)
            return min(self.max_backoff_s, after) if after is not None else jitter(state)

        def warn(state):
            why = self._scrub(str(state.outcome.exception()) or type(state.outcome.exception()).__name__)
            warnings.warn(f"endpoint {self.shown_url}{path}: {why}; retry {state.attempt_number}/{self.max_retries} "
                          f"in {state.next_action.sleep:.2g} s", stacklevel=6)

        try:
            for attempt in tn.Retrying(stop=tn.stop_after_attempt(attempts), wait=wait, reraise=True,
                                       retry=tn.retry_if_exception_type(retryable), before_sleep=warn):
                with attempt:
                    return self._once(method, path, payload, est)
        except _Retryable as e:
            raise EndpointError(f"endpoint {self.shown_url}{path}: gave up after {attempts} attempt(s); last answer "
                                f"HTTP {e.status}: {e.message}. Nothing of this request was counted; rerun to "
                                "resume, or lower the rate limits.") from None
        except httpx.ConnectError as e:
            raise EndpointUnreachable(self._scrub(
                f"cannot connect to the endpoint {self.shown_url} ({e}) after {attempts} attempt(s). Start the server "
                "(e.g. python -m llama_cpp.server --model MODEL.gguf --host 127.0.0.1 --port 8799) or fix "
                "base_url.")) from None
        except httpx.TimeoutException:
            raise EndpointError(f"endpoint {self.shown_url}{path}: no answer within timeout_s={self.timeout_s:g} s "
                                f"after {attempts} attempt(s); raise timeout_s or check the server's load.") from None
        except httpx.TransportError as e:
            raise EndpointError(self._scrub(f"endpoint {self.shown_url}{path}: {type(e).__name__} ({e}) after "
                                            f"{attempts} attempt(s); check the server and base_url.")) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, path: str, payload: dict, *, retries: bool = True) -> dict:
        self.ensure_model()
        return self._call("POST", path, {"model": self.model, **payload}, retries=retries)

    # -- Models --------------------------------------------------------------------------------

    def models(self) -> list:
        """The model names the server lists at `/models`."""
        data = self._call("GET", "/models")
        rows = data.get("data")
        if not isinstance(rows, list):
            raise EndpointError(f"endpoint {self.shown_url}/models answered without a 'data' list; it does not speak "
                                "the OpenAI protocol there. Check base_url.")
        return [str(r.get("id")) for r in rows if isinstance(r, dict)]

    def ensure_model(self) -> None:
        """Once per client (when `check_model`): the configured model must be served. (llama.cpp's
        server answers for any model name with the one model it serves; this check does not.)"""
        if not self.check_model or self._model_checked:
            return
        names = self.models()
        if self.model not in names:
            raise UnknownModelError(f"model {self.model!r} is not served by {self.shown_url}; it serves {names}. Set "
                                    "the model to one of these (llama.cpp's server: its --model_alias, or the "
                                    "--model path).")
        self._model_checked = True

    # -- Label log-probabilities (exact scoring) -----------------------------------------------

    def _logprobs_refused(self, e: EndpointError, fix: str) -> EndpointError:
        """A 4xx that names log-probabilities (or echo) means the server does not give them."""
        text = str(e)
        if type(e) is EndpointError and " HTTP 4" in text and ("logprob" in text.lower() or "echo" in text.lower()):
            return LogprobsUnavailable(f"{text} The endpoint does not give these log-probabilities: {fix}")
        return e

    def _completions(self, payload: dict, *, retries: bool = True) -> dict:
        try:
            return self._post("/completions", {"max_tokens": 1, "temperature": 0, "logprobs": 1, **payload},
                              retries=retries)
        except EndpointError as e:
            raise self._logprobs_refused(e, "use the scoring mode top_logprobs or sampling.") from None

    def _echo(self, texts: list, *, retries: bool = True) -> tuple[list, Usage]:
        data = self._completions({"prompt": texts[0] if len(texts) == 1 else texts, "echo": True}, retries=retries)
        choices = sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))
        if len(choices) != len(texts):
            raise EndpointError(f"endpoint {self.shown_url}/completions answered {len(choices)} choices for "
                                f"{len(texts)} prompts; set prompts_per_request: 1.")
        return choices, usage_of(data)

    def echo_aligned(self, prompt: str) -> bool | None:
        """Whether the server's echoed prompt log-probs belong to the right tokens: the log-prob of
        the token it generates after `prompt` must be the same when that token is echoed as part of
        the prompt. None when this prompt cannot tell (the answer is empty, or merges with it)."""
        data = self._completions({"prompt": prompt})
        self.overhead += usage_of(data)
        choice = (data.get("choices") or [{}])[0]
        token, lps = choice.get("text") or "", (choice.get("logprobs") or {}).get("token_logprobs") or []
        if not token or not lps or lps[0] is None:
            return None
        choices, usage = self._echo([prompt + token])
        self.overhead += usage
        value, n_tokens, merged = continuation_logprob(choices[0], prompt + token, token)
        if merged or n_tokens != 1:
            return None
        return abs(value - float(lps[0])) <= _ECHO_TOLERANCE

    def _check_echo(self, prompt: str) -> None:
        head = prompt[:16]
        with self._lock:
            if head in self._echo_ok and self._echo_ok[head] is not False:
                return
            verdict = self._echo_ok.get(head)
            for cut in (len(prompt), len(prompt) // 2, len(prompt) // 4):
                if cut and verdict is None:
                    verdict = self.echo_aligned(prompt[:cut])
            self._echo_ok[head] = verdict
            if verdict is False:
                raise EchoLogprobsShifted(
                    f"endpoint {self.shown_url} echoes prompt log-probabilities shifted by one token: each token gets "
                    "the log-prob of itself as the NEXT token (llama-cpp-python 0.3.36 does this when the model adds "
                    "no BOS token, e.g. SmolLM2), so label scores would be wrong. Start the prompt with the model's "
                    "BOS token text (SmolLM2: <|im_start|>, which its chat template begins with), or use the "
                    "scoring mode top_logprobs.")
            if verdict is None:
                warnings.warn(f"endpoint {self.shown_url}: could not check that echoed prompt log-probabilities are "
                              f"aligned for prompts starting {head!r} (the model's answers were empty or merged with "
                              "the prompt); the label scores are used unchecked.", stacklevel=3)

    def _strings_per_request(self, texts: list) -> int:
        """Find out (once) whether `/completions` takes a list of prompts; a refusal costs one request."""
        if self.prompts_per_request is None:
            try:
                self.overhead += self._echo(texts[:2], retries=False)[1]
                self.prompts_per_request = _MULTI_PROMPT_MAX
            except EndpointError as e:
                if isinstance(e, (EndpointUnreachable, LogprobsUnavailable)):
                    raise
                self.prompts_per_request = 1
        return self.prompts_per_request

    def label_logprobs(self, prompts, verbalizers) -> tuple[np.ndarray, list]:
        """Raw label scores: (n, L) float64 summed log-probs of each verbalizer's tokens after each
        prompt (the scored text is `prompt + verbalizer`, sent with `echo: true, logprobs: 1`), and
        one Usage per example (the 1 token each request generates is counted as output)."""
        prompts = [str(p) for p in prompts]
        verbalizers = [str(v) for v in verbalizers]
        if not verbalizers or any(not v for v in verbalizers) or len(set(verbalizers)) != len(verbalizers):
            raise ConfigError(f"verbalizers must be distinct non-empty strings, one per label; got {verbalizers!r}.")
        n, L = len(prompts), len(verbalizers)
        scores, usages = np.zeros((n, L), np.float64), [Usage() for _ in range(n)]
        if not n:
            return scores, usages
        if self.verify_echo:
            self._check_echo(prompts[0])
        jobs = [(i, j, p + v) for i, p in enumerate(prompts) for j, v in enumerate(verbalizers)]
        per = self._strings_per_request([t for _, _, t in jobs]) if len(jobs) > 1 else 1
        for s in range(0, len(jobs), per):
            chunk = jobs[s:s + per]
            choices, usage = self._echo([t for _, _, t in chunk])
            weights = []
            for (i, j, text), choice in zip(chunk, choices):
                scores[i, j], _, merged = continuation_logprob(choice, text, verbalizers[j])
                self.boundary_merges += merged
                weights.append(len((choice.get("logprobs") or {}).get("tokens") or ()))
            for (i, _, _), a, b, c in zip(chunk, _split(usage.input_tokens, weights),
                                          _split(usage.output_tokens, [1] * len(chunk)),
                                          _split(usage.cached_input_tokens, weights)):
                usages[i] += Usage(a, b, c)
        return scores, usages

    # -- Chat: top log-probabilities, samples, answers -----------------------------------------

    def _chat(self, messages, **params) -> dict:
        return self._post("/chat/completions", {"messages": _messages(messages), **params})

    def top_logprobs(self, messages, k: int = 20) -> TopLogprobs:
        """The top-`k` log-probabilities of the answer's first token (greedy), the answer, its usage."""
        if not 1 <= int(k) <= 20:
            raise ConfigError(f"top_logprobs k must be 1..20 (the OpenAI protocol's limit), got {k}.")
        try:
            data = self._chat(messages, logprobs=True, top_logprobs=int(k), max_tokens=1, temperature=0)
        except EndpointError as e:
            raise self._logprobs_refused(e, "use the scoring mode sampling or answer.") from None
        choice = (data.get("choices") or [{}])[0]
        logprobs = choice.get("logprobs")
        content = (logprobs or {}).get("content") or []
        text = str((choice.get("message") or {}).get("content") or "")
        if isinstance(logprobs, dict) and not content and not text and choice.get("finish_reason") == "stop":
            # the model ended its answer at once (its first token was end-of-text: seen with SmolLM2 on
            # llama.cpp): no token, so no log-probabilities, but the endpoint gives them. An empty top
            # list: the caller's row is uniform and marked abstained, as for an answer naming no label
            return TopLogprobs({}, "", usage_of(data))
        top = content[0].get("top_logprobs") if content and isinstance(content[0], dict) else None
        if not top:
            raise LogprobsUnavailable(f"endpoint {self.shown_url} returned no top_logprobs for model {self.model!r}: it "
                                      "gives no log-probabilities on chat completions. Use the scoring mode sampling "
                                      "or answer for this endpoint.")
        out: dict = {}
        for e in top:  # two token ids may print the same: their probabilities add up
            t, v = str(e.get("token")), float(e.get("logprob"))
            out[t] = float(np.logaddexp(out[t], v)) if t in out else v
        return TopLogprobs(out, text, usage_of(data))

    def sample(self, messages, n: int, temperature: float = 1.0, max_tokens: int = 16,
               seed: int | None = None) -> Answers:
        """`n` sampled answers. A server that ignores `n` (llama.cpp's) gets one request per answer,
        the i-th with seed `seed + i`."""
        if int(n) < 1 or not float(temperature) >= 0 or int(max_tokens) < 1:
            raise ConfigError(f"sample needs n >= 1, temperature >= 0 and max_tokens >= 1; got {n}, {temperature}, "
                              f"{max_tokens}.")
        params = {"temperature": float(temperature), "max_tokens": int(max_tokens)}
        texts, usage = [], Usage()
        while len(texts) < n:
            k = n - len(texts) if self._n_supported is not False else 1
            s = None if seed is None else int(seed) + len(texts)
            data = self._chat(messages, n=k, **params, **({} if s is None else {"seed": s}))
            got = [str((c.get("message") or {}).get("content") or "")
                   for c in sorted(data.get("choices") or [], key=lambda c: c.get("index", 0))]
            if not got:
                raise EndpointError(f"endpoint {self.shown_url}/chat/completions answered no choices.")
            if k > 1:
                self._n_supported = len(got) >= k
            texts += got[:k]
            usage += usage_of(data)
        return Answers(texts, usage)

    def answer(self, messages, max_tokens: int = 16) -> tuple[str, Usage]:
        """The greedy (temperature 0) answer and its usage."""
        data = self._chat(messages, temperature=0, max_tokens=int(max_tokens))
        choice = (data.get("choices") or [{}])[0]
        return str((choice.get("message") or {}).get("content") or ""), usage_of(data)
