"""The active-distillation benchmark (`mentor bench active`) and the selection timing (`mentor bench speed`)."""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Callable

import numpy as np

from ..active.loop import active_loop, parse_active_config, plot_curves
from ..active.selection import SELECTORS, dep_round, rad_gains, rad_probabilities, select
from ..config import _set_dotted
from ..errors import ConfigError

# ---------------------------------------------------------------------------------------------- benchmark

DEFAULT_STRATEGIES = ["random", "margin", "entropy", "rad"]
POOL_FRACTIONS = [0.02, 0.05, 0.1, 0.2, 0.33]  # cumulative queries as fractions of the pool


def parse_variant(spec: str) -> tuple[str, dict]:
    """A strategy as the benchmark names it: "rad", or a variant "rad@rad_rounding=pairs+rad_m_scale=0.5"
    (active-config keys set for that strategy only; values read as YAML scalars). The bench-only
    key `rounds=R` replaces the default budget by R equal batches up to 33% of the pool."""
    from .quality import key_values
    name, _, rest = spec.partition("@")
    if name not in SELECTORS:
        raise ConfigError(f"unknown strategy {name!r} in {spec!r}; available: {', '.join(sorted(SELECTORS))}.")
    return name, key_values(rest, f"strategy variant {spec!r}: write name@key=value(+key=value), e.g. "
                                  "rad@rad_rounding=pairs.")


def _budget(n_pool: int, rounds: int | None) -> list[int]:
    if rounds is None:
        return sorted({max(1, int(round(f * n_pool))) for f in POOL_FRACTIONS})
    top = POOL_FRACTIONS[-1] * n_pool
    return sorted({max(1, int(round(top * (i + 1) / int(rounds)))) for i in range(int(rounds))})


def bench_active(suite: str = "smoke", *, seeds: int = 3, strategies: list[str] | None = None,
                 datasets: list[str] | None = None, json_out: Path | None = None,
                 work_dir: Path = Path("bench-out"), log: Callable = print, correction: str = "vanilla-soft",
                 overrides: dict | None = None, first_seed: int = 0) -> list[dict]:
    """Strategies compared on the quality suite's data sets (teacher trained on A only), at
    budgets from 2% to 33% of the pool. One row per (dataset, strategy, seed); one PNG per
    (dataset, seed) with every strategy. Strategies of one (dataset, seed) share the split, the
    teacher and the store (so `spent` is what each strategy paid that earlier ones had not). Seeds
    first_seed .. first_seed + seeds − 1; these entries' rows are dropped from the rows file first (`start_rows`) only when first_seed is 0."""
    from .quality import _append_row, materialise, select_datasets, start_rows, suite_configs
    from ..pipeline import get_teacher, prepare
    configs = suite_configs(suite)
    names = select_datasets(configs, datasets, suite)
    strategies = strategies or DEFAULT_STRATEGIES
    variants = {s: parse_variant(s) for s in strategies}  # ConfigError on an unknown name
    start_rows(json_out, names, first_seed=first_seed)
    rows = []
    for name in names:
        template = materialise(configs[name], Path(work_dir))
        for seed in range(first_seed, first_seed + seeds):
            base = {**template, "seed": seed, "output_dir": str(work_dir / "active" / suite / name / f"seed-{seed}")}
            for key, value in (overrides or {}).items():
                _set_dotted(base, key, value)
            probe = parse_active_config({**base, "budget": [1]})
            ctx = prepare(probe, force=True)  # benchmark folders are scratch
            teacher = get_teacher(ctx)
            n_pool = len(ctx.splits.pool)
            curves = {}
            for strategy in strategies:
                selector, keys = variants[strategy]
                keys = dict(keys)
                budget = _budget(n_pool, keys.pop("rounds", None))
                cfg = parse_active_config({**base, "budget": budget, "strategy": selector, "correction": correction,
                                           **keys})
                t0 = time.perf_counter()
                folder = "strategy-" + re.sub(r"[^A-Za-z0-9_.=@+-]", "_", strategy)  # a variant keeps its own state
                res = active_loop(ctx, teacher, cfg=cfg, out=ctx.out / folder, log=None)
                row = {"dataset": name, "strategy": strategy, "seed": seed, "suite": suite, "queries": res["queries"],
                       "test_accuracy": res["test_accuracy"], "auc": res["auc"], "spent": res["spent"],
                       "teacher_error_of_queries": res["teacher_error_of_queries"],
                       "correction": cfg.correction, "teacher_val_accuracy": res["teacher_val_accuracy"],
                       "teacher_test_accuracy": res.get("teacher_test_accuracy"), "n_pool": n_pool,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                _append_row(json_out, row)
                curves[strategy] = (res["queries"], res["test_accuracy"])
                log(f"{name} seed={seed} {strategy:16s} auc={100 * res['auc']:.2f} final="
                    f"{100 * res['test_accuracy'][-1]:.2f}  (teacher {100 * (res.get('teacher_test_accuracy') or 0):.2f})")
            plot_curves(curves, ctx.out / "active.png", title=f"{name} seed {seed}")
    return rows


def summarize_active(rows: list[dict], baseline: str = "random") -> str:
    """Mean ± std over seeds of the AUC and the final accuracy per (dataset, strategy), and the AUC
    gain over `baseline` paired by seed (same split, teacher and store), Markdown."""
    out = [f"| dataset | strategy | AUC (%) | AUC − {baseline} (paired) | final accuracy (%) | seeds |",
           "|---|---|---|---|---|---|"]
    keys = list(dict.fromkeys((r["dataset"], r["strategy"]) for r in rows))
    auc = {(r["dataset"], r["strategy"], r["seed"]): 100 * r["auc"] for r in rows}
    sd = (lambda v: np.std(v, ddof=1) if len(v) > 1 else 0.0)
    for d, s in keys:
        sel = [r for r in rows if r["dataset"] == d and r["strategy"] == s]
        a = np.array([100 * r["auc"] for r in sel])
        f = np.array([100 * r["test_accuracy"][-1] for r in sel])
        g = [auc[d, s, r["seed"]] - auc[d, baseline, r["seed"]] for r in sel if (d, baseline, r["seed"]) in auc]
        gain = f"{np.mean(g):+.2f} ± {sd(g):.2f}" if g and s != baseline else ""
        out.append(f"| {d} | {s} | {a.mean():.2f} ± {sd(a):.2f} | {gain} | {f.mean():.2f} ± {sd(f):.2f} | {len(sel)} |")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- timing

def selection_speed(n: int = 1_000_000, n_classes: int = 10, *, b: int = 1000, repeats: int = 3,
                    kcenter_b: int = 1000, kcenter_dim: int = 64, kcenter_centres: int = 1000,
                    kcenter_max_seconds: float = 20.0, kcenter_verify: bool = True, seed: int = 0) -> dict:
    """Seconds for one selection round over `n` candidates given the student's probabilities
    (best of `repeats`): rad (gains, game, DepRound), margin, entropy, and DepRound alone (both
    methods). Greedy k-center (coreset on `kcenter_dim`-d embeddings, pcoreset on the
    probabilities; `kcenter_b` picks from `kcenter_centres` labeled centres) is timed at growing
    pool sizes (doubling from 10,000) until one run takes over kcenter_max_seconds / 4 or the
    pool reaches 4·n; the pool handled in 60 s is *extrapolated* from the last measured size
    along the growth exponent fitted (log-log least squares) to the measured sizes, then timed once
    at that size, at most 8·n (`kcenter_verify`)."""
    from ..active.selection import select_coreset, select_pcoreset
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, n_classes)).astype(np.float32) * 2
    probs = np.exp(z - z.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    cand = np.arange(n)

    from . import best_of

    def best(fn):
        return best_of(fn, repeats)

    res: dict = {"n": n, "n_classes": n_classes, "b": b, "repeats": repeats, "seconds": {}}
    for name in ("margin", "entropy"):
        res["seconds"][name] = best(lambda: select(name, cand, b, 1, probs=probs))
    res["seconds"]["rad"] = best(lambda: select("rad", cand, b, 1, probs=probs, teacher_accuracy=0.9))
    p = rad_probabilities(rad_gains(probs), b, 0.1 * n)
    res["rad_support"] = int((p > 0).sum())
    res["seconds"]["dep_round_systematic"] = best(lambda: dep_round(p, 1, method="systematic"))
    res["seconds"]["dep_round_pairs"] = best(lambda: dep_round(p, 1, method="pairs"))
    kc: dict = {"b": kcenter_b, "dim": kcenter_dim, "centres": kcenter_centres, "extrapolated": True}
    for name in ("coreset", "pcoreset"):
        d = kcenter_dim if name == "coreset" else n_classes
        sizes, times = [], []
        m = 10_000
        while True:
            x = rng.normal(size=(m, d)).astype(np.float32)
            c = rng.normal(size=(kcenter_centres, d)).astype(np.float32)
            t0 = time.perf_counter()
            (select_coreset if name == "coreset" else select_pcoreset)(x, c, np.arange(m), min(kcenter_b, m), 0)
            sizes.append(m)
            times.append(time.perf_counter() - t0)
            if times[-1] > kcenter_max_seconds / 4 or m >= 4 * n:
                break
            m *= 2
        # least-squares fit of log time on log size over the sizes above 0.05 s (noise below);
        # the 60-s pool is extrapolated along that line, not measured
        keep = [i for i, t in enumerate(times) if t > 0.05] or list(range(len(times)))
        ls, lt = np.log([sizes[i] for i in keep]), np.log([times[i] for i in keep])
        slope = float(np.polyfit(ls, lt, 1)[0]) if len(keep) > 1 else 1.0
        slope = max(slope, 0.5)
        n60 = int(sizes[-1] * (60.0 / times[-1]) ** (1.0 / slope))
        kc[name] = {"pool_sizes": sizes, "seconds": times, "growth_exponent": slope, "pool_in_60s": n60}
        if kcenter_verify:  # then time that size once (capped at 8·n), so the claim is checked, not only extrapolated
            m = min(n60, 8 * n)
            x = rng.normal(size=(m, d)).astype(np.float32)
            c = rng.normal(size=(kcenter_centres, d)).astype(np.float32)
            t0 = time.perf_counter()
            (select_coreset if name == "coreset" else select_pcoreset)(x, c, np.arange(m), min(kcenter_b, m), 0)
            kc[name].update(verified_pool=m, verified_seconds=time.perf_counter() - t0)
            del x
    res["kcenter"] = kc
    res["within_1s"] = {k: res["seconds"][k] <= 1.0 for k in ("rad", "margin", "entropy")}
    return res
