"""Is `train.amp_on_cpu` worth it on this CPU? One training step (forward, backward, Adam) of each
shippable student in float32 and under bfloat16 autocast, interleaved, in one process.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/amp_speed.py [--rounds 3] [--json OUT]

Prints the median seconds per step and the ratio bf16 / fp32 (below 1: autocast is faster), how far
autocast moves one batch's logits from float32's, and whether torch sees native bfloat16 (AMX or
AVX512-BF16) on this CPU. Students: the fine-tuned MiniLM (batch 32, 128 tokens, fortunes),
EfficientNet-Lite0 (batch 64, 48 px, Fashion-MNIST) and the MLP [256, 256] (batch 128,
Fashion-MNIST), each with its pretrained weights where it has them.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def _students():
    import numpy as np
    import torch

    from mentor.data import load_fashion_mnist, load_fortunes
    from mentor.students import hf
    from mentor.students.efficientnet import build_efficientnet_student
    from mentor.students.models import MLP
    path = hf.default_encoder_path()
    text = load_fortunes()
    ids = torch.as_tensor(hf.encode(hf.load_tokenizer(path), list(text.features[:32]), 128))
    n_text = int(text.labels.max()) + 1
    yield ("transformer (MiniLM, 32 x 128 tokens)",
           lambda: hf.build_transformer_student(path, n_text, max_length=128), ids, torch.as_tensor(text.labels[:32]))
    fashion = load_fashion_mnist()
    x = torch.as_tensor(np.asarray(fashion.features[:128], dtype=np.float32))
    y = torch.as_tensor(fashion.labels[:128])
    yield ("efficientnet-lite0 (64 images, 48 px)",
           lambda: build_efficientnet_student(10, (1, 28, 28), image_size=48), x[:64], y[:64])
    yield "mlp [256, 256] (128 images)", lambda: MLP(784, 10, (256, 256)), x, y


def _logit_drift(model, x) -> dict:
    """How far bfloat16 autocast moves the logits of one batch from float32's (relative L2), with the
    same weights and dropout masks, in training mode (BatchNorm on the batch's statistics) and eval."""
    import torch
    out = {}
    state = {k: v.clone() for k, v in model.state_dict().items()}  # training mode updates BatchNorm's stats
    for mode in ("train", "eval"):
        model.train(mode == "train")
        logits = {}
        for amp in (False, True):
            torch.manual_seed(0)
            with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                logits[amp] = model(x).float()
        out[f"logit_drift_{mode}"] = round(float((logits[True] - logits[False]).norm() / logits[False].norm()), 4)
    model.load_state_dict(state)
    model.train()
    return out


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", help="append one row per student (JSON lines)")
    a = p.parse_args(argv)
    import torch
    import torch.nn.functional as F

    from mentor.students.train import cpu_has_native_bfloat16
    native = cpu_has_native_bfloat16()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, native bfloat16: {native}")
    for name, build, x, y in _students():
        torch.manual_seed(0)
        model = build().train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-5)

        def step(amp: bool) -> float:
            t = time.perf_counter()
            opt.zero_grad()
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            return time.perf_counter() - t

        step(False), step(True)  # warm up both paths (oneDNN kernels are built on first use)
        drift = _logit_drift(model, x)
        times = {False: [], True: []}
        for _ in range(a.rounds):
            for amp in (False, True):
                times[amp].append(step(amp))
        fp32, bf16 = statistics.median(times[False]), statistics.median(times[True])
        row = {"student": name, "fp32_s_per_step": round(fp32, 4), "bf16_s_per_step": round(bf16, 4),
               "ratio_bf16_over_fp32": round(bf16 / fp32, 3), **drift, "rounds": a.rounds,
               "threads": torch.get_num_threads(),
               "native_bfloat16": native, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               "machine": platform.processor() or platform.machine(), "torch": torch.__version__}
        print(f"{name:40s} fp32 {fp32:.3f} s/step   bf16 autocast {bf16:.3f} s/step   bf16/fp32 {bf16 / fp32:.2f}   "
              f"logits |bf16 - fp32| / |fp32|: training mode {drift['logit_drift_train']:.3f}, "
              f"eval mode {drift['logit_drift_eval']:.3f}", flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
