"""A teacher worse than the labeled-only student (issue 14): digits as in the smoke suite, but the
MLP teacher stops after `--teacher-steps` optimiser steps on A. Does `auto` choose not to distil?

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python scripts/bench_weak_teacher.py --seeds 3 --json rows.jsonl
"""

import argparse
from pathlib import Path

from mentor.bench import quality, report

ap = argparse.ArgumentParser()
ap.add_argument("--seeds", type=int, default=3)
ap.add_argument("--first-seed", type=int, default=0, help="seeds first_seed .. first_seed + seeds - 1 (rows appended)")
ap.add_argument("--teacher-steps", type=int, default=30)
ap.add_argument("--json", type=Path)
ap.add_argument("--work-dir", type=Path, default=Path("bench-out"))
a = ap.parse_args()
configs = {"digits-weak-teacher": {
    "data": {"name": "digits"}, "split": {"n_labeled": 100, "n_val": 300, "n_test": 400},
    "teacher": {"kind": "mlp", "epochs": 1, "min_steps": a.teacher_steps}, "student": {"kind": "logistic"},
    "train": {"epochs": 30}}}
rows = quality("custom", seeds=a.seeds, first_seed=a.first_seed, methods=["teacher", "labeled-only", "vanilla-soft", "auto"], configs=configs,
               json_out=a.json, work_dir=a.work_dir)
print(report(rows))
