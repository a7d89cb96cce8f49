"""Several teachers at once: combine their per-example class distributions into one teacher.

Plain functions on arrays (one (n, C) probability array per teacher); the corrections then treat
the combination as one teacher whose reliability is fitted on V as usual. Three combinations:

- `reliability` (the default): a weighted average whose per-example weights come from EACH
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
"""

from __future__ import annotations

import numpy as np

from .errors import TeacherOutputError
from .reliability import Reliability, fit_reliability, teacher_margin

COMBINATIONS = ("reliability", "average", "vote")
DEFAULT_COMBINATION = "reliability"
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


def combine(combination: str, probs_list, curves: list[Reliability] | None = None) -> np.ndarray:
    """One combined (n, C) distribution; `curves` (one per teacher, fitted on V) for `reliability`."""
    if combination not in COMBINATIONS:
        raise TeacherOutputError(f"unknown combination {combination!r}; choose one of {', '.join(COMBINATIONS)}.")
    if combination == "average":
        return average(probs_list)
    if combination == "vote":
        return vote(probs_list)
    if curves is None:
        raise TeacherOutputError("the reliability combination needs each teacher's reliability curve on V "
                                 "(fit_curves); give V outputs and labels, or use combination average or vote.")
    return reliability_weighted(probs_list, curves)


def combine_val_crossfit(combination: str, val_probs_list, val_labels, *, n_classes: int, min_val: int = 50,
                         folds: int = 2) -> np.ndarray:
    """The combination on V itself, each V row weighted by curves fitted on the OTHER folds, so
    the V rows the corrections then judge the combined teacher by did not also set its weights
    (rows are assigned to folds by position: row i in fold i mod `folds`)."""
    probs = check_teacher_probs(val_probs_list)
    if combination != "reliability":
        return combine(combination, probs)
    y = np.asarray(val_labels)
    fold = np.arange(len(y)) % folds
    out = np.empty_like(probs[0])
    for f in range(folds):
        fit, use = fold != f, fold == f
        curves = fit_curves([p[fit] for p in probs], y[fit], n_classes=n_classes, min_val=min_val)
        out[use] = reliability_weighted([p[use] for p in probs], curves)
    return out
