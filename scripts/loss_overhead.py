"""Microseconds per training step spent in each pool objective alone (forward + backward of the loss
on a batch of student logits), to separate a correction's own cost from the student's.

    python scripts/loss_overhead.py
"""
import time

import numpy as np
import torch

from mentor.methods import MethodContext, plan_method

torch.manual_seed(0)
n, c, batch, reps = 20000, 10, 128, 3000
probs = torch.softmax(torch.randn(n, c) * 2, -1).numpy()
labels = probs.argmax(1)
ctx = MethodContext(n_classes=c, teacher_probs_pool=probs, teacher_probs_val=probs[:1000], val_labels=labels[:1000])
idx = torch.randint(0, n, (batch,))
t = torch.as_tensor(probs)[idx]
for name in ["vanilla-soft", "vanilla-hard", "weighted-margin", "forward-correction", "slam", "slam-hard",
             "slam-normalized"]:
    obj = plan_method(name, ctx).objective
    times = []
    for _ in range(5):
        z = torch.randn(batch, c, requires_grad=True)
        t0 = time.perf_counter()
        for _ in range(reps):
            obj.pool_loss(z, t, idx).sum().backward()
        times.append((time.perf_counter() - t0) / reps * 1e6)
    print(f"{name:20s} {np.median(times):7.1f} µs per step (loss forward + backward, batch {batch}, {c} classes)")
