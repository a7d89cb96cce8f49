"""Validation loss of each GUIDE initialisation variant before any training (smoke suite's student).

    OMP_NUM_THREADS=1 python scripts/guide_init_losses.py
"""
import torch
from mentor.bench.guide import guide_suite
from mentor.lm.distill import parse_lm_config, prepare_lm, build_student, val_loss
torch.set_num_threads(1)
base = guide_suite("smoke")
variants = {"random": {"method": "random"}, "weight-selection": {"method": "weight-selection"},
            "guide": {"method": "guide"}, "guide-center": {"method": "guide", "center": True},
            "guide-2blocks": {"method": "guide", "n_blocks": 2}, "guide-4blocks": {"method": "guide", "n_blocks": 4},
            "guide-final-teacher": {"method": "guide", "final_norm": "teacher"},
            "guide-norescale": {"method": "guide", "rescale_norm": False}}
data = None
for name, init in variants.items():
    cfg = parse_lm_config({**base, "seed": 0, "output_dir": "bench-out/guide-init", "init": init,
                           "store": {"path": "bench-out/guide/smoke/teacher-store"}})
    data = data or prepare_lm(cfg)
    student, info = build_student(cfg, data)
    print(f"{name:22s} init val loss {val_loss(student, data.val_rows):.3f}", flush=True)
