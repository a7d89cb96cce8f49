"""`mentor bench ensemble`: several built-in teachers on the standard entries, each alone and combined.

For each entry and seed: one split; two or three different teachers trained on A (each its own
store); the student distilled from each teacher alone and from their log-linear pool,
reliability-weighted combination, plain average and majority vote. The question: does a
combination fitted on V beat the best single teacher (picked on V, as a user would) and the average?
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..config import parse_config
from ..errors import ConfigError
from .quality import _append_row, _mean_std, each_run, select_datasets, suite_configs

COMBINED = ("average", "vote", "reliability", "log-linear")
FITTED = ("reliability", "log-linear")  # the combinations fitted on V, compared with the others in the summary
# different model families per data set (the suite's own teacher first)
TEACHER_KINDS = {"digits": ("mlp", "hgb", "logistic"), "letter": ("mlp", "hgb", "logistic"),
                 "mnist1d": ("cnn1d", "mlp", "hgb"), "fashion-mnist": ("cnn", "mlp", "hgb")}


def ensemble_suite(suite: str, kinds: tuple[str, ...] | None = None) -> dict[str, dict]:
    """The quality suite's entries that have several built-in teachers, with `teachers:` set
    (the entry's own teacher options kept for its kind; defaults for the others)."""
    out = {}
    for name, template in suite_configs(suite).items():
        family = name.split("/")[0]
        if family not in TEACHER_KINDS:
            continue
        own = template["teacher"]
        teachers = [{**(own if k == own["kind"] else {"kind": k}), "name": k} for k in (kinds or TEACHER_KINDS[family])]
        out[name] = {**{k: v for k, v in template.items() if k != "teacher"}, "teachers": teachers}
    return out


def bench_ensemble(suite: str = "standard", *, seeds: int = 3, datasets: list[str] | None = None,
                   methods: tuple[str, ...] = ("vanilla-soft",), n_pool: int | None = None,
                   kinds: tuple[str, ...] | None = None, json_out: Path | None = None,
                   work_dir: Path = Path("bench-out/ensemble"), log: Callable = print, first_seed: int = 0,
                   combinations: tuple[str, ...] | None = None) -> list[dict]:
    """One row per (dataset, seed, combination, student method): the combination's teacher accuracy
    on V and test, the student's test accuracy. Combinations: `single:<kind>` for each teacher,
    average, vote, reliability, log-linear; plus one labeled-only row per seed. `n_pool` caps the
    pool (speed). `combinations` limits the rows to some of "labeled-only", "single" (each
    teacher), "best-single" (only the teacher best on V: students for one teacher, not all), and the
    combined ones (to add one to an earlier run's rows: the teachers are retrained alike, and each
    row records every teacher's fingerprint to check that)."""
    from ..methods import METHODS
    from ..pipeline import combine_teacher_stores, label_teachers, prepare, student_test_probs, teacher_outputs, train
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ConfigError(f"unknown methods {bad}; see `mentor methods`.")
    configs = ensemble_suite(suite, kinds)
    if not configs:
        raise ConfigError(f"suite {suite!r} has no entry with several built-in teachers ({', '.join(TEACHER_KINDS)}).")
    names = select_datasets(configs, datasets, suite)
    known = ("labeled-only", "single", "best-single", *COMBINED)
    wanted = set(combinations or known)
    if wanted - set(known):
        raise ConfigError(f"unknown combinations {sorted(wanted - set(known))}; choose from {', '.join(known)}.")
    rows = []
    for name, seed, template in each_run(configs, names, seeds, Path(work_dir), json_out, first_seed):
        if n_pool:
            template = {**template, "split": {**template["split"], "n_pool": n_pool}}
        cfg = parse_config({**template, "seed": seed, "output_dir": str(Path(work_dir) / suite / name / f"seed-{seed}")})
        t0 = time.perf_counter()
        ctx = prepare(cfg, force=True)  # benchmark folders are scratch
        singles = label_teachers(ctx)
        stores = {f"single:{n}": s for n, s in singles.items()} if "single" in wanted else {}
        if "best-single" in wanted and "single" not in wanted:  # the one a user with V would pick alone
            best = max(singles, key=lambda n: (teacher_outputs(singles[n], ctx.data.ids[ctx.splits.val]).argmax(1)
                                               == ctx.data.labels[ctx.splits.val]).mean())
            stores[f"single:{best}"] = singles[best]
        for c in COMBINED:
            if c in wanted:
                stores[c] = combine_teacher_stores(ctx, singles, c, path=ctx.out / f"store-{c}")
        data, sp = ctx.data, ctx.splits
        y_val, y_test = data.labels[sp.val], data.labels[sp.test]
        base = {"bench": "ensemble", "dataset": name, "seed": seed, "suite": suite, "teachers": list(singles),
                "n_labeled": len(sp.labeled), "n_val": len(sp.val), "n_pool": len(sp.pool), "n_test": len(sp.test),
                "single_fingerprints": {n: s.fingerprint for n, s in singles.items()},
                "setup_seconds": time.perf_counter() - t0}
        if "labeled-only" in wanted:
            train(ctx, labeled_only=True, name="labeled-only")
            row = {**base, "combination": "labeled-only", "method": "labeled-only", "teacher_accuracy": None,
                   "teacher_val_accuracy": None,
                   "test_accuracy": float((student_test_probs(ctx, "labeled-only").argmax(1) == y_test).mean())}
            rows.append(row)
            _append_row(json_out, row)
        for combination, store in stores.items():
            t_acc = float((teacher_outputs(store, data.ids[sp.test]).argmax(1) == y_test).mean())
            t_val = float((teacher_outputs(store, data.ids[sp.val]).argmax(1) == y_val).mean())
            for method in methods:
                t1 = time.perf_counter()
                student = f"{combination.replace(':', '-')}-{method}"
                info = train(ctx, store, method=method, name=student)
                acc = float((student_test_probs(ctx, student).argmax(1) == y_test).mean())
                row = {**base, "combination": combination, "method": method, "teacher_accuracy": t_acc,
                       "teacher_val_accuracy": t_val, "teacher_fingerprint": store.fingerprint, "test_accuracy": acc,
                       "seconds": time.perf_counter() - t1}
                if method == "auto":  # every candidate's V scores, as `bench quality` keeps: a rule re-derivable
                    row["auto"] = {k: v for k, v in (info or {}).get("auto", {}).items() if k != "note"}
                rows.append(row)
                _append_row(json_out, row)
                log(f"{name} seed={seed} {combination:16s} {method:14s} teacher={100 * t_acc:.2f} "
                    f"student={100 * acc:.2f}")
    return rows


def with_best_single(rows: list[dict]) -> list[dict]:
    """Add a `best-single` row per (dataset, seed, method): the single teacher with the best
    accuracy on V (what a user with V would pick), with its test numbers."""
    out = list(rows)
    keys = dict.fromkeys((r["dataset"], r["seed"], r["method"]) for r in rows if r["combination"].startswith("single:"))
    for d, s, m in keys:
        cands = [r for r in rows if (r["dataset"], r["seed"], r["method"]) == (d, s, m)
                 and r["combination"].startswith("single:")]
        best = max(cands, key=lambda r: r["teacher_val_accuracy"])
        out.append({**best, "combination": "best-single", "picked": best["combination"]})
    return out


def summarize_ensemble(rows: list[dict]) -> str:
    """Markdown: per data set and combination, the teacher's and the student's test accuracy
    (mean ± std over seeds), and the paired differences of reliability against the best single
    teacher and the average (teacher and student)."""
    rows = with_best_single(rows)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] != "labeled-only"))
    cell = {(r["dataset"], r["combination"], r["method"], r["seed"]): r for r in rows}
    lines = ["| dataset | combination | student method | teacher test acc. (%) | student test acc. (%) | seeds |",
             "|---|---|---|---|---|---|"]
    for d in datasets:
        combos = list(dict.fromkeys(r["combination"] for r in rows if r["dataset"] == d))
        order = ["labeled-only"] + sorted(c for c in combos if c.startswith("single:")) + ["best-single", *COMBINED]
        for c in [c for c in order if c in combos]:
            for m in (["labeled-only"] if c == "labeled-only" else methods):
                rs = [r for (dd, cc, mm, _), r in cell.items() if (dd, cc, mm) == (d, c, m)]
                if not rs:
                    continue
                t = [100 * r["teacher_accuracy"] for r in rs if r["teacher_accuracy"] is not None]
                lines.append(f"| {d} | {c} | {m} | {_mean_std(t) if t else ''} | "
                             f"{_mean_std([100 * r['test_accuracy'] for r in rs])} | {len(rs)} |")
    diff = ["| dataset | student method | combination | − best-single: teacher | student | − average: "
            "teacher | student | − vote: teacher | student |", "|---|---|---|---|---|---|---|---|---|"]
    overall = {}
    for fitted in [c for c in FITTED if any(r["combination"] == c for r in rows)]:
        for d in datasets:
            for m in methods:
                seeds = sorted(s for (dd, cc, mm, s) in cell if (dd, cc, mm) == (d, fitted, m))
                if not seeds:
                    continue
                parts = []
                for other in ("best-single", "average", "vote"):
                    pairs = [(cell[d, fitted, m, s], cell[d, other, m, s]) for s in seeds if (d, other, m, s) in cell]
                    t = [100 * (a["teacher_accuracy"] - b["teacher_accuracy"]) for a, b in pairs]
                    st = [100 * (a["test_accuracy"] - b["test_accuracy"]) for a, b in pairs]
                    if pairs:
                        overall.setdefault((fitted, other), []).append((np.mean(t), np.mean(st)))
                    parts += [_mean_std(t, signed=True), _mean_std(st, signed=True)] if pairs else ["", ""]
                diff.append(f"| {d} | {m} | {fitted} | " + " | ".join(parts) + " |")
    mean = {k: np.mean(np.array(v), axis=0) for k, v in overall.items()}
    head = "; ".join(f"{c} vs {k}: teacher {v[0]:+.2f}, student {v[1]:+.2f} points" for (c, k), v in mean.items())
    return ("Test accuracy (%), mean ± std over seeds (best-single: the single teacher with the best V accuracy "
            "in each seed):\n\n" + "\n".join(lines)
            + "\n\nThe combinations fitted on V minus the others, in points, paired by seed (mean ± std):\n\n"
            + "\n".join(diff) + (f"\n\nAveraged over the data sets (each data set counts once): {head}." if head else ""))
