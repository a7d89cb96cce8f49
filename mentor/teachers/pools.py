"""Many teacher calls at once: threads on this machine, or Ray workers across a cluster.

Labeling the pool is where distillation spends its time and money. A *teacher pool* holds copies
of one teacher and runs calls concurrently; `TeacherStore.label(teacher, batches, pool=...)`
hands it one batch per call and stores each answer as soon as it returns, so the store keeps its
guarantees (one writer, nothing paid twice, a failure loses only the calls in flight).

- `ThreadTeacherPool`: threads in this process. For teachers that wait rather than compute
  (an HTTP endpoint, an LLM API), where calls overlap for free.
- `RayTeacherPool`: Ray actors, each with its own copy of the teacher and its own CPUs or GPU,
  on this machine or on every node of a Ray cluster (`address="auto"` from a cluster node).
  mentor must be importable on every node (install it there, or pass a Ray `runtime_env`).

A pool only needs `teacher`, `max_in_flight` and `submit(inputs, ids) -> Future`; anything with
those works with the store. The future's result is the teacher's full answer (`Teacher.answer`:
probabilities, extras, real cost), or bare probabilities for a teacher that only has
`predict_proba` (users' own classes).
"""

from __future__ import annotations

import collections
import concurrent.futures
import functools
import re
import threading
from typing import Any

from ..errors import ConfigError, TeacherOutputError


def ask(teacher, inputs, ids):
    """One call: `teacher.answer(inputs, ids)` where the teacher has it, else `predict_proba`."""
    answer = getattr(teacher, "answer", None)
    return answer(inputs, ids) if callable(answer) else teacher.predict_proba(inputs, ids)


class TeacherWorkerError(TeacherOutputError):
    """A teacher call failed on a pool worker (the worker's error is in the message)."""


class _Pool:
    """What pools share: `with pool:` closes it."""

    def close(self) -> None:  # pragma: no cover - overridden
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ThreadTeacherPool(_Pool):
    """`workers` threads sharing one teacher; calls must be thread-safe (HTTP teachers are)."""

    engine = "threads"
    runs_before_hook = True  # submit(..., before=f) runs f in the worker thread as the call starts

    def __init__(self, teacher, workers: int = 4, *, in_flight_per_worker: int = 2):
        _check_counts(workers, in_flight_per_worker)
        self.teacher, self.workers = teacher, int(workers)
        self.max_in_flight = self.workers * int(in_flight_per_worker)
        self._executor = concurrent.futures.ThreadPoolExecutor(self.workers, thread_name_prefix="mentor-teacher")

    def submit(self, inputs, ids, before=None) -> concurrent.futures.Future:
        """Queue one call; `before()` runs in the worker thread right before it (the store uses it
        to put the call on its bill only when it is really sent, not while it waits in the queue)."""
        if before is None:
            return self._executor.submit(ask, self.teacher, inputs, ids)

        def call():
            before()
            return ask(self.teacher, inputs, ids)
        return self._executor.submit(call)

    def describe(self) -> dict:
        return {"engine": self.engine, "workers": self.workers}

    def close(self) -> None:
        self._executor.shutdown(wait=True)


class RayTeacherPool(_Pool):
    """`workers` Ray actors, each holding a copy of `teacher`, placed wherever the cluster has
    `cpus_per_worker` CPUs (and `gpus_per_worker` GPUs) free. Calls wait here until a worker is
    idle, then go to it. Starts Ray on this machine unless Ray is running or `address` is given."""

    engine = "ray"
    runs_before_hook = True  # submit(..., before=f) runs f here as the call goes to an idle worker

    def __init__(self, teacher, workers: int = 2, *, address: str | None = None, cpus_per_worker: float = 1.0,
                 gpus_per_worker: float = 0.0, in_flight_per_worker: int = 2, runtime_env: dict | None = None,
                 start_timeout_s: float = 300.0):
        _check_counts(workers, in_flight_per_worker)
        if cpus_per_worker <= 0 or gpus_per_worker < 0:
            raise ConfigError(f"ray workers need cpus_per_worker > 0 and gpus_per_worker >= 0, got "
                              f"{cpus_per_worker} and {gpus_per_worker}.")
        try:
            import ray
        except ImportError:
            raise ConfigError("the Ray teacher pool needs Ray: pip install 'ray>=2.9' (or the mentor extra "
                              "'distributed'), or use the threads engine.") from None
        self._ray, self.teacher, self.workers = ray, teacher, int(workers)
        self.max_in_flight = self.workers * int(in_flight_per_worker)
        if not ray.is_initialized():
            ray.init(address=address, runtime_env=runtime_env, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        have = ray.cluster_resources()
        need = {"CPU": self.workers * cpus_per_worker, "GPU": self.workers * gpus_per_worker}
        short = {k: (v, have.get(k, 0.0)) for k, v in need.items() if v > have.get(k, 0.0)}
        if short:
            raise ConfigError(
                "the Ray cluster is too small for the pool: " + ", ".join(
                    f"{k} needed {v:g}, cluster has {h:g}" for k, (v, h) in short.items())
                + ". Use fewer workers, fewer cpus_per_worker/gpus_per_worker, or a larger cluster.")
        actor = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_TeacherActor)
        shared = ray.put(teacher)  # sent once to the object store, not once per actor
        self._actors = [actor.remote(shared) for _ in range(self.workers)]
        self._busy, self._lock = [False] * self.workers, threading.Lock()  # callbacks run on Ray's thread
        self._waiting: collections.deque = collections.deque()
        try:  # also waits for the actors to start
            self.where = ray.get([a.where.remote() for a in self._actors], timeout=start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            self.close()
            raise ConfigError(f"the {self.workers} Ray workers did not start within {start_timeout_s:g} s: the "
                              "cluster's CPUs/GPUs may be taken by other jobs (`ray status` shows them).") from None
        except ray.exceptions.RayError as e:
            self.close()
            detail = " ".join(re.sub(r"\x1b\[[0-9;]*m", "", str(e)).split())[:300]  # no colour codes
            raise ConfigError(f"the Ray workers could not start ({type(e).__name__}: {detail}); is mentor "
                              "installed on every node (or passed in runtime_env)?") from None

    def submit(self, inputs, ids, before=None) -> concurrent.futures.Future:
        """Queue one call. It goes to a Ray worker only when one is idle (an actor runs one call at a
        time, so a call sent earlier would only wait there), and `before()` runs right then on this
        machine: the store bills a call when it starts, not while it waits behind another."""
        out: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._waiting.append((out, inputs, ids, before))
        self._dispatch()
        return out

    def _dispatch(self) -> None:
        """Start waiting calls on idle workers (called on submit and whenever a call ends)."""
        while True:
            with self._lock:
                idle = [k for k in range(self.workers) if not self._busy[k]]
                if not idle or not self._waiting:
                    return
                k = idle[0]
                out, inputs, ids, before = self._waiting.popleft()
                self._busy[k] = True
            try:
                if before is not None:
                    before()
                ref = self._actors[k].answer.remote(inputs, ids)
            except BaseException as e:  # nothing went out: free the worker, fail this call only
                with self._lock:
                    self._busy[k] = False
                out.set_exception(e)
                continue
            ref.future().add_done_callback(functools.partial(self._finished, k, out))

    def _finished(self, k: int, out: concurrent.futures.Future, f) -> None:
        """Ray's callback: hand the answer (or the worker's error) over, then start the next call."""
        with self._lock:
            self._busy[k] = False
        try:
            out.set_result(f.result())
        except Exception as e:  # Ray wraps the worker's error; name the worker and the cause
            cause = getattr(e, "cause", None) or e
            out.set_exception(TeacherWorkerError(
                f"teacher call on Ray worker {k} ({self.where[k]['node']}, pid {self.where[k]['pid']}) "
                f"failed: {type(cause).__name__}: {cause}. Calls that returned are stored; "
                "rerun to label the rest."))
        self._dispatch()

    def describe(self) -> dict:
        return {"engine": self.engine, "workers": self.workers,
                "nodes": sorted({w["node"] for w in self.where})}

    def close(self) -> None:
        with self._lock:  # calls still waiting were never sent (nor billed): say so instead of hanging
            waiting, self._waiting = list(self._waiting), collections.deque()
        for out, *_ in waiting:
            out.set_exception(TeacherWorkerError("the Ray pool was closed before this call was sent; "
                                                 "nothing was paid for it. Rerun to label the rest."))
        for a in self._actors:
            self._ray.kill(a)
        self._actors = []


class _TeacherActor:
    """Body of a Ray worker: one copy of the teacher."""

    def __init__(self, teacher):
        self.teacher = teacher

    def answer(self, inputs, ids):
        return ask(self.teacher, inputs, ids)

    def where(self) -> dict[str, Any]:
        import os
        import socket
        return {"node": socket.gethostname(), "pid": os.getpid()}


def _check_counts(workers, in_flight_per_worker) -> None:
    if int(workers) < 1 or int(in_flight_per_worker) < 1:
        raise ConfigError(f"a teacher pool needs workers >= 1 and in_flight_per_worker >= 1, got {workers} "
                          f"and {in_flight_per_worker}.")


def make_pool(cfg, teacher):
    """The pool a run config's `distribute` section asks for, or None (one call at a time)."""
    if cfg.engine == "none":
        return None
    if getattr(teacher, "kind", "") == "file":
        raise ConfigError("distribute.engine is set, but the teacher is a file of precomputed outputs: there is "
                          "nothing to compute. Set distribute.engine: none.")
    if cfg.engine == "threads":
        return ThreadTeacherPool(teacher, cfg.workers, in_flight_per_worker=cfg.in_flight_per_worker)
    return RayTeacherPool(teacher, cfg.workers, address=cfg.address, cpus_per_worker=cfg.cpus_per_worker,
                          gpus_per_worker=cfg.gpus_per_worker, in_flight_per_worker=cfg.in_flight_per_worker)
