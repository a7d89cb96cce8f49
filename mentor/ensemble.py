"""Several teachers at once: combine their per-example class distributions into one teacher.

Plain functions on arrays (one (n, C) probability array per teacher); the corrections then treat
the combination as one teacher whose reliability is fitted on V as usual. Four combinations:

- `reliability`: a weighted average whose per-example weights come from EACH
  teacher's own reliability curve on V (`reliability.fit_reliability`: accuracy given that
  teacher's margin on this example). Weight = the log-odds of being right over a wrong class,
  `log((C − 1) · r / (1 − r))` with r that curve's value, floored at 0. This is the weight a
  vote gets when teachers err independently and spread their mistakes evenly over the other
  classes (the optimal weighted majority vote), so a teacher at chance (r = 1/C) gets no weight
  and a teacher that is right nearly always dominates where it is sure. The pool is linear (a
  weighted average of the distributions, not a product of experts): a product lets one teacher
  that puts ~0 on the right class veto it, and it sharpens targets past what any teacher said.
- `average`: the plain mean of the distributions (MEAL V2's ensemble target).
- `vote`: majority vote of the teachers' top labels, as the share of teachers voting for each
  class. Ties: tied classes keep equal shares, and the argmax among them goes to the class with
  the highest average probability (a 1e-3 mixture of the average breaks the tie; it never
  overturns a strict majority, whose lead is at least 1/K).
- `log-linear` (the default): p(c) ∝ exp(Σ_k w_k · log p_k(c) + b_c), with one weight w_k ≥ 0 per teacher and
  one bias per class fitted on V by log-loss (convex: one answer, no seed). It is a product of
  experts whose exponents V chooses, so the objections to a plain product do not hold: weights
  below 1 soften instead of sharpening (the fit is calibrated on V), and a weak teacher gets a
  weight near 0, so it can neither veto nor outvote a strong one — the case where the reliability
  weights fail (BENCHMARKS.md, "Several teachers": one strong teacher, two weak ones that are
  confident where they are wrong together). K + C numbers from V, so it holds at small V, unlike a
  full stacking model (a logistic regression on all K·C log-probabilities), which was tried and
  fell below the best single teacher with 100 V examples (BENCHMARKS.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import TeacherOutputError
from .reliability import Reliability, fit_reliability, teacher_margin

COMBINATIONS = ("reliability", "average", "vote", "log-linear")
FITTED_ON_V = ("reliability", "log-linear")  # what these learn on V, V's own rows get cross-fitted
LOG_FLOOR = 1e-6  # log p is taken of max(p, LOG_FLOOR): a hard 0 from one teacher costs a finite amount
# L2 penalty on the pool's weights and biases: a class V barely holds keeps a bias near 0, and a
# teacher right on every V example gets a finite weight (unpenalised it grows without bound and the
# targets turn one-hot: 15 at V = 20). At the V sizes benchmarked it moves test accuracy ≤ 0.03 points.
LOG_LINEAR_L2 = 1e-3
DEFAULT_COMBINATION = "log-linear"  # BENCHMARKS.md "Several teachers": above the best single teacher where reliability was not
VOTE_TIE_BREAK = 1e-3


def check_teacher_probs(probs_list, names=None) -> list[np.ndarray]:
    """Each teacher's (n, C) outputs as float64; all must have the same examples and classes."""
    probs = [np.asarray(p, dtype=np.float64) for p in probs_list]
    names = list(names) if names is not None else [f"teacher {i}" for i in range(len(probs))]
    if not probs:
        raise TeacherOutputError("no teacher outputs to combine: give at least one teacher (two or more to combine).")
    for name, p in zip(names, probs):
        if p.ndim != 2:
            raise TeacherOutputError(f"{name}'s outputs must be 2-d (n_examples, n_classes), got shape {p.shape}.")
    shapes = {name: p.shape for name, p in zip(names, probs)}
    if len({s[1] for s in shapes.values()}) > 1:
        raise TeacherOutputError(f"the teachers give different numbers of classes ({', '.join(f'{k}: {v[1]}' for k, v in shapes.items())}); "
                                 "combined teachers must answer the same task in the same class order.")
    if len({s[0] for s in shapes.values()}) > 1:
        raise TeacherOutputError(f"the teachers' outputs cover different numbers of examples "
                                 f"({', '.join(f'{k}: {v[0]}' for k, v in shapes.items())}); align them by id first.")
    return probs


def average(probs_list, weights=None) -> np.ndarray:
    """Weighted mean of the teachers' distributions; `weights` (n, K) per example, or None (equal).
    A row whose weights are all 0 falls back to the plain mean."""
    p = np.stack(check_teacher_probs(probs_list), axis=1)  # (n, K, C)
    if weights is None:
        return p.mean(axis=1)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != p.shape[:2]:
        raise TeacherOutputError(f"weights must be (n_examples, n_teachers) = {p.shape[:2]}, got {w.shape}.")
    w = np.where(w.sum(axis=1, keepdims=True) > 0, w, 1.0)
    w = w / w.sum(axis=1, keepdims=True)
    return np.einsum("nk,nkc->nc", w, p)


def vote(probs_list) -> np.ndarray:
    """Share of teachers whose top label is each class; ties broken by the average (module doc)."""
    probs = check_teacher_probs(probs_list)
    n, c = probs[0].shape
    shares = np.zeros((n, c))
    for p in probs:
        shares[np.arange(n), p.argmax(axis=1)] += 1.0 / len(probs)
    return (1.0 - VOTE_TIE_BREAK) * shares + VOTE_TIE_BREAK * average(probs)


def fit_curves(val_probs_list, val_labels, *, n_classes: int, min_val: int = 50) -> list[Reliability]:
    """Each teacher's reliability (accuracy given its own margin) fitted on V."""
    return [fit_reliability(p, val_labels, n_classes=n_classes, min_val=min_val)
            for p in check_teacher_probs(val_probs_list)]


def reliability_weights(probs_list, curves: list[Reliability]) -> np.ndarray:
    """(n, K) weights: each teacher's log-odds of being right at its margin on each example,
    floored at 0 (chance or worse gets none). The curve is capped at (n_V + 1)/(n_V + 2), the most
    V can vouch for, so a curve at 1.0 gives a large but finite weight."""
    probs = check_teacher_probs(probs_list)
    if len(curves) != len(probs):
        raise TeacherOutputError(f"{len(probs)} teachers but {len(curves)} reliability curves; fit one per teacher.")
    c = probs[0].shape[1]
    w = np.empty((len(probs[0]), len(probs)))
    for k, (p, rel) in enumerate(zip(probs, curves)):
        cap = (rel.n_val + 1.0) / (rel.n_val + 2.0)
        r = np.clip(rel.accuracy_at(teacher_margin(p)), 1e-12, cap)
        w[:, k] = np.maximum(np.log((c - 1) * r / (1.0 - r)), 0.0)
    return w


def reliability_weighted(probs_list, curves: list[Reliability]) -> np.ndarray:
    """The default combination: weighted mean with `reliability_weights` (module doc)."""
    return average(probs_list, reliability_weights(probs_list, curves))


@dataclass(frozen=True)
class LogLinearPool:
    """The `log-linear` combination fitted on V: one weight per teacher (≥ 0) on its
    log-probabilities, one bias per class."""
    weights: np.ndarray
    bias: np.ndarray


def _log_probs(probs_list) -> np.ndarray:
    return np.log(np.maximum(np.stack(check_teacher_probs(probs_list), axis=1), LOG_FLOOR))  # (n, K, C)


def fit_log_linear(val_probs_list, val_labels, *, n_classes: int) -> LogLinearPool:
    """Weights and biases of the log-linear pool minimising log-loss on V plus LOG_LINEAR_L2 times
    their squares (L-BFGS-B, weights bounded at 0, start: equal weights 1/K). Convex, so the answer
    does not depend on the start."""
    from scipy.optimize import minimize
    from scipy.special import log_softmax, softmax
    logp = _log_probs(val_probs_list)
    y = np.asarray(val_labels, dtype=np.int64)
    n, k, c = logp.shape
    if c != n_classes:
        raise TeacherOutputError(f"the teachers give {c} classes but the task has {n_classes}.")
    if n == 0:
        raise TeacherOutputError("the log-linear combination is fitted on V, and V holds no example with every "
                                 "teacher's output; give V outputs, or use combination average or vote.")
    rows = np.arange(n)

    def loss(theta):
        z = np.einsum("k,nkc->nc", theta[:k], logp) + theta[k:]
        g = softmax(z, axis=1)
        g[rows, y] -= 1.0
        g /= n
        return (-log_softmax(z, axis=1)[rows, y].mean() + LOG_LINEAR_L2 * theta @ theta,
                np.concatenate([np.einsum("nc,nkc->k", g, logp), g.sum(axis=0)]) + 2 * LOG_LINEAR_L2 * theta)
    start = np.concatenate([np.full(k, 1.0 / k), np.zeros(c)])
    theta = minimize(loss, start, jac=True, method="L-BFGS-B", bounds=[(0.0, None)] * k + [(None, None)] * c).x
    return LogLinearPool(weights=theta[:k], bias=theta[k:])


def log_linear(probs_list, pool: LogLinearPool) -> np.ndarray:
    """The log-linear pool's (n, C) distribution (module doc)."""
    from scipy.special import softmax
    logp = _log_probs(probs_list)
    if logp.shape[1] != len(pool.weights) or logp.shape[2] != len(pool.bias):
        raise TeacherOutputError(f"the pool was fitted on {len(pool.weights)} teachers and {len(pool.bias)} classes, "
                                 f"got {logp.shape[1]} and {logp.shape[2]}.")
    return softmax(np.einsum("k,nkc->nc", pool.weights, logp) + pool.bias, axis=1)


def fit_combination(combination: str, val_probs_list, val_labels, *, n_classes: int, min_val: int = 50):
    """What `combination` learns on V: the teachers' reliability curves (`reliability`), the pool's
    weights (`log-linear`), or None (average, vote)."""
    if combination == "reliability":
        return fit_curves(val_probs_list, val_labels, n_classes=n_classes, min_val=min_val)
    if combination == "log-linear":
        return fit_log_linear(val_probs_list, val_labels, n_classes=n_classes)
    return None


def combine(combination: str, probs_list, fitted=None) -> np.ndarray:
    """One combined (n, C) distribution; `fitted`: what `fit_combination` learned on V, for
    `reliability` (one curve per teacher) and `log-linear` (a LogLinearPool)."""
    if combination not in COMBINATIONS:
        raise TeacherOutputError(f"unknown combination {combination!r}; choose one of {', '.join(COMBINATIONS)}.")
    if combination == "average":
        return average(probs_list)
    if combination == "vote":
        return vote(probs_list)
    if fitted is None:
        raise TeacherOutputError(f"the {combination} combination is fitted on V (fit_combination); give V outputs "
                                 "and labels, or use combination average or vote.")
    if combination == "log-linear":
        return log_linear(probs_list, fitted)
    return reliability_weighted(probs_list, fitted)


def combine_val_crossfit(combination: str, val_probs_list, val_labels, *, n_classes: int, min_val: int = 50,
                         folds: int = 2) -> np.ndarray:
    """The combination on V itself, each V row combined by what was fitted on the OTHER folds, so
    the V rows the corrections then judge the combined teacher by did not also set its weights
    (rows are assigned to folds by position: row i in fold i mod `folds`)."""
    probs = check_teacher_probs(val_probs_list)
    if combination not in FITTED_ON_V:
        return combine(combination, probs)
    y = np.asarray(val_labels)
    fold = np.arange(len(y)) % folds
    out = np.empty_like(probs[0])
    for f in range(folds):
        fit, use = fold != f, fold == f
        fitted = fit_combination(combination, [p[fit] for p in probs], y[fit], n_classes=n_classes, min_val=min_val)
        out[use] = combine(combination, [p[use] for p in probs], fitted)
    return out
