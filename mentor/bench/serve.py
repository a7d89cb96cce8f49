"""Load test for `mentor serve`: throughput and latency percentiles under bounded concurrency."""

from __future__ import annotations

import asyncio
import time

import numpy as np

from ..errors import ConfigError
from .quality import random_rows


def load_test(url: str, bodies: list[dict], *, concurrency: int = 8, n_requests: int = 500,
              timeout_s: float = 60.0, warmup: int = 10) -> dict:
    """POST `bodies` (cycled) to `url`, at most `concurrency` requests in flight, `n_requests` in all
    after `warmup` unmeasured ones. Returns requests/s, latency percentiles in ms, and the count of
    answers that were not 200 (each counted, never hidden in the averages)."""
    import httpx

    async def main():
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        async with httpx.AsyncClient(timeout=timeout_s, limits=limits) as client:
            for i in range(warmup):
                await client.post(url, json=bodies[i % len(bodies)])
            sem = asyncio.Semaphore(concurrency)
            latencies: list[float] = []
            statuses: dict[int, int] = {}

            async def one(i: int):
                async with sem:
                    t0 = time.perf_counter()
                    try:
                        r = await client.post(url, json=bodies[i % len(bodies)])
                        code = r.status_code
                    except httpx.HTTPError:
                        code = 0  # no answer at all
                    latencies.append(time.perf_counter() - t0)
                    statuses[code] = statuses.get(code, 0) + 1

            t0 = time.perf_counter()
            await asyncio.gather(*(one(i) for i in range(n_requests)))
            return time.perf_counter() - t0, latencies, statuses

    wall, lat, statuses = asyncio.run(main())
    ms = np.array(lat) * 1000
    return {"requests": n_requests, "concurrency": concurrency, "seconds": wall, "requests_per_s": n_requests / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p95_ms": float(np.percentile(ms, 95)),
            "p99_ms": float(np.percentile(ms, 99)), "errors": n_requests - statuses.get(200, 0),
            "statuses": {str(k): v for k, v in sorted(statuses.items())}}


def _start(args: list[str], port: int, timeout_s: float = 180.0):
    """`mentor serve ...` as a subprocess on 127.0.0.1:port, once it answers /health."""
    import subprocess
    import sys

    import httpx
    proc = subprocess.Popen([sys.executable, "-m", "mentor.cli", "serve", *args, "--port", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:  # its own clear error (exit 2) is the user's to fix: pass it on as one
            err = proc.stderr.read().strip()[-1500:]
            raise ConfigError(f"`mentor serve {' '.join(args)}` did not start (exit {proc.returncode}): "
                              f"{err.removeprefix('error: ')}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mentor serve {' '.join(args)} did not answer within {timeout_s:.0f} s")
        time.sleep(0.2)


ARMS = ("torch", "onnx", "cascade")


def bench_serve(run_dir, *, n_requests: int = 500, concurrency: int = 8, batch: int = 1, n_inputs: int = 200,
                arms=ARMS, log=print) -> list[dict]:
    """Requests/s and latency percentiles of `mentor serve` on a finished run's model folder: the
    student with torch, with ONNX, and the cascade (the run's teacher and cascade.json threshold).
    Requests carry `batch` test-split inputs each (cycled over `n_inputs` of them)."""
    from pathlib import Path

    import httpx

    from ..pipeline import open_run
    from ..teachers.llm.llamacpp import free_port
    run = Path(run_dir)
    ctx = open_run(run)
    rows = random_rows(ctx.splits.test, n_inputs, ctx.cfg.seed)
    x = ctx.data.features[rows]
    inputs = [str(v) for v in x] if ctx.data.kind == "text" else np.asarray(x, dtype=np.float64).tolist()
    bodies = [{"inputs": inputs[i:i + batch]} for i in range(0, len(inputs) - batch + 1, batch)]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise ConfigError(f"unknown arms {unknown}; choose from {', '.join(ARMS)}.")
    every = {"torch": ("student (torch)", [str(run / "model")]),
             "onnx": ("student (onnx)", [str(run / "model"), "--runtime", "onnx"]),
             "cascade": ("cascade (torch + teacher)", [str(run / "model"), "--cascade", str(run)])}
    out = []
    for name, args in (every[a] for a in ARMS if a in arms):
        port = free_port()
        proc = _start(args, port)
        try:
            res = load_test(f"http://127.0.0.1:{port}/predict", bodies, concurrency=concurrency, n_requests=n_requests)
            counts = httpx.get(f"http://127.0.0.1:{port}/health").json()["counts"]
        finally:
            proc.terminate()
            proc.wait(30)
        row = {"arm": name, "batch": batch, "dataset": ctx.data.name, "distinct_inputs": len(bodies) * batch, **res,
               "teacher_share": counts["teacher"] / max(counts["examples"], 1),
               "teacher_paid": counts.get("teacher_paid"), "teacher_from_store": counts.get("teacher_from_store")}
        out.append(row)
        log(f"{name:28s} {row['requests_per_s']:8.1f} req/s   p50 {row['p50_ms']:7.2f} ms   p95 {row['p95_ms']:7.2f} ms"
            f"   p99 {row['p99_ms']:7.2f} ms   errors {row['errors']}   teacher share {row['teacher_share']:.2f}")
    return out
