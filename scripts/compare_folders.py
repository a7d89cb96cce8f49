"""Do two trainings of the same student give the same answers? Test-split predictions of the model
folders of two run directories (e.g. float32 against `train.amp_on_cpu`), compared per seed.

    .venv/bin/python scripts/compare_folders.py RUN_A RUN_B --models NAME [NAME ...] [--json OUT]

RUN_A and RUN_B are run directories with the same data and split (a `mentor bench students` seed
folder, or an output_dir); each NAME is a folder under RUN/models. Prints, per name, how often the
predicted labels agree and the largest and mean |p_a − p_b| over the test split, and each side's
test accuracy.
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_a")
    p.add_argument("run_b")
    p.add_argument("--models", nargs="+", required=True)
    p.add_argument("--json", help="append one row per model (JSON lines)")
    a = p.parse_args(argv)
    from mentor.evaluate import accuracy
    from mentor.pipeline import open_run
    from mentor.serve import FolderPredictor
    ra, rb = open_run(a.run_a), open_run(a.run_b)
    if not np.array_equal(ra.splits.test, rb.splits.test):
        raise SystemExit("error: the two runs have different test splits; compare runs of the same data and seed.")
    x, y = ra.data.features[ra.splits.test], ra.data.labels[ra.splits.test]
    for name in a.models:
        pa = FolderPredictor(f"{a.run_a}/models/{name}").predict_proba(x)
        pb = FolderPredictor(f"{a.run_b}/models/{name}").predict_proba(x)
        row = {"model": name, "run_a": a.run_a, "run_b": a.run_b, "n_test": int(len(y)),
               "label_agreement": float((pa.argmax(1) == pb.argmax(1)).mean()),
               "max_abs_diff": float(np.abs(pa - pb).max()), "mean_abs_diff": float(np.abs(pa - pb).mean()),
               "accuracy_a": accuracy(pa, y), "accuracy_b": accuracy(pb, y)}
        print(f"{name}: labels agree on {row['label_agreement']:.2%} of {len(y)}, max |dp| {row['max_abs_diff']:.4f}, "
              f"mean |dp| {row['mean_abs_diff']:.5f}, accuracy {row['accuracy_a']:.4f} vs {row['accuracy_b']:.4f}",
              flush=True)
        if a.json:
            with open(a.json, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
