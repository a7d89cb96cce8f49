"""A teacher behind an HTTP endpoint, and a reference server that serves any mentor teacher."""

from __future__ import annotations

import json
import os
import random
import time
import warnings
from urllib.parse import urljoin, urlsplit

import numpy as np

from ..credentials import ENV_REF, redact_url, url_secrets
from ..checks import class_permutation, logits_to_probabilities, topk_to_dense, validate_probabilities
from ..errors import ConfigError, DataError, TeacherOutputError
from .base import Teacher, _sha


# ----------------------------------------------------------------------------------------------
# A teacher behind an HTTP endpoint (a model server, an LLM labeling API), and a reference server

class RemoteTeacherError(TeacherOutputError):
    """The remote teacher could not be reached, refused a request, or answered something unusable."""


_MAX_REDIRECTS = 5




def _origin(url: str) -> tuple:
    p = urlsplit(url)
    try:
        port = p.port or {"http": 80, "https": 443}.get(p.scheme.lower())
    except ValueError:  # a malformed port: an origin of its own
        port = p.netloc
    return p.scheme.lower(), (p.hostname or "").lower(), port


def _same_site_redirect(src: str, dst: str) -> bool:
    """A redirect that keeps the request's credentials at home: the same origin (scheme, host,
    port), or the upgrade of http on the default port to https on the same host's default port."""
    a, b = _origin(src), _origin(dst)
    return a == b or (a[0] == "http" and b[0] == "https" and a[1] == b[1] and (a[2], b[2]) == (80, 443))


def _no_redirects():
    """An opener that never follows a redirect itself: RemoteTeacher decides, with the rule above."""
    import urllib.request

    class _Refuse(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None  # the 3xx then surfaces as an HTTPError

    return urllib.request.build_opener(_Refuse)


def _retry_after(headers, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds, or an HTTP date (RFC 9110),
    counted from `now` (default: the current time). None when absent or unreadable."""
    try:
        value = headers.get("Retry-After")
    except AttributeError:
        return None
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except (TypeError, ValueError):
        pass
    from email.utils import parsedate_to_datetime
    try:
        when = parsedate_to_datetime(str(value))
    except (TypeError, ValueError, IndexError):
        return None
    if when is None or when.tzinfo is None:  # an HTTP date is always GMT; anything else is not one
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class RemoteTeacher(Teacher):
    """A teacher behind an HTTP endpoint.

    Protocol: each request is `POST url` with JSON `{"ids": [str, ...], "inputs": [row, ...]}`
    (a row is a list of floats, or a string for text data), at most `batch_size` examples; the
    answer is JSON with one row per example, in request order, under the key `output` names:
    `{"probs": [[...], ...]}` or `{"logits": [[...], ...]}`, or for 'topk' `topk_index` with
    `topk_prob` (or `topk_logprob`). If the answer also carries `ids`, they must equal the request's.
    Every answer is validated (row count, class count, NaN/inf, rows summing to 1).

    Connection errors, timeouts, HTTP 429 and 5xx are retried up to `max_retries` times with
    exponential backoff (`backoff_s`·2^attempt, jittered, capped at `max_backoff_s`; a Retry-After
    header, in seconds or as an HTTP date, is honoured); any other 4xx fails at once with the status and the start of
    the body. `headers_env` maps a header to the environment variable holding its value (e.g.
    {"Authorization": "MENTOR_API_KEY"}): only the variable's name is kept, the value is read for
    each request and never enters the fingerprint, `describe()` or any file. A key that must sit in
    the URL is written `${VAR}` (e.g. `https://host/p?key=${MENTOR_KEY}`) and filled in per request;
    a literal key in the URL is redacted (`redact_url`) wherever the URL is shown or hashed.

    Redirects are followed (at most 5, re-sending the same POST) only within the URL's origin, or
    from http to https on the same host; a redirect to any other origin is refused with an error,
    so the credentials never reach another server.

    The fingerprint is the redacted URL, `output` and `model_version` (a new key does not change
    it): bump `model_version` when the served model changes so a store of the old model's outputs
    refuses the new one.

    The store writes once per `predict_proba` call, so give it chunks of at most `batch_size`
    (the pipeline does): a larger call is split into several requests, and if a later one fails,
    the answers already received in that call are not stored.
    """

    kind = "http"

    def __init__(self, url: str, n_classes: int, *, output: str = "probs", batch_size: int = 256,
                 timeout_s: float = 60.0, max_retries: int = 5, backoff_s: float = 1.0, max_backoff_s: float = 60.0,
                 headers: dict | None = None, headers_env: dict | None = None, model_version: str | None = None,
                 cost_per_example: float = 0.0, data_classes=None):
        parsed = urlsplit(str(url))
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"remote teacher url must be an http:// or https:// URL, got {redact_url(str(url))!r}.")
        if output not in ("probs", "logits", "topk"):
            raise ConfigError(f"remote teacher output must be 'probs', 'logits' or 'topk', got {output!r}")
        if int(batch_size) < 1 or not float(timeout_s) > 0 or int(max_retries) < 0 or float(backoff_s) < 0:
            raise ConfigError(f"remote teacher needs batch_size >= 1, timeout_s > 0, max_retries >= 0 and "
                              f"backoff_s >= 0; got {batch_size}, {timeout_s}, {max_retries}, {backoff_s}.")
        self.url, self.n_classes, self.output = str(url), int(n_classes), output
        # an answer that names its classes ({"classes": [...]}) is matched to these by name
        self.data_classes = None if data_classes is None else [str(c) for c in data_classes]
        self.batch_size, self.timeout_s, self.max_retries = int(batch_size), float(timeout_s), int(max_retries)
        self.backoff_s, self.max_backoff_s = float(backoff_s), float(max_backoff_s)
        self.headers, self.headers_env = dict(headers or {}), dict(headers_env or {})
        self.model_version, self.cost_per_example = model_version, float(cost_per_example)
        self.shown_url = redact_url(self.url)  # what errors, logs, describe() and the fingerprint see
        if self.shown_url != self.url:
            warnings.warn(f"remote teacher url {self.shown_url}: a key is written in it (shown as ***; mentor "
                          "saves it nowhere, but it stays in your own config file); write it as ${VAR} (e.g. "
                          "?api_key=${MENTOR_API_KEY}) to keep it in the environment only.", stacklevel=2)
        self._env_headers()  # a missing variable fails now, before anything is paid
        self._request_url()
        self.fingerprint = "http-" + _sha(json.dumps([self.shown_url, output, model_version or ""]).encode())
        self.n_requests = 0  # HTTP requests sent, retries included

    def describe(self) -> dict:
        return {**super().describe(), "url": self.shown_url, "output": self.output, "model_version": self.model_version,
                "batch_size": self.batch_size, "headers_env": sorted(self.headers_env)}  # names only, never values

    def _env_headers(self) -> dict:
        missing = [v for v in self.headers_env.values() if not os.environ.get(v)]
        if missing:
            raise ConfigError(f"remote teacher: environment variable(s) {missing} are not set; they hold the values "
                              f"of headers {sorted(self.headers_env)}. Export them before running.")
        return {h: os.environ[v] for h, v in self.headers_env.items()}

    def _request_url(self) -> str:
        """The URL with its `${VAR}` references filled in from the environment."""
        missing = sorted({v for v in ENV_REF.findall(self.url) if not os.environ.get(v)})
        if missing:
            raise ConfigError(f"remote teacher: environment variable(s) {missing} named in the url are not set. "
                              "Export them before running.")
        return ENV_REF.sub(lambda m: os.environ[m.group(1)], self.url)

    def _scrub(self, text: str) -> str:
        """`text` without any credential value this teacher knows (a server may echo them back)."""
        secrets = [os.environ.get(v, "") for v in [*self.headers_env.values(), *ENV_REF.findall(self.url)]]
        secrets += [v for h, v in self.headers.items() if h.lower() in ("authorization", "proxy-authorization",
                                                                        "cookie") or h.lower().endswith("key")]
        secrets += url_secrets(self.url)
        for secret in sorted(set(secrets), key=len, reverse=True):
            if len(secret) >= 4:
                text = text.replace(secret, "***")
        return text

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        n = len(inputs)
        ids = [str(i) for i in (range(n) if ids is None else np.asarray(ids).astype(str).tolist())]
        if len(ids) != n:
            raise DataError(f"remote teacher: {len(ids)} ids for {n} inputs; pass one id per input.")
        if n == 0:
            return np.zeros((0, self.n_classes), np.float32)
        rows = _json_rows(inputs)
        out = []
        for s in range(0, n, self.batch_size):
            try:
                out.append(self._request(ids[s:s + self.batch_size], rows[s:s + self.batch_size]))
            except TeacherOutputError as e:
                if not s:
                    raise
                raise type(e)(f"{e}\n({s} of the {n} examples of this call were answered by earlier requests, but a "
                              "store keeps a call's outputs only when the whole call succeeds; label in chunks of at "
                              f"most batch_size={self.batch_size} so that every answered request is stored.)") from None
        return np.concatenate(out)

    def _request(self, ids: list, rows: list) -> np.ndarray:
        import http.client
        import ssl
        import urllib.error
        body = json.dumps({"ids": ids, "inputs": rows}, allow_nan=False).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json", **self.headers,
                   **self._env_headers()}
        for attempt in range(self.max_retries + 1):
            wait = None
            self.n_requests += 1
            try:
                return self._parse(self._post(body, headers), ids)
            except urllib.error.HTTPError as e:
                text = _snippet(_read_quietly(e))
                if e.code != 429 and e.code < 500:
                    raise RemoteTeacherError(self._scrub(f"remote teacher {self.shown_url} answered HTTP {e.code} "
                                                         f"{e.reason} (not retried): {text}")) from None
                why, wait = f"HTTP {e.code} {e.reason}: {text}", _retry_after(e.headers)
            except urllib.error.URLError as e:
                if isinstance(e.reason, ssl.SSLCertVerificationError):
                    raise RemoteTeacherError(f"remote teacher {self.shown_url}: TLS certificate rejected "
                                             f"({e.reason}).") from None
                why = f"cannot connect ({e.reason})"
            except (OSError, http.client.HTTPException) as e:  # timeouts, resets, truncated answers
                why = f"{type(e).__name__}: {e}"
            why = self._scrub(why)
            if attempt == self.max_retries:
                raise RemoteTeacherError(f"remote teacher {self.shown_url}: gave up after {attempt + 1} attempt(s); "
                                         f"last error: {why}. Nothing of this request was stored; rerun to resume.")
            delay = min(self.max_backoff_s, wait if wait is not None
                        else self.backoff_s * 2 ** attempt * (0.5 + 0.5 * random.random()))
            warnings.warn(f"remote teacher {self.shown_url}: {why}; retry {attempt + 1}/{self.max_retries} in "
                          f"{delay:.2g} s", stacklevel=3)
            time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post(self, body: bytes, headers: dict) -> bytes:
        """POST and read the answer, following redirects only where `_same_site_redirect` allows."""
        import urllib.error
        import urllib.request
        url, opener = self._request_url(), _no_redirects()
        for _ in range(_MAX_REDIRECTS + 1):
            try:
                with opener.open(urllib.request.Request(url, data=body, headers=headers, method="POST"),
                                 timeout=self.timeout_s) as resp:
                    return resp.read()
            except urllib.error.HTTPError as e:
                location = e.headers.get("Location") if e.code in (301, 302, 303, 307, 308) else None
                if not location:
                    raise
                _read_quietly(e)
                target = urljoin(url, location)
                if not _same_site_redirect(url, target):
                    raise RemoteTeacherError(self._scrub(
                        f"remote teacher {self.shown_url} redirected (HTTP {e.code}) to {redact_url(target)}, another "
                        "origin; mentor does not follow redirects to another scheme, host or port, so that the "
                        "request's credentials never reach another server. If that server is the right one, set "
                        "teacher.url to it.")) from None
                url = target
        raise RemoteTeacherError(f"remote teacher {self.shown_url}: more than {_MAX_REDIRECTS} redirects; set "
                                 "teacher.url to the final address.")

    def _parse(self, raw: bytes, ids: list) -> np.ndarray:
        name = f"remote teacher {self.shown_url}"
        try:
            payload = json.loads(raw)
        except ValueError:
            raise RemoteTeacherError(self._scrub(f"{name} answered with a body that is not JSON: "
                                                 f"{_snippet(raw)}")) from None
        keys = ("topk_index", "topk_prob|topk_logprob") if self.output == "topk" else (self.output,)
        if not isinstance(payload, dict):
            raise RemoteTeacherError(f"{name} answered a JSON {type(payload).__name__}; expected an object with "
                                     f"{' and '.join(map(repr, keys))}.")
        if "ids" in payload and [str(i) for i in payload["ids"] or []] != ids:
            raise RemoteTeacherError(self._scrub(
                f"{name} answered for ids {_snippet(str(payload['ids']).encode(), 120)}, not for the {len(ids)} ids it "
                "was sent (in order); the outputs would be misattributed."))
        if self.output == "topk":
            pkey = "topk_prob" if "topk_prob" in payload else "topk_logprob"
            idx, val = _json_matrix(payload, "topk_index", name, len(ids)), _json_matrix(payload, pkey, name, len(ids))
            return self._in_data_order(topk_to_dense(idx.astype(np.int64), np.exp(val) if pkey == "topk_logprob"
                                                     else val, self.n_classes, name=name), payload.get("classes"), name)
        mat = _json_matrix(payload, self.output, name, len(ids))
        probs = (logits_to_probabilities(mat, self.n_classes, name=name) if self.output == "logits"
                 else validate_probabilities(mat, self.n_classes, name=name))
        return self._in_data_order(probs, payload.get("classes"), name)

    def _in_data_order(self, probs: np.ndarray, classes, name: str) -> np.ndarray:
        """Columns reordered to the data's classes when the answer names its own."""
        if classes is None:
            return probs
        if self.data_classes is None:
            raise RemoteTeacherError(f"{name} names its classes {_snippet(str(classes).encode(), 200)} but the data's "
                                     "classes have no names (integer labels): set data.classes so they can be matched.")
        if not isinstance(classes, list) or len(classes) != probs.shape[1]:
            raise RemoteTeacherError(f"{name}: 'classes' must list one name per output column ({probs.shape[1]}), got "
                                     f"{_snippet(str(classes).encode(), 200)}.")
        perm = class_permutation(classes, self.data_classes, name=name)
        return probs if perm is None else np.ascontiguousarray(probs[:, perm])


def _read_quietly(err) -> bytes:
    """The body of an HTTP error answer, or b"" when it cannot be read."""
    try:
        return err.read() or b""
    except (OSError, ValueError, AttributeError):
        return b""


def _snippet(raw: bytes, n: int = 300) -> str:
    text = raw.decode("utf-8", "replace")
    return repr(text[:n]) + (f" ... ({len(text)} chars)" if len(text) > n else "")


def _json_rows(inputs) -> list:
    """Inputs as JSON-ready rows: strings for text, flat lists of floats otherwise."""
    first = inputs[0]
    if isinstance(first, str):
        return [str(x) for x in inputs]
    arr = np.asarray(inputs, dtype=np.float64).reshape(len(inputs), -1)
    if not np.isfinite(arr).all():
        raise DataError("remote teacher: inputs contain NaN or inf, which JSON cannot carry; clean the features.")
    return arr.tolist()


def _json_matrix(payload: dict, key: str, name: str, n: int) -> np.ndarray:
    if key not in payload:
        raise RemoteTeacherError(f"{name}: the answer has no {key!r} field (fields: {sorted(payload)[:10]}). The "
                                 f"server must answer {{{key!r}: [[...], ...]}}, or set the teacher's output to the "
                                 "kind it returns (probs, logits, topk).")
    try:
        mat = np.asarray(payload[key], dtype=np.float64)
    except (TypeError, ValueError):
        raise TeacherOutputError(f"{name}: {key!r} is not a numeric matrix (rows of different lengths, or "
                                 "non-numbers); answer one row of equal length per example.") from None
    if mat.ndim != 2 or len(mat) != n:
        raise TeacherOutputError(f"{name}: {key!r} has shape {mat.shape} for {n} examples; answer one row of "
                                 "class scores per example, in request order. Nothing was stored for this batch.")
    return mat


def teacher_server(teacher: Teacher, host: str = "127.0.0.1", port: int = 8000, *, quiet: bool = True):
    """A `ThreadingHTTPServer` (not started) that serves any Teacher over the RemoteTeacher protocol:
    POST `{"ids", "inputs"}` answers `{"ids", "probs"}`. Bad requests and mentor's input errors get
    400, other teacher failures 500 (which a RemoteTeacher retries). Calls are serialised with a lock,
    so the teacher need not be thread-safe. Port 0 picks a free port (`server.server_address`)."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
    from ..errors import MentorError
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, payload: dict) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self):  # noqa: N802 (http.server's naming)
            try:
                req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
                ids, inputs = [str(i) for i in req["ids"]], req["inputs"]
                if len(ids) != len(inputs):
                    raise ValueError(f"{len(ids)} ids but {len(inputs)} inputs")
                x = (np.asarray(inputs, dtype=object) if inputs and isinstance(inputs[0], str)
                     else np.asarray(inputs, dtype=np.float32).reshape(len(inputs), -1))
            except (ValueError, KeyError, TypeError) as e:
                return self._send(400, {"error": f"bad request: {e}; send {{\"ids\": [...], \"inputs\": [...]}}"})
            try:
                with lock:
                    probs = teacher.predict_proba(x, np.asarray(ids, dtype=str))
            except MentorError as e:
                return self._send(400, {"error": str(e)})
            except Exception as e:  # noqa: BLE001 - reported to the client, which may retry
                return self._send(500, {"error": f"{type(e).__name__}: {e}"})
            self._send(200, {"ids": ids, "probs": np.asarray(probs, dtype=np.float64).tolist()})

        def log_message(self, *args):
            if not quiet:
                super().log_message(*args)

    return ThreadingHTTPServer((host, port), Handler)


def serve_teacher(teacher: Teacher, host: str = "127.0.0.1", port: int = 8000, *, background: bool = False,
                  quiet: bool = False):
    """Serve `teacher` over HTTP for RemoteTeacher clients. Blocks until Ctrl-C, or with
    `background=True` serves from a daemon thread and returns the server (`server.shutdown()`)."""
    import threading
    server = teacher_server(teacher, host, port, quiet=quiet)
    if background:
        threading.Thread(target=server.serve_forever, daemon=True, name="mentor-teacher-server").start()
        return server
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return server
