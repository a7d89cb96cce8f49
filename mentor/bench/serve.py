"""Load test for `mentor serve`: throughput and latency percentiles under bounded concurrency."""

from __future__ import annotations

import asyncio
import time

import numpy as np


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
