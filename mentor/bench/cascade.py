"""`mentor bench cascade`: how much traffic a student can answer at a stated guarantee.

For each data set and seed: one split, teacher and store; a student trained with `auto` (robust,
chosen on V) and one with `vanilla-hard` (what a labeling tool gives: the teacher's argmax as
labels); for targets of 90/95/99% of the teacher's accuracy on V, the threshold chosen on V and
what it gives on test. The claim tested: a better-calibrated, robustly trained student covers
more traffic at the same guarantee.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

from ..config import parse_config
from ..errors import ConfigError
from .quality import _append_row, _mean_std, each_run, select_datasets, suite_configs

STUDENTS = ("auto", "vanilla-hard")
TARGETS = (0.90, 0.95, 0.99)


def cascade_suite(suite: str, work_dir: Path = Path("bench-out/cascade")) -> dict[str, dict]:
    """smoke: digits and synthetic-margin (minutes); standard: the quality suite's image
    (Fashion-MNIST) and text (fortunes) entries at both teacher strengths; llm: SmolLM2 (local,
    zero-shot label likelihood) teaching TF-IDF students on `bench llm --suite standard`'s data
    and splits, one store per data set in `work_dir`/stores (copy `bench llm`'s there to pay nothing)."""
    if suite == "llm":
        from .llm import llm_suite, student_config
        spec = llm_suite("standard")
        return {name: student_config(spec, name, Path(work_dir) / "stores" / name) for name in spec["data"]}
    configs = suite_configs(suite)
    if suite == "smoke":
        return {k: configs[k] for k in ("digits", "synthetic-margin")}
    return {k: v for k, v in configs.items() if k.split("/")[0] in ("fashion-mnist", "fortunes")}


def bench_cascade(suite: str = "smoke", *, seeds: int = 3, datasets: list[str] | None = None,
                  students: tuple[str, ...] = STUDENTS, targets: tuple[float, ...] = TARGETS, delta: float = 0.05,
                  bound: str = "clopper-pearson", absolute: bool = False, reuse_students: bool = False,
                  json_out: Path | None = None, work_dir: Path = Path("bench-out/cascade"),
                  log: Callable = print, configs: dict[str, dict] | None = None) -> list[dict]:
    """One row per (dataset, seed, student method, target). `targets` are shares of the teacher's
    accuracy on V, or accuracies with `absolute`. `reuse_students`: a student already saved in the
    run folder by an earlier run on the same store is scored again, not retrained (to add targets).
    `configs` replaces the suite's templates (name -> partial RunConfig dict)."""
    from ..cascade import check_options
    from ..evaluate import expected_calibration_error
    from ..pipeline import get_teacher, label, prepare, student_probs, teacher_outputs, train
    check_options(delta=delta, bound=bound)
    for t in targets:
        if not (0 < t < 1 if absolute else 0 < t <= 1.5):
            raise ConfigError(f"targets are {'accuracies in (0, 1)' if absolute else 'shares of the teacher’s accuracy on V'}"
                              f", e.g. 0.95; got {t}.")
    configs = configs or cascade_suite(suite, work_dir)
    names = select_datasets(configs, datasets, suite)
    rows = []
    for name, seed, template in each_run(configs, names, seeds, work_dir, json_out):
        cfg = parse_config({**template, "seed": seed, "output_dir": str(Path(work_dir) / suite / name / f"seed-{seed}")})
        ctx = prepare(cfg, force=True)  # benchmark folders are scratch
        store = label(ctx, get_teacher(ctx))
        sp, data = ctx.splits, ctx.data
        t_val, t_test = teacher_outputs(store, data.ids[sp.val]), teacher_outputs(store, data.ids[sp.test])
        y_val, y_test = data.labels[sp.val], data.labels[sp.test]
        teacher_val = float((t_val.argmax(1) == y_val).mean())
        price = float(ctx.cfg.teacher.cost_per_example or 0.0)
        for method in students:
            t0 = time.perf_counter()
            info = _saved_student(ctx, method, store.fingerprint) if reuse_students else None
            info = info or train(ctx, store, method=method, name=method)
            s_val, s_test = student_probs(ctx, method, sp.val), student_probs(ctx, method, sp.test)
            base = {"bench": "cascade", "dataset": name, "seed": seed, "suite": suite, "student_method": method,
                    "chosen": info.get("auto", {}).get("chosen"), "delta": delta, "bound": bound,
                    "n_val": len(sp.val), "n_test": len(sp.test), "teacher_val_accuracy": teacher_val,
                    "student_val_accuracy": float((s_val.argmax(1) == y_val).mean()),
                    "student_test_accuracy": float((s_test.argmax(1) == y_test).mean()),
                    "student_test_ece": expected_calibration_error(s_test, y_test),
                    "train_seconds": time.perf_counter() - t0}
            rows += _target_rows(base, s_val, y_val, s_test, t_test, y_test, targets, 1.0 if absolute else teacher_val,
                                 price, delta, bound, json_out, log)
    return rows


def _upper(report: dict, delta: float) -> float | None:
    """Clopper–Pearson upper bound (1 − delta) of the answered accuracy on test: a target above it is
    missed beyond test noise; below it, a miss may be the test sample's own fluctuation."""
    from ..cascade import clopper_pearson_lower
    m = report["teacher_calls_saved"]
    if not m or report["answered_accuracy"] is None:
        return None
    wrong = m - round(report["answered_accuracy"] * m)
    return 1.0 - clopper_pearson_lower(wrong, m, delta)


def _saved_student(ctx, method: str, fingerprint: str) -> dict | None:
    """The info of `<method>.pt` in the run folder when it was distilled from this store's teacher."""
    from ..pipeline import load_student
    if not (ctx.out / f"{method}.pt").exists():
        return None
    info = load_student(ctx, method)[2]
    return info if info.get("teacher_fingerprint") == fingerprint and info.get("method") == method else None


def _target_rows(base, s_val, y_val, s_test, t_test, y_test, targets, scale, price, delta, bound, json_out,
                 log) -> list[dict]:
    """One row per target share: the threshold chosen on V and the cascade on test."""
    from ..cascade import cascade_report, choose_threshold
    rows = []
    kind = "accuracy" if scale == 1.0 else "of-teacher"
    for share in targets:
        goal = share * scale
        if goal >= 1:
            continue  # 100% or more: no finite V can show it
        c = choose_threshold(s_val.max(1), s_val.argmax(1) == y_val, goal, delta=delta, bound=bound)
        r = cascade_report(s_test, t_test, y_test, c.threshold, price, target=goal)
        row = {**base, "target": share, "target_kind": kind, "target_accuracy": goal, "met": c.met,
               "threshold": c.threshold, "test_upper_bound": _upper(r, delta),
               "val_coverage": c.coverage, "val_lower_bound": c.lower_bound,
               "best_val_lower_bound": c.best_lower_bound,
               **{k: r[k] for k in ("coverage", "answered_accuracy", "cascade_accuracy",
                                    "teacher_accuracy", "bound_held", "teacher_calls",
                                    "teacher_calls_saved", "cost_saved")}}
        rows.append(row)
        _append_row(json_out, row)
        log(f"{base['dataset']} seed={base['seed']} {base['student_method']:13s} target "
            + (f"{share:.2f}x teacher ({goal:.3f}): " if kind == "of-teacher" else f"accuracy {goal:.3f}: ") + (f"threshold {c.threshold:.4g}, coverage {r['coverage']:.3f}, answered accuracy "
                                 f"{r['answered_accuracy']:.4f}, held {r['bound_held']}" if c.met and r["coverage"]
                                 else "not met (all to the teacher)" if not c.met else "answers nothing on test"))
    return rows


def _label(row: dict) -> str:
    """How a row's target is shown and grouped: a share of the teacher's V accuracy, or an accuracy."""
    return f"{row['target']:.2f}" + (" acc." if row.get("target_kind") == "accuracy" else "× teacher")


def summarize_cascade(rows: list[dict]) -> str:
    """Markdown: coverage on test and how often the bound held, mean ± std over seeds, per data set,
    target and student; then auto − vanilla-hard coverage paired by seed (same split and teacher)."""
    if not rows:
        return "(no cascade rows)"
    keys = list(dict.fromkeys((r["dataset"], _label(r), r["student_method"]) for r in rows))
    out = ["| dataset | target (× teacher's V acc., or acc.) | student | met (seeds) | coverage (%) | "
           "answered acc. (%) | cascade acc. (%) | teacher acc. (%) | bound held on test | student ECE |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for d, t, m in keys:
        rs = [r for r in rows if (r["dataset"], _label(r), r["student_method"]) == (d, t, m)]
        met = [r for r in rs if r["met"]]
        held = [r["bound_held"] for r in met if r["bound_held"] is not None]
        clear = sum(1 for r in met if (r.get("test_upper_bound") or 1.0) < r["target_accuracy"])
        ans = [100 * r["answered_accuracy"] for r in met if r["answered_accuracy"] is not None]
        out.append(f"| {d} | {t} | {m} | {len(met)}/{len(rs)} | {_mean_std([100 * r['coverage'] for r in rs])} | "
                   f"{_mean_std(ans) if ans else '–'} | {_mean_std([100 * r['cascade_accuracy'] for r in rs])} | "
                   f"{_mean_std([100 * r['teacher_accuracy'] for r in rs])} | {sum(held)}/{len(held)} ({clear}) | "
                   f"{_mean_std([r['student_test_ece'] for r in rs])} |")
    methods = list(dict.fromkeys(r["student_method"] for r in rows))
    text = "Cascade on test (threshold chosen on V), mean ± std over seeds:\n\n" + "\n".join(out)
    if {"auto", "vanilla-hard"} <= set(methods):
        cov = {(r["dataset"], _label(r), r["student_method"], r["seed"]): 100 * r["coverage"] for r in rows}
        pair = ["| dataset | target | auto − vanilla-hard coverage (points, paired) | auto higher (seeds) |",
                "|---|---|---|---|"]
        for d, t in dict.fromkeys((r["dataset"], _label(r)) for r in rows):
            diffs = [cov[d, t, "auto", s] - cov[d, t, "vanilla-hard", s] for s in sorted({r["seed"] for r in rows})
                     if (d, t, "auto", s) in cov and (d, t, "vanilla-hard", s) in cov]
            if diffs:
                pair.append(f"| {d} | {t} | {_mean_std(diffs, signed=True)} | "
                            f"{sum(x > 0 for x in diffs)}/{len(diffs)} |")
        text += "\n\nCoverage difference at the same guarantee:\n\n" + "\n".join(pair)
    return text
