"""Milliseconds per step of the token-level losses alone (forward + backward on a batch of student
logits over SmolLM2's 49,152-token vocabulary), measured in one run, interleaved:
next-token CE; CE + forward KL to a top-32 teacher (tail bucket) as mentor computes it; the same
with the generic tail (`logsumexp(z.scatter(idx, -inf))`) it replaced; CE + KL with `renorm`.

    python scripts/lm_loss_cost.py [--rows 8] [--seq 63] [--threads 1]
"""
import argparse
import time

import numpy as np
import torch

from mentor.lm.losses import TopK, _kl, forward_kl, next_token_ce

ap = argparse.ArgumentParser()
ap.add_argument("--rows", type=int, default=8)
ap.add_argument("--seq", type=int, default=63)
ap.add_argument("--threads", type=int, default=1)
ap.add_argument("--rounds", type=int, default=5)
a = ap.parse_args()
torch.set_num_threads(a.threads)
V, k = 49152, 32
g = torch.Generator().manual_seed(0)
z = torch.randn(a.rows, a.seq, V, generator=g).requires_grad_()
y = torch.randint(0, V, (a.rows, a.seq), generator=g)
val, idx = torch.log_softmax(torch.randn(a.rows, a.seq, V, generator=g) * 3, -1).topk(k, -1)
teacher = TopK(idx, val)


def generic_bucket_kl():
    """The bucket KL with the tail log-sum-exp written the generic way (full scatter copy)."""
    lse = torch.logsumexp(z, -1, keepdim=True)
    s = torch.cat([z.gather(-1, idx) - lse,
                   torch.logsumexp(z.scatter(-1, idx, float("-inf")), -1, keepdim=True) - lse], -1)
    t_tail = torch.log((1 - val.exp().sum(-1, keepdim=True)).clamp_min(1e-10))
    return _kl(torch.cat([val, t_tail], -1), s).mean()


steps = {
    "ce": lambda: next_token_ce(z, y),
    "ce + kd (bucket, mentor)": lambda: next_token_ce(z, y) + forward_kl(z, teacher),
    "ce + kd (bucket, generic tail)": lambda: next_token_ce(z, y) + generic_bucket_kl(),
    "ce + kd (renorm)": lambda: next_token_ce(z, y) + forward_kl(z, teacher, tail="renorm"),
}
assert torch.allclose(forward_kl(z, teacher), generic_bucket_kl(), rtol=1e-4)  # same loss
times = {name: [] for name in steps}
for _ in range(a.rounds):
    for name, f in steps.items():
        z.grad = None
        t0 = time.perf_counter()
        f().backward()
        times[name].append(time.perf_counter() - t0)
ce = np.median(times["ce"])
for name, ts in times.items():
    m = np.median(ts)
    print(f"{name:32s} {1e3 * m:8.1f} ms  ({m / ce:.2f}× ce)")
print(f"shape {a.rows}×{a.seq}×{V}, top-{k}, {a.threads} thread(s), median of {a.rounds} interleaved rounds")
