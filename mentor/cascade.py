"""Deploy with a fallback: the student answers when it is confident, the teacher otherwise.

The threshold on the student's confidence (its top probability) is chosen on V only, so that on
the examples the student answers, a *lower confidence bound* of its accuracy (or of its agreement
with the teacher) is at least the target. What the guarantee means: if V and future traffic are
drawn from the same distribution, then with probability at least 1 − delta over the draw of V,
the accuracy of the student on the traffic it answers is at least the target. It does not say
that any one batch of traffic reaches it (a small batch fluctuates), nor anything once traffic
drifts away from V, and it is only as honest as V is unseen: a student whose training chose
between candidates on V (method `auto`) or whose correction was fitted on V has seen V a little.

Many thresholds are looked at, so keeping any one whose bound passes would not be a guarantee
(multiple testing). We use fixed-sequence testing as in Learn-then-Test (Angelopoulos et al.,
2021): the thresholds of a grid fixed in advance are tested in order from most to least
confident and testing stops at the first failure; the chosen threshold is the last that passed
(the largest coverage within the passed prefix). Where the sequence starts matters: a threshold
answering few V examples can pass only if nearly all are right, so a sequence starting there
dies on the first unlucky error. It starts at the first threshold answering enough V examples
that an answered set with half the allowed error rate would pass (`power_start`; 120 for a 90%
target at delta 0.05), but no later than a quarter of V (nor earlier than the fewest examples
with which a pass is possible at all).
Optionally (`max_sequences`), up to four sequences start at growing answered counts, each at
level delta/m (Bonferroni). The starts depend on V's size, never on its labels. On simulated
students (`scripts/cascade_starts.py`, BENCHMARKS.md "Cascade") the "power" start covered more
than the minimal one in nearly every setting, and several sequences helped only where confidence
says nothing about correctness.

Everything here is plain numpy on arrays; `cascade_run` (used by `mentor cascade`) loads a
finished run's students and stored teacher outputs, never calling the teacher.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import ConfigError, DataError, StoreError

BOUNDS = ("clopper-pearson", "wilson")
# thresholds tested, most confident first: fine near 1 (softmax confidences crowd there), then every 0.001
GRID = np.unique(np.concatenate([1.0 - np.logspace(-8, -3, 101), np.linspace(0.0, 1.0, 1001)]))[::-1]


# ---------------------------------------------------------------------------------------------- bounds

def clopper_pearson_lower(k, n, delta: float = 0.05):
    """One-sided exact (Clopper–Pearson) lower bound of a binomial proportion at level 1 − delta:
    the p with P(Binomial(n, p) ≥ k) = delta. 0 where k = 0 (or n = 0)."""
    from scipy.stats import beta
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        lb = beta.ppf(delta, np.maximum(k, 1e-300), np.maximum(n - k + 1, 1e-300))
    out = np.where((k <= 0) | (n <= 0), 0.0, lb)
    return float(out) if out.ndim == 0 else out


def wilson_lower(k, n, delta: float = 0.05):
    """One-sided Wilson score lower bound at level 1 − delta. Approximate: tighter than
    Clopper–Pearson, but it can fall short of its level for small n or accuracies near 1."""
    from scipy.stats import norm
    k, n = np.asarray(k, dtype=np.float64), np.asarray(n, dtype=np.float64)
    z = norm.ppf(1.0 - delta)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = k / n
        centre = p + z * z / (2 * n)
        spread = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
        lb = (centre - spread) / (1 + z * z / n)
    out = np.where(n <= 0, 0.0, np.clip(np.nan_to_num(lb), 0.0, 1.0))
    return float(out) if out.ndim == 0 else out


def lower_bound(k, n, delta: float = 0.05, bound: str = "clopper-pearson"):
    """The lower confidence bound named by `bound` (one of BOUNDS)."""
    check_options(delta=delta, bound=bound)
    return clopper_pearson_lower(k, n, delta) if bound == "clopper-pearson" else wilson_lower(k, n, delta)


def min_examples(target: float, delta: float = 0.05, bound: str = "clopper-pearson") -> int:
    """The fewest answered examples for which the bound can reach `target` at all (all of them
    right). For Clopper–Pearson the bound with n right of n is delta^(1/n)."""
    if target <= 0:
        return 1
    hi = 1
    while lower_bound(hi, hi, delta, bound) < target:
        hi *= 2
        if hi > 1 << 40:
            raise ConfigError(f"no number of examples makes the bound reach {target}; choose a target below 1.")
    lo = hi // 2 + 1 if hi > 1 else 1
    while lo < hi:  # smallest n in [lo, hi] with bound(n, n) >= target
        mid = (lo + hi) // 2
        if lower_bound(mid, mid, delta, bound) >= target:
            hi = mid
        else:
            lo = mid + 1
    return hi


def check_options(*, target: float | None = None, delta: float | None = None, bound: str | None = None) -> None:
    """Refuse a target, level or bound that means nothing, naming the fix."""
    if target is not None and not (math.isfinite(target) and 0 < target < 1):
        raise ConfigError(f"the target must be an accuracy in (0, 1), e.g. 0.9 for 90% (no finite V can show 100%); "
                          f"got {target}.")
    if delta is not None and not (0 < delta < 1):
        raise ConfigError(f"delta (the chance the guarantee fails) must be in (0, 1), e.g. 0.05; got {delta}.")
    if bound is not None and bound not in BOUNDS:
        raise ConfigError(f"unknown bound {bound!r}; choose one of {', '.join(BOUNDS)}.")


# ---------------------------------------------------------------------------------------------- threshold

@dataclass
class ThresholdChoice:
    """What `choose_threshold` found. `threshold` is None when no threshold meets the target: then
    the cascade sends everything to the teacher, and `best_*` say what V could support."""
    target: float
    delta: float
    bound: str
    met: bool
    threshold: float | None
    coverage: float                    # share of V the student answers at `threshold` (0 when not met)
    answered_accuracy: float | None    # on those V examples (of the "correct" indicator given)
    lower_bound: float | None
    n_answered: int
    n_val: int
    n_tested: int                      # tests made before the sequences stopped (or ran out)
    n_sequences: int                   # testing sequences, each at level delta / n_sequences
    min_examples: int                  # fewest answered V examples for which a pass is possible
    best_lower_bound: float            # the highest bound any grid threshold reaches (descriptive only)
    best_coverage: float
    best_threshold: float | None
    reason: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def _answered_counts(confidence: np.ndarray, correct: np.ndarray, grid: np.ndarray):
    """For each threshold t: how many V examples have confidence ≥ t, and how many of them are right."""
    order = np.argsort(-confidence, kind="stable")
    conf_sorted = confidence[order]
    right_cum = np.concatenate([[0], np.cumsum(correct[order])])
    n = np.searchsorted(-conf_sorted, -grid, side="right")  # count of conf >= t
    return n, right_cum[n]


def power_start(target: float, delta: float, bound: str = "clopper-pearson") -> int:
    """The fewest answered examples at which an answered set with half the allowed error rate
    passes: a sequence starting earlier dies on the first unlucky error in its few examples."""
    a = (1.0 + target) / 2
    n = min_examples(target, delta, bound)
    while lower_bound(np.floor(a * n), n, delta, bound) < target:
        n = int(n * 1.05) + 1
    return n


def sequence_starts(n_val: int, target: float, delta: float, bound: str = "clopper-pearson",
                    max_sequences: int = 4, start: str = "power") -> tuple[int, list[int]]:
    """(m, answered counts where the m testing sequences start): one sequence at `power_start`, but
    no later than a quarter of V (start="min": at the fewest examples a pass needs); with
    max_sequences > 1, m ≤ max_sequences sequences at level delta/m (Bonferroni), starting at n0,
    2·n0, 4·n0, ... answered V examples. The starts depend on V's size only, never on its labels."""
    for m in range(max(1, max_sequences), 1, -1):
        n0 = min_examples(target, delta / m, bound)
        if n0 * 2 ** (m - 1) <= n_val:
            return m, [n0 * 2 ** j for j in range(m)]
    least = min_examples(target, delta, bound)
    if start != "power":
        return 1, [least]
    # never past the first quarter of V: a start beyond it would leave only thresholds that answer most of V
    return 1, [min(power_start(target, delta, bound), max(least, n_val // 4))]


def choose_threshold(confidence_val, correct_val, target: float, *, delta: float = 0.05,
                     bound: str = "clopper-pearson", grid: np.ndarray | None = None,
                     max_sequences: int = 1, start: str = "power") -> ThresholdChoice:
    """The smallest confidence threshold whose answered set on V has a lower bound of accuracy ≥
    `target`, found by fixed-sequence testing (see the module docstring for what that guarantees).

    The thresholds of `grid` (default GRID) are tested from most to least confident; each of the m
    sequences (`sequence_starts`) starts where enough V examples are answered, tests at level
    delta/m and stops at its first failure. A threshold passed by any sequence is safe (the chance
    that any sequence passes a wrong one is at most delta); the lowest of them is chosen.

    confidence_val: the student's confidence on each V example (its top probability);
    correct_val: whether it is right there (against the label, or against the teacher's argmax for
    an agreement target); max_sequences, start: see `sequence_starts`."""
    check_options(target=target, delta=delta, bound=bound)
    conf = np.asarray(confidence_val, dtype=np.float64).ravel()
    right = np.asarray(correct_val).astype(bool).ravel()
    if len(conf) != len(right):
        raise DataError(f"confidence ({len(conf)} values) and correct ({len(right)}) must describe the same V examples.")
    if not np.isfinite(conf).all():
        raise DataError("the student's confidences on V hold NaN or infinite values; check the student's outputs.")
    grid = np.sort(np.unique(GRID if grid is None else np.asarray(grid, dtype=np.float64)))[::-1]
    n_val, need = len(conf), min_examples(target, delta, bound)
    n, k = _answered_counts(conf, right, grid)
    m, starts = sequence_starts(n_val, target, delta, bound, max_sequences, start)
    lb_seq = np.asarray(lower_bound(k, n, delta / m, bound), dtype=np.float64).reshape(-1)
    passed, tested, first_fail = np.zeros(len(grid), bool), 0, None
    for n_start in starts:
        if not (n >= n_start).any():
            continue
        for i in range(int(np.argmax(n >= n_start)), len(grid)):
            if passed[i]:  # an earlier sequence went on from here already
                continue
            tested += 1
            if lb_seq[i] < target:
                first_fail = i if first_fail is None else first_fail
                break
            passed[i] = True
    lb = lb_seq if m == 1 else np.asarray(lower_bound(k, n, delta, bound), dtype=np.float64).reshape(-1)  # alone
    best = int(np.argmax(np.where(n > 0, lb, -1.0)))  # ties: the first, i.e. the most confident
    common = dict(target=float(target), delta=float(delta), bound=bound, n_val=int(n_val), n_tested=tested,
                  n_sequences=m, min_examples=int(need),
                  best_lower_bound=float(lb[best]) if n[best] else 0.0,
                  best_coverage=float(n[best] / max(n_val, 1)) if n[best] else 0.0,
                  best_threshold=float(grid[best]) if n[best] else None)
    if passed.any():
        i = int(np.flatnonzero(passed)[-1])  # the least confident threshold passed
        return ThresholdChoice(met=True, threshold=float(grid[i]), coverage=float(n[i] / n_val),
                               answered_accuracy=float(k[i] / n[i]), lower_bound=float(lb_seq[i]),
                               n_answered=int(n[i]), **common)
    return ThresholdChoice(met=False, threshold=None, coverage=0.0, answered_accuracy=None, lower_bound=None,
                           n_answered=0, reason=_not_met_reason(target, delta, bound, n_val, need, common, first_fail,
                                                                lb_seq, n, grid), **common)


def _not_met_reason(target, delta, bound, n_val, need, common, first, lb, n, grid) -> str:
    level = f"{100 * (1 - delta):g}% {bound}"
    if n_val < need:
        cap = lower_bound(n_val, n_val, delta, bound) if n_val else 0.0
        return (f"V has {n_val} examples: even if the student were right on all of them, the {level} lower bound "
                f"could not exceed {cap:.4f} < target {target:.4f}. At least {need} V examples (all answered "
                f"correctly; more in practice) are needed for this target, or lower the target or raise delta.")
    if first is None:
        return f"no threshold answers the {need} V examples a pass needs; check the student's confidences."
    later = np.flatnonzero((lb >= target) & (np.arange(len(lb)) > first) & (n > 0))
    if len(later):
        j = later[0]
        return (f"a less confident threshold ({grid[j]:.4f}, coverage {n[j] / n_val:.3f}) reaches the bound, but the "
                f"more confident one at {grid[first]:.4f} failed first (bound {lb[first]:.4f} < {target:.4f}): the "
                "student's accuracy is not monotone in its confidence, and stopping at the first failure is what "
                "makes the guarantee hold. Lower the target, or improve the student's calibration.")
    return (f"no threshold reaches it: the best {level} lower bound of the student's answered accuracy on V is "
            f"{common['best_lower_bound']:.4f} (coverage {common['best_coverage']:.3f}) < target {target:.4f}. "
            "Lower the target, raise delta, add V examples, or train a better student.")


# ---------------------------------------------------------------------------------------------- targets

TARGET_KINDS = ("accuracy", "of-teacher", "agreement")


def resolve_target(*, target: float | None = None, of_teacher: float | None = None, agreement: bool = False,
                   teacher_val_accuracy: float | None = None) -> tuple[float, str]:
    """(absolute target, kind). `of_teacher` × the teacher's accuracy on V — itself an estimate from
    V, so the stated target carries V's noise; `agreement`: the target is the share of answered
    examples on which the student gives the teacher's answer (needs no labels)."""
    if target is not None and of_teacher is not None:
        raise ConfigError("give --target (an accuracy) or --of-teacher (a share of the teacher's accuracy), not both.")
    if agreement:
        if of_teacher is not None:
            raise ConfigError("an agreement target is already relative to the teacher: give it as --target "
                              "(e.g. --agreement --target 0.95: the student gives the teacher's answer on ≥ 95% "
                              "of what it answers), not --of-teacher.")
        target = 0.95 if target is None else target
        check_options(target=target)
        return float(target), "agreement"
    if target is not None:
        check_options(target=target)
        return float(target), "accuracy"
    of_teacher = 0.95 if of_teacher is None else of_teacher
    if not (0 < of_teacher <= 1) or not math.isfinite(of_teacher):
        raise ConfigError(f"--of-teacher must be a share in (0, 1], e.g. 0.95 for 95% of the teacher's accuracy; "
                          f"got {of_teacher}.")
    if teacher_val_accuracy is None or teacher_val_accuracy <= 0:
        raise ConfigError("a target relative to the teacher needs the teacher's accuracy on V, which is unknown "
                          "(no teacher outputs on V). Give an absolute --target instead.")
    return float(of_teacher * teacher_val_accuracy), "of-teacher"


def correct_indicator(student_probs, teacher_probs, labels, kind: str) -> np.ndarray:
    """Whether the student is right on each example: against the labels, or (agreement) against
    the teacher's argmax."""
    s = np.asarray(student_probs).argmax(1)
    if kind == "agreement":
        return s == np.asarray(teacher_probs).argmax(1)
    return s == np.asarray(labels)


# ---------------------------------------------------------------------------------------------- test report

def cascade_report(student_probs_test, teacher_probs_test, y_test, threshold: float | None,
                   price_per_call: float = 0.0, *, target: float | None = None, kind: str = "accuracy") -> dict:
    """The cascade on test: the student answers where its confidence ≥ threshold (nowhere when
    threshold is None), the teacher elsewhere. `bound_held`: the answered part meets `target` in
    the metric of `kind` (None when the student answers nothing or no target is given)."""
    s = np.asarray(student_probs_test, dtype=np.float64)
    t = np.asarray(teacher_probs_test, dtype=np.float64)
    y = np.asarray(y_test)
    if not (len(s) == len(t) == len(y)):
        raise DataError(f"student ({len(s)}), teacher ({len(t)}) and labels ({len(y)}) must cover the same test rows.")
    n = len(y)
    answer = s.max(1) >= threshold if threshold is not None else np.zeros(n, bool)
    s_pred, t_pred = s.argmax(1), t.argmax(1)
    cascade_pred = np.where(answer, s_pred, t_pred)
    m = int(answer.sum())
    answered_acc = float((s_pred[answer] == y[answer]).mean()) if m else None
    answered_agree = float((s_pred[answer] == t_pred[answer]).mean()) if m else None
    achieved = answered_agree if kind == "agreement" else answered_acc
    price = float(price_per_call or 0.0)
    return {"n": n, "coverage": m / n if n else 0.0, "answered_accuracy": answered_acc,
            "answered_agreement": answered_agree,
            "student_accuracy": float((s_pred == y).mean()) if n else None,
            "teacher_accuracy": float((t_pred == y).mean()) if n else None,
            "cascade_accuracy": float((cascade_pred == y).mean()) if n else None,
            "teacher_calls": n - m, "teacher_calls_saved": m, "price_per_call": price,
            "cost_all_teacher": price * n, "cost_saved": price * m,
            "bound_held": None if (achieved is None or target is None) else bool(achieved >= target)}


def coverage_curve(confidence, correct) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, accuracy of the answered part) as the threshold sweeps from most to least confident."""
    order = np.argsort(-np.asarray(confidence, dtype=np.float64), kind="stable")
    right = np.asarray(correct, dtype=np.float64)[order]
    k = np.arange(1, len(right) + 1)
    return k / max(len(right), 1), np.cumsum(right) / k


def plot_cascade(val: tuple, test: tuple | None, path, *, target: float, chosen_val: tuple | None = None,
                 chosen_test: tuple | None = None, metric: str = "accuracy", title: str = "cascade",
                 delta: float | None = None, bound: str = "clopper-pearson") -> Path:
    """Accuracy of the answered part against coverage on V and test, the target, and the chosen point.
    `val`/`test`: (confidence, correct) arrays; `chosen_*`: (coverage, accuracy); with `delta`, V's
    lower bound too (pointwise: the chosen point's own bound, not the guarantee of the sequence)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    low = target
    for (conf, right), name, colour in ((val, "V", "tab:blue"), (test, "test", "tab:orange")):
        if conf is None or not len(conf):
            continue
        c, a = coverage_curve(conf, right)
        low = min(low, float(a.min()))
        ax.plot(c, a, color=colour, lw=1.6, label=f"{name} (n = {len(conf)})")
        if name == "V" and delta is not None:
            k = np.arange(1, len(c) + 1)
            ax.plot(c, lower_bound(np.round(a * k), k, delta, bound), color=colour, lw=1, ls=":",
                    label=f"V: {100 * (1 - delta):g}% lower bound")
    ax.axhline(target, ls="--", color="grey", lw=1, label=f"target {target:.3f}")
    if chosen_val is not None:
        ax.plot(*chosen_val, "o", color="tab:blue", ms=8, label=f"chosen on V: coverage {chosen_val[0]:.2f}")
    if chosen_test is not None and chosen_test[1] is not None:
        ax.plot(*chosen_test, "s", color="tab:orange", ms=7, label=f"on test: coverage {chosen_test[0]:.2f}")
    ax.set(xlabel="coverage (share answered by the student)", ylabel=f"{metric} of the answered part",
           xlim=(0, 1.01), ylim=(max(0.0, low - 0.05), 1.005), title=title)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def summarize_cascade(choice: ThresholdChoice, val_probs, val_correct, test: dict, *, kind: str,
                      teacher_val_accuracy: float | None) -> dict:
    """The cascade.json record (without the run's provenance)."""
    return {"target": choice.target, "target_kind": kind, "delta": choice.delta, "bound": choice.bound,
            "threshold": choice.threshold, "met": choice.met, "reason": choice.reason,
            "val": {"n": choice.n_val, "coverage": choice.coverage, "answered_accuracy": choice.answered_accuracy,
                    "lower_bound": choice.lower_bound, "n_answered": choice.n_answered,
                    "teacher_accuracy": teacher_val_accuracy,
                    "student_accuracy": float(np.mean(val_correct)) if len(val_correct) else None,
                    "thresholds_tested": choice.n_tested, "sequences": choice.n_sequences,
                    "min_examples": choice.min_examples,
                    "best_achievable": {"lower_bound": choice.best_lower_bound, "coverage": choice.best_coverage,
                                        "threshold": choice.best_threshold}},
            "test": test}


# ---------------------------------------------------------------------------------------------- a finished run

def read_price(store, out: Path, cfg) -> tuple[float, str]:
    """The teacher's price per example: what the store paid per stored row when it paid anything
    (an LLM's token bill), else the teacher's recorded cost_per_example."""
    try:
        done = store.status()["done"]
        rows = len(store)
        if rows and float(done.get("cost", 0.0)) > 0:
            return float(done["cost"]) / rows, "store bill (paid per stored row)"
    except (KeyError, OSError, TypeError):
        pass
    note = out / "teacher.json"
    if note.exists():
        try:
            price = float(json.loads(note.read_text()).get("cost_per_example") or 0.0)
            if price > 0:
                return price, "teacher.json cost_per_example"
        except (ValueError, TypeError):
            pass
    return float(cfg.teacher.cost_per_example or 0.0), "config teacher.cost_per_example"


def cascade_run(run_dir, *, target: float | None = None, of_teacher: float | None = None, agreement: bool = False,
                delta: float = 0.05, bound: str = "clopper-pearson", student: str = "student") -> dict:
    """Choose the threshold on V for a finished run's student, report it on test from the stored
    teacher outputs, write cascade.json and cascade.png (cascade-<student>.* for another student)."""
    check_options(delta=delta, bound=bound)
    resolve_target(target=target, of_teacher=of_teacher, agreement=agreement, teacher_val_accuracy=1.0)  # checks only
    if student not in ("student", "labeled-only"):
        raise ConfigError(f"--student must be student or labeled-only, got {student!r}.")
    from .pipeline import open_run, open_store, student_probs, teacher_outputs  # torch: only once the options are sound
    ctx = open_run(run_dir)
    if not (ctx.out / f"{student}.pt").exists():
        raise DataError(f"{ctx.out} has no trained {student} ({student}.pt); train one first with `mentor run` "
                        "(or `mentor train`" + (" --labeled-only" if student == "labeled-only" else "") + ") on its config.")
    try:
        store = open_store(ctx)
    except StoreError:
        raise StoreError(f"no teacher outputs for {ctx.out} at {ctx.cfg.store.path or ctx.out / 'store'}; the cascade "
                         "reads the teacher's stored answers on V and test (it never calls the teacher). Run "
                         "`mentor label` on the run's config to store them.") from None
    data, sp = ctx.data, ctx.splits
    val_ids, test_ids = data.ids[sp.val], data.ids[sp.test]
    missing = {name: len(store.missing(ids.astype(str))) for name, ids in (("V", val_ids), ("test", test_ids))}
    if any(missing.values()):
        parts = ", ".join(f"{m} of {name}" for name, m in missing.items() if m)
        raise StoreError(f"the store {store.path} lacks the teacher's answers on {parts}: the cascade needs them (V to "
                         "choose, test to report) and never calls the teacher itself. Run `mentor label` on the run's "
                         "config to store them (already stored rows are not paid again); a teacher file must cover "
                         "V and test ids.")
    if len(sp.val) == 0 or len(sp.test) == 0:
        raise ConfigError("the cascade needs a V and a test split; this run has split.n_val or split.n_test = 0.")
    t_val, t_test = teacher_outputs(store, val_ids), teacher_outputs(store, test_ids)
    s_val, s_test = student_probs(ctx, student, sp.val), student_probs(ctx, student, sp.test)
    y_val, y_test = data.labels[sp.val], data.labels[sp.test]
    teacher_val_acc = float((t_val.argmax(1) == y_val).mean())
    value, kind = resolve_target(target=target, of_teacher=of_teacher, agreement=agreement,
                                 teacher_val_accuracy=teacher_val_acc)
    right_val = correct_indicator(s_val, t_val, y_val, kind)
    choice = choose_threshold(s_val.max(1), right_val, value, delta=delta, bound=bound)
    price, price_source = read_price(store, ctx.out, ctx.cfg)
    test = cascade_report(s_test, t_test, y_test, choice.threshold, price, target=value, kind=kind)
    test["price_source"] = price_source
    suffix = "" if student == "student" else f"-{student}"
    png = ctx.out / f"cascade{suffix}.png"
    right_test = correct_indicator(s_test, t_test, y_test, kind)
    metric = "agreement with the teacher" if kind == "agreement" else "accuracy"
    plot_cascade((s_val.max(1), right_val), (s_test.max(1), right_test), png, target=value, metric=metric,
                 chosen_val=(choice.coverage, choice.answered_accuracy) if choice.met else None,
                 chosen_test=(test["coverage"], test["answered_agreement" if kind == "agreement" else
                                                     "answered_accuracy"]) if choice.met else None,
                 title=f"{data.name}: {student} answers, teacher falls back", delta=delta, bound=bound)
    record = summarize_cascade(choice, s_val, right_val, test, kind=kind, teacher_val_accuracy=teacher_val_acc)
    if of_teacher is not None or kind == "of-teacher":
        record["of_teacher"] = of_teacher if of_teacher is not None else 0.95
    info = json.loads(json.dumps(_student_info(ctx, student)))
    record.update(student=student, student_method=info.get("method"), plot=png.name,
                  teacher_fingerprint=store.fingerprint, run_dir=str(ctx.out))
    tmp = ctx.out / f"cascade{suffix}.json.tmp"
    tmp.write_text(json.dumps(record, indent=2))
    tmp.replace(ctx.out / f"cascade{suffix}.json")
    _refresh_report(ctx.out)
    return record


def _refresh_report(run_dir: Path) -> None:
    """The run's report.md/html with the cascade table in it; a failure is a warning (cascade.json is written)."""
    import warnings

    from .report import write_report
    try:
        write_report(run_dir)
    except Exception as e:  # noqa: BLE001 - the report is a view; the cascade's own files are what matters
        warnings.warn(f"the report in {run_dir} was not updated ({type(e).__name__}: {e}); run `mentor report "
                      f"{run_dir}`.", stacklevel=2)


def _student_info(ctx, name: str) -> dict:
    from .pipeline import load_student
    return load_student(ctx, name)[2]
