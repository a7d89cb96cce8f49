"""Serve a trained student over HTTP, optionally as a cascade that asks the teacher when unsure.

`mentor serve MODEL_DIR [--cascade]` starts a FastAPI app under uvicorn. Endpoints:

    GET  /health                 what is served: classes, runtime, threshold, teacher fingerprint
    POST /predict                mentor's teacher protocol: {"ids": [...], "inputs": [...]} ->
                                 {"ids", "probs", "classes", "labels", "answered_by", "confidence"},
                                 so a served student (or cascade) can itself be a `teacher.kind: http`
    POST /v1/chat/completions    text tasks: an OpenAI-compatible chat endpoint; the last user message
                                 is the text to classify, the answer's content is the class name
    GET  /v1/models              the one model served, for OpenAI clients that list models first

The cascade rule is one comparison: the student answers an example when its top probability is at
least `threshold` (chosen on V by `mentor cascade`, which bounds the accuracy of what the student
answers); every other example in the request goes to the teacher in one call. When the teacher
fails (unreachable, an error), `on_teacher_error` decides: "student" answers with the student and
says so in `answered_by` ("student-fallback-failed") and `fallback_error`; "fail" answers 503.

Every teacher answer the cascade pays for is kept in a teacher-output store (`answers`, a
`TeacherStore`; `mentor serve --cascade RUN` keeps them in RUN/served-answers): the call goes on the
store's ledger before it is sent, the answer is stored under an id made from the input's content
(`served_id`), and the same input sent again is answered from the store, not paid again. With
`keep_inputs` the input itself is kept beside the answer (`served_input`), so served traffic can
become the next student's pool.

A bad request (malformed JSON, ids and inputs of different lengths, feature rows of the wrong
width, text sent to a tabular model) gets a 4xx JSON error naming the problem; the service never
crashes on one.
"""


import collections
import contextlib
import hashlib
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from .errors import ConfigError, MentorError


class Predictor(Protocol):
    """What the service needs from a student: probabilities for a batch of raw inputs."""

    def predict_proba(self, inputs) -> np.ndarray: ...


@dataclass
class ServedModel:
    """A student ready to serve, with what requests are checked against."""
    predictor: Predictor
    classes: list[str] | None          # one name per output column; None for integer labels (answers then
                                       # carry no "classes", as a teacher of a data set without names would)
    input_kind: str                    # "text" or "features"
    n_features: int | None = None      # width of a feature row (None for text)
    name: str = "mentor-student"
    info: dict = field(default_factory=dict)

    def label(self, index: int) -> str:
        return str(index) if self.classes is None else self.classes[index]


def student_answers(probs: np.ndarray, threshold: float | None) -> np.ndarray:
    """Which rows the student answers itself: all when there is no threshold, else top prob ≥ threshold."""
    if threshold is None:
        return np.ones(len(probs), dtype=bool)
    return probs.max(axis=1) >= threshold


class BadRequest(ValueError):
    """A request the service cannot answer as sent (answered 400 with the message)."""


def parse_inputs(inputs: list, model: ServedModel) -> np.ndarray:
    """Request inputs as the array the predictor takes, checked against the model's input kind."""
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list")
    if model.input_kind == "text":
        if not all(isinstance(x, str) for x in inputs):
            raise BadRequest("this model classifies text: every input must be a string")
        return np.asarray(inputs, dtype=object)
    if any(isinstance(x, str) for x in inputs):
        raise BadRequest(f"this model takes rows of {model.n_features} numbers, not text")
    try:
        x = np.asarray(inputs, dtype=np.float32)
    except (TypeError, ValueError):
        raise BadRequest("every input must be a list of numbers of the same length") from None
    x = x.reshape(len(inputs), -1)
    if model.n_features is not None and x.shape[1] != model.n_features:
        raise BadRequest(f"each input must have {model.n_features} features, got {x.shape[1]}")
    if not np.isfinite(x).all():
        raise BadRequest("inputs contain NaN or inf")
    return x


def served_id(x) -> str:
    """The store id of one served input: a hash of its content (text as UTF-8, a feature row as
    float32 bytes), so the same input asked again finds its paid answer, whatever id the client sent."""
    if isinstance(x, str):
        data = b"text\0" + x.encode("utf-8", "surrogatepass")
    else:
        data = b"row\0" + np.ascontiguousarray(x, dtype=np.float32).tobytes()
    return "served-" + hashlib.sha256(data).hexdigest()[:32]


class _KeepingTeacher:
    """The cascade's teacher as the store calls it: the same fingerprint and price, with the served
    input (when kept) and the time added to what the store keeps of each answer."""

    def __init__(self, teacher, keep_inputs: bool):
        self.teacher, self.keep_inputs = teacher, keep_inputs
        self.fingerprint = teacher.fingerprint
        self.n_classes = getattr(teacher, "n_classes", None)
        self.cost_per_example = float(getattr(teacher, "cost_per_example", 0.0) or 0.0)

    def answer(self, inputs, ids=None):
        from .store.core import _ask, _unpack
        from .teachers.base import TeacherAnswer
        probs, extras, cost = _unpack(_ask(self.teacher, inputs, ids))  # the store's own reading of an answer
        extras = dict(extras)
        extras["served_at"] = [time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())] * len(inputs)
        if self.keep_inputs:
            extras["served_input"] = [x if isinstance(x, str) else json.dumps(np.asarray(x).tolist())
                                      for x in inputs]
        return TeacherAnswer(np.asarray(probs), extras, cost)


@dataclass
class _Waiting:
    """One request's inputs for the teacher, and what the labeling run that sent them gave back."""

    keys: np.ndarray
    x: np.ndarray
    probs: np.ndarray | None = None
    error: BaseException | None = None
    done: bool = False


class Cascade:
    """The student, and the teacher for the examples it is unsure of. Thread-safe: the student runs
    concurrently; teacher calls go through one labeling run at a time on the answers store.

    `answers`: a TeacherStore (for this teacher) where every paid answer is kept and looked up
    first; None asks the teacher every time and keeps nothing (tests, a free teacher).
    `teacher_calls`: how many teacher calls may run at once. Requests that need the teacher while a
    call is out wait together, and the next labeling run sends all of them, split over up to this
    many parallel calls (threads): for an LLM API or HTTP endpoint that answers calls in parallel.
    1 (the default) is one call at a time; the teacher must be thread-safe above it (HTTP and LLM
    teachers are).
    `kept_in_memory`: the teacher answers of that many recent inputs are also held in memory
    (about 100 bytes + 8 per class each), so a repeated input skips the store; 0 reads the store.
    `retry_after_s`: after the teacher fails, requests within this many seconds do not ask it (each
    would wait through the teacher's own retries first) and are handled per `on_teacher_error` at
    once, saying when it failed and why; the first request after that asks again. 0 asks every time."""

    def __init__(self, model: ServedModel, teacher=None, threshold: float | None = None,
                 on_teacher_error: str = "student", answers=None, keep_inputs: bool = True,
                 teacher_calls: int = 1, retry_after_s: float = 30.0, kept_in_memory: int = 100_000):
        if on_teacher_error not in ("student", "fail"):
            raise ConfigError(f"on_teacher_error must be 'student' or 'fail', got {on_teacher_error!r}.")
        if teacher is not None and threshold is None:
            raise ConfigError("a cascade needs a confidence threshold: run `mentor cascade RUN_DIR` (it writes "
                              "cascade.json) or pass --threshold.")
        if threshold is not None and not 0.0 <= float(threshold) <= 1.0:
            raise ConfigError(f"threshold must be a probability in [0, 1], got {threshold}.")
        if answers is not None and (teacher is None or answers.fingerprint != teacher.fingerprint):
            raise ConfigError(f"the answers store {answers.path} keeps the outputs of teacher {answers.fingerprint!r}, "
                              f"not of {getattr(teacher, 'fingerprint', None)!r}; give a store of this teacher's.")
        if isinstance(teacher_calls, bool) or not isinstance(teacher_calls, int) or teacher_calls < 1:
            raise ConfigError(f"teacher_calls must be a whole number >= 1, got {teacher_calls!r}.")
        if not isinstance(retry_after_s, (int, float)) or isinstance(retry_after_s, bool) or retry_after_s < 0:
            raise ConfigError(f"retry_after_s must be a number of seconds >= 0, got {retry_after_s!r}.")
        self.retry_after_s = float(retry_after_s)
        if isinstance(kept_in_memory, bool) or not isinstance(kept_in_memory, int) or kept_in_memory < 0:
            raise ConfigError(f"kept_in_memory must be a whole number >= 0, got {kept_in_memory!r}.")
        self.kept_in_memory = kept_in_memory
        self._kept = collections.OrderedDict() if kept_in_memory and answers is not None else None
        self._failed: tuple[float, str] | None = None  # (time.monotonic() of the last failure, its error)
        self.model, self.teacher, self.on_teacher_error = model, teacher, on_teacher_error
        self.threshold = None if teacher is None else float(threshold)
        self.answers = answers
        self._asker = None if teacher is None else _KeepingTeacher(teacher, keep_inputs)
        self.teacher_calls = teacher_calls
        self._pool = None
        if teacher is not None and answers is not None and teacher_calls > 1:
            from .teachers.pools import ThreadTeacherPool
            self._pool = ThreadTeacherPool(self._asker, teacher_calls, in_flight_per_worker=1)
        self._teacher_lock = threading.Lock()
        self._waiting: list[_Waiting] = []  # requests' teacher work not sent yet (under _count_lock)
        self._count_lock = threading.Lock()  # counts, the waiting list and the answers held in memory
        self.counts = {"requests": 0, "examples": 0, "student": 0, "teacher": 0, "fallback_failed": 0,
                       "teacher_paid": 0, "teacher_from_store": 0}

    def _ask_teacher(self, ids: list[str], x: np.ndarray) -> np.ndarray:
        """The teacher's probabilities for `x`: through the store (paid once per distinct input, on
        its ledger) when there is one, else a plain call."""
        if self.answers is None:
            with self._teacher_lock:
                t = self.teacher.predict_proba(x, np.asarray(ids, dtype=str))
            self._count(teacher_paid=len(x))
            return np.asarray(t, dtype=np.float64)
        keys = np.asarray([served_id(row) for row in x], dtype=str)
        with self._count_lock:  # answers read before: from memory, no store read, no lock on the teacher
            kept = [self._kept.get(k) for k in keys] if self._kept is not None else [None]
            if all(r is not None for r in kept):
                for k in keys:
                    self._kept.move_to_end(k)
                self.counts["teacher_from_store"] += len(keys)
                return np.array(kept, dtype=np.float64)
        mine = _Waiting(keys, x)
        with self._count_lock:
            self._waiting.append(mine)
        with self._teacher_lock:
            if not mine.done:  # else an earlier holder of the lock sent it with its own
                with self._count_lock:
                    batch, self._waiting = self._waiting, []
                self._label(batch)
        if mine.error is not None:
            raise mine.error
        return mine.probs

    def _label(self, batch: list["_Waiting"]) -> None:
        """One labeling run for every waiting request's inputs (each distinct input once), in up to
        `teacher_calls` parallel calls; each request gets its rows, or the error."""
        keys = np.concatenate([w.keys for w in batch])
        first = np.unique(keys, return_index=True)[1]
        first.sort()
        x = np.concatenate([w.x for w in batch])[first] if len(batch) > 1 else batch[0].x[first]
        keys = keys[first]
        try:
            paid = 0
            new = np.isin(keys, self.answers.missing(keys))
            if new.any():  # only inputs not kept yet are sent; all kept: no labeling run at all
                k, xs = keys[new], x[new]
                per_call = -(-len(k) // self.teacher_calls)
                chunks = [(k[i:i + per_call], xs[i:i + per_call]) for i in range(0, len(k), per_call)]
                # rows stay in the row log (durable) until shard_size add up or the service stops:
                # not one Parquet file per request
                paid = self.answers.label(self._asker, chunks, pool=self._pool if len(chunks) > 1 else None,
                                          checkpoint=False).n_new
            rows = np.asarray(self.answers.read(keys), dtype=np.float64)
            at = {k: i for i, k in enumerate(keys)}
            for w in batch:
                w.probs = rows[[at[k] for k in w.keys]]
            self._count(teacher_paid=paid, teacher_from_store=sum(len(w.keys) for w in batch) - paid)
            self._keep(keys, rows)
        except Exception as e:  # noqa: BLE001 - every waiting request sees the failure (on_teacher_error)
            for w in batch:
                w.error = e
        finally:
            for w in batch:
                w.done = True

    def _keep(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Remember answers in memory (the most recent `kept_in_memory` inputs), so that an input
        asked again is answered without reading the store."""
        if self._kept is None:
            return
        with self._count_lock:
            for k, r in zip(keys, rows):
                self._kept[k] = r
                self._kept.move_to_end(k)
            while len(self._kept) > self.kept_in_memory:
                self._kept.popitem(last=False)

    def close(self) -> None:
        """Write the answers kept since the last shard as one (at the service's shutdown)."""
        if self.answers is not None:
            with self._teacher_lock:
                self.answers.checkpoint()
        if self._pool is not None:
            self._pool.close()

    def _check_recent_failure(self) -> None:
        failed = self._failed
        if failed is None:
            return
        ago = time.monotonic() - failed[0]
        if ago < self.retry_after_s:
            raise _RecentlyFailed(f"the teacher failed {ago:.0f} s ago ({failed[1]}); it is asked again "
                                  f"{self.retry_after_s - ago:.0f} s from now")

    def _count(self, **add) -> None:
        with self._count_lock:
            for k, v in add.items():
                self.counts[k] += int(v)

    def answer(self, ids: list[str], x: np.ndarray) -> dict:
        probs = np.asarray(self.model.predictor.predict_proba(x), dtype=np.float64)
        by = np.array(["student"] * len(ids), dtype=object)
        out: dict[str, Any] = {}
        if self.teacher is not None:
            ask = ~student_answers(probs, self.threshold)
            if ask.any():
                idx = np.flatnonzero(ask)
                try:
                    self._check_recent_failure()
                    probs[idx] = self._ask_teacher([ids[i] for i in idx], x[idx])
                    by[idx] = "teacher"
                    self._failed = None
                except Exception as e:  # noqa: BLE001 - any teacher failure is handled per on_teacher_error
                    if not isinstance(e, _RecentlyFailed):  # a real failure: skip the teacher for a while
                        self._failed = (time.monotonic(), f"{type(e).__name__}: {e}"[:400])
                    if self.on_teacher_error == "fail":
                        raise TeacherUnavailable(f"the teacher could not answer ({type(e).__name__}: {e})") from None
                    by[idx] = "student-fallback-failed"
                    out["fallback_error"] = f"{type(e).__name__}: {e}"[:500]
        with self._count_lock:
            self.counts["requests"] += 1
            self.counts["examples"] += len(ids)
            self.counts["student"] += int((by == "student").sum())
            self.counts["teacher"] += int((by == "teacher").sum())
            self.counts["fallback_failed"] += int((by == "student-fallback-failed").sum())
        top = probs.argmax(axis=1)
        if self.model.classes is not None:
            out["classes"] = self.model.classes
        out.update(ids=list(ids), probs=probs.tolist(), labels=[self.model.label(i) for i in top],
                   confidence=probs.max(axis=1).tolist(), answered_by=by.tolist())
        return out


class TeacherUnavailable(RuntimeError):
    """The cascade needed the teacher, it failed, and on_teacher_error is 'fail' (answered 503)."""


class _RecentlyFailed(RuntimeError):
    """The teacher failed less than `retry_after_s` ago, so it was not asked."""


def create_app(cascade: Cascade, *, max_batch: int = 1024):
    """The FastAPI app serving `cascade` (a student alone when it has no teacher)."""
    from fastapi import FastAPI, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse

    model = cascade.model

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        cascade.close()  # the answers kept in the row log become a Parquet shard

    app = FastAPI(title="mentor student", description="A distilled student, with the teacher as fallback.",
                  lifespan=lifespan)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        # the shape OpenAI clients parse; mentor's RemoteTeacher shows the message as is
        return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        return error(422, f"malformed request: {first.get('msg', 'invalid body')}" + (f" at {where}" if where else ""))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):  # never a crash, never a stack trace to the client
        return error(500, f"internal error ({type(exc).__name__}); the service is still running", "server_error")

    async def _json(request: Request) -> dict:
        try:
            body = await request.json()
        except Exception:  # noqa: BLE001 - any unparsable body
            raise BadRequest("the body is not JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the body must be a JSON object")
        return body

    def _run(ids: list[str], x: np.ndarray):
        try:
            return cascade.answer(ids, x)
        except TeacherUnavailable as e:
            return error(503, str(e), "teacher_unavailable")
        except MentorError as e:
            return error(400, str(e))

    @app.get("/health")
    def health():
        t = cascade.teacher
        return {"status": "ok", "model": model.name, "classes": model.classes, "input_kind": model.input_kind,
                "n_features": model.n_features, "cascade": t is not None, "threshold": cascade.threshold,
                "teacher": None if t is None else getattr(t, "fingerprint", type(t).__name__),
                "on_teacher_error": cascade.on_teacher_error, "counts": dict(cascade.counts),
                "answers_store": None if cascade.answers is None else str(cascade.answers.path),
                "teacher_spent": None if cascade.answers is None else cascade.answers.spent, **model.info}

    @app.post("/predict")
    async def predict(request: Request):
        try:
            body = await _json(request)
            if "inputs" not in body:
                raise BadRequest('send {"ids": [...], "inputs": [...]} ("ids" optional)')
            inputs = body["inputs"]
            if not isinstance(inputs, list):
                raise BadRequest("'inputs' must be a list")
            ids = body.get("ids")
            ids = [str(i) for i in range(len(inputs))] if ids is None else ids
            if not isinstance(ids, list) or len(ids) != len(inputs):
                raise BadRequest(f"'ids' must be a list as long as 'inputs' ({len(inputs)})")
            if len(inputs) > max_batch:
                raise BadRequest(f"at most {max_batch} inputs per request, got {len(inputs)}; split the batch")
            x = parse_inputs(inputs, model)
        except BadRequest as e:
            return error(400, f"bad request: {e}")
        from starlette.concurrency import run_in_threadpool
        return await run_in_threadpool(_run, [str(i) for i in ids], x)

    @app.get("/v1/models")
    def models():
        return {"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "mentor"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        if model.input_kind != "text":
            return error(400, "the chat endpoint serves text models; this one takes feature rows (use /predict)")
        try:
            body = await _json(request)
            text = last_user_text(body.get("messages"))
            if body.get("stream"):
                raise BadRequest("streaming is not supported; send \"stream\": false")
        except BadRequest as e:
            return error(400, f"bad request: {e}")
        from starlette.concurrency import run_in_threadpool
        res = await run_in_threadpool(_run, ["chat-" + uuid.uuid4().hex[:12]], np.asarray([text], dtype=object))
        if not isinstance(res, dict):
            return res  # an error response
        label = res["labels"][0]
        return {"id": "chatcmpl-" + uuid.uuid4().hex, "object": "chat.completion", "created": int(time.time()),
                "model": model.name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": label}, "finish_reason": "stop",
                             "logprobs": None}],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                "mentor": {"answered_by": res["answered_by"][0], "confidence": res["confidence"][0],
                           "probs": {model.label(i): p for i, p in enumerate(res["probs"][0])},
                           **({"fallback_error": res["fallback_error"]} if "fallback_error" in res else {})}}

    return app


def last_user_text(messages) -> str:
    """The text to classify: the content of the last user message (string, or text parts joined)."""
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty list of {\"role\", \"content\"}")
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            c = m.get("content")
            if isinstance(c, str):
                return c
            if isinstance(c, list):
                parts = [p.get("text", "") for p in c if isinstance(p, dict) and p.get("type") == "text"]
                if parts:
                    return "\n".join(parts)
            raise BadRequest("the last user message has no text content")
    raise BadRequest("no user message to classify")


class FolderPredictor:
    """A model folder's featurizer, then its torch module or its checked ONNX graph."""

    def __init__(self, folder, runtime: str = "torch"):
        from pathlib import Path

        from .students import export
        if runtime not in ("torch", "onnx"):
            raise ConfigError(f"--runtime must be torch or onnx, got {runtime!r}.")
        self.folder, self.runtime = Path(folder), runtime
        self.meta = export.read_record(self.folder)
        self.featurizer = export.load_featurizer(self.folder)
        self._probs = export.folder_probs(self.folder, self.meta, runtime)

    def predict_proba(self, inputs) -> np.ndarray:
        return self._probs(self.featurizer.transform(inputs))


def load_served_model(folder, runtime: str = "torch") -> ServedModel:
    """A model folder (`<output_dir>/model`, or `mentor export`'s) ready to serve."""
    pred = FolderPredictor(folder, runtime)
    meta = pred.meta
    inputs = (meta.get("data") or {}).get("inputs") or {}
    text = inputs.get("kind") == "text" or (meta.get("data") or {}).get("kind") == "text"
    names = meta.get("class_names")
    data_name = (meta.get("data") or {}).get("name") or "student"
    return ServedModel(pred, [str(c) for c in names] if names else None, "text" if text else "features",
                       None if text else inputs.get("n_features"), name=f"mentor-{data_name}",
                       info={"runtime": runtime, "method": meta.get("method"), "n_classes": meta.get("n_classes"),
                             "teacher_fingerprint": (meta.get("teacher") or {}).get("fingerprint")})


def cascade_from_run(model: ServedModel, run_dir, *, threshold: float | None = None,
                     on_teacher_error: str = "student", answers_store=None, keep_inputs: bool = True,
                     teacher_calls: int | None = None, retry_after_s: float = 30.0) -> Cascade:
    """The cascade for a served student: the teacher of the run in `run_dir` (built from its
    config.yaml, as `mentor run` built it) and the threshold `mentor cascade` chose there, unless
    `threshold` is given. A teacher for another task (other classes) is refused; a different
    teacher than the one the student learnt from is allowed with a warning. The teacher's answers
    are kept in the store at `answers_store` (default `run_dir/served-answers`). `teacher_calls`
    (parallel teacher calls) defaults to what the run labeled with: `distribute.engine: threads`
    gives workers × in_flight_per_worker, anything else 1."""
    import json
    import warnings
    from pathlib import Path

    from .pipeline import open_run
    from .pipeline import get_teacher
    run = Path(run_dir)
    ctx = open_run(run)
    if ctx.n_classes != model.info.get("n_classes"):
        raise ConfigError(f"the run in {run} has {ctx.n_classes} classes but the model folder has "
                          f"{model.info.get('n_classes')}: they are different tasks. Give the run the model came from.")
    names = [str(c) for c in ctx.data.class_names] if ctx.data.class_names else None
    if names != model.classes:
        raise ConfigError(f"the run in {run} names its classes {names} but the model folder {model.classes}; give the "
                          "run the model came from.")
    if threshold is None:
        file = run / "cascade.json"
        if not file.is_file():
            raise ConfigError(f"no threshold: {file} does not exist. Run `mentor cascade {run} --target ...` first "
                              "(it chooses one on V with a stated guarantee), or pass --threshold.")
        choice = json.loads(file.read_text())
        if not choice.get("met") or choice.get("threshold") is None:
            raise ConfigError(f"{file}: no threshold met its target ({choice.get('target')}); the student would answer "
                              "nothing with that guarantee. Run `mentor cascade` with a lower target, or pass "
                              "--threshold to choose one yourself.")
        threshold = float(choice["threshold"])
    teacher = get_teacher(ctx)
    if getattr(teacher, "kind", "") == "file":
        raise ConfigError(f"the teacher of {run} is a file of precomputed outputs: it cannot answer new requests, so "
                          "there is nothing to fall back to. Serve the student alone (drop --cascade), or give a run "
                          "whose teacher can be called (teacher.kind http, llm, or a model).")
    fp, want = getattr(teacher, "fingerprint", None), model.info.get("teacher_fingerprint")
    if want and fp and fp != want:
        warnings.warn(f"the teacher of {run} ({fp}) is not the one the student learnt from ({want}); the cascade "
                      "falls back to it anyway.", stacklevel=2)
    if teacher_calls is None:
        d = ctx.cfg.distribute
        teacher_calls = d.workers * d.in_flight_per_worker if d.engine == "threads" else 1
    return Cascade(model, teacher, threshold, on_teacher_error=on_teacher_error,
                   answers=open_answers_store(answers_store or run / "served-answers", teacher, ctx.n_classes),
                   keep_inputs=keep_inputs, teacher_calls=teacher_calls, retry_after_s=retry_after_s)


def open_answers_store(path, teacher, n_classes: int):
    """The store that keeps a cascade's paid teacher answers: opened if it exists (it must hold
    this teacher's), created otherwise."""
    from .store import TeacherStore
    fp = getattr(teacher, "fingerprint", None)
    if not isinstance(fp, str) or not fp:
        raise ConfigError("the cascade's teacher has no fingerprint, so its answers cannot be kept; give it one.")
    if TeacherStore.exists(path):
        store = TeacherStore.open(path)
        if store.fingerprint != fp:
            raise ConfigError(f"{path} keeps the answers of teacher {store.fingerprint!r}, not of this run's teacher "
                              f"{fp!r}; pass --answers-store with another folder (or delete that one).")
        return store
    return TeacherStore(path, fingerprint=fp, n_classes=int(n_classes))


def serve(cascade: Cascade, host: str = "127.0.0.1", port: int = 8000, *, log_level: str = "warning") -> None:
    """Run the app under uvicorn until interrupted."""
    import uvicorn
    uvicorn.run(create_app(cascade), host=host, port=port, log_level=log_level)
