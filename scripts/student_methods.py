"""Every registered distillation method trains a given student kind: a tiny digits run per method,
from one stored teacher labeling (not a benchmark: the accuracies after one epoch mean nothing).

    OMP_NUM_THREADS=1 .venv/bin/python scripts/student_methods.py [--student efficientnet-lite0] [--work-dir DIR]

Prints one line per method (ok, test accuracy, seconds); a method that fails raises. auto runs with
three candidates and no cross-fitting to keep it short.
"""

from __future__ import annotations

import argparse
import time
import warnings


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--student", default="efficientnet-lite0", help="an image or tabular student kind")
    p.add_argument("--work-dir", default="bench-out/student-methods")
    a = p.parse_args(argv)
    warnings.simplefilter("ignore")
    from mentor.config import parse_config
    from mentor.evaluate import accuracy
    from mentor.methods import METHODS
    from mentor.pipeline import RunContext, get_teacher, label, prepare, student_test_probs, train
    student = {"kind": a.student, **({"image_size": 40} if a.student == "efficientnet-lite0" else {})}
    base = {"data": {"name": "digits"}, "split": {"n_labeled": 40, "n_val": 60, "n_test": 40, "n_pool": 40},
            "teacher": {"kind": "logistic"}, "student": student,
            "train": {"epochs": 1, "min_steps": 0, "batch_size": 40}, "baseline": False, "output_dir": a.work_dir}
    ctx = prepare(parse_config(base), force=True)
    store = label(ctx, get_teacher(ctx))
    for m in sorted(METHODS):
        t = time.perf_counter()
        opts = {"auto_candidates": ["labeled-only", "vanilla-soft", "slam"], "auto_folds": 1} if m == "auto" else {}
        sctx = RunContext(parse_config({**base, "method": m, "method_options": opts}), ctx.data, ctx.splits, ctx.out)
        train(sctx, store, method=m, name=f"student-{m}")
        acc = accuracy(student_test_probs(sctx, f"student-{m}"), ctx.data.labels[ctx.splits.test])
        print(f"{m:22s} ok  test accuracy {acc:.2f}  {time.perf_counter() - t:.1f} s", flush=True)


if __name__ == "__main__":
    main()
