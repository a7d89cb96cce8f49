"""Teacher reliability, fitted on the labeled validation set V and used on the pool U.

The picture of a teacher every correction needs (see ../shared/methods.md, "Teacher
reliability"):

- `acc(m)`: the probability that the teacher's top label is right given its margin
  `m = t_(1) − t_(2)`, an isotonic (non-decreasing) regression of `[argmax t = y]` on `m`;
- `topk_accuracy[k-1]`: the fraction of V whose true label is among the teacher's top k;
- overall and per-class accuracy of the teacher on V;
- optionally one temperature that minimises the teacher's NLL on V.

Plain functions plus one small fitted object (`Reliability`) that stores the curve as knots,
so it is cheap to evaluate, to print and to serialise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np

from .checks import softmax, top_two_gap, validate_probabilities
from .errors import DataError, TeacherOutputError

DEFAULT_MIN_VAL = 50


def teacher_margin(probs) -> np.ndarray:
    """Top-1 minus top-2 probability per row, in [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim != 2:
        raise TeacherOutputError(f"teacher probabilities must be 2-d (n_examples, n_classes), got shape {p.shape}.")
    if p.shape[1] < 2:
        raise TeacherOutputError("no margin with one class: the teacher outputs a single class, so there is no "
                                 "runner-up to compare with. Give the teacher's full class distribution (C >= 2).")
    return top_two_gap(p)


def check_validation(teacher_probs_val, val_labels, n_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate V's teacher outputs and true labels; return them as float64 (n, C) and int64 (n,)."""
    y = np.asarray(val_labels)
    if y.ndim != 1 or len(y) == 0:
        raise DataError(f"the validation set V is empty or not 1-d (labels of shape {y.shape}); reliability is "
                        "estimated on V, so give it labeled examples (hundreds are typical).")
    if not (np.issubdtype(y.dtype, np.integer) or (np.issubdtype(y.dtype, np.floating) and np.all(y == np.round(y)))):
        raise DataError(f"V labels must be integer class indices 0..{n_classes - 1}, got dtype {y.dtype}.")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= n_classes:
        raise DataError(f"V labels must lie in [0, {n_classes - 1}] (n_classes={n_classes}), got range "
                        f"[{y.min()}, {y.max()}]. Encode labels as 0..n_classes-1 in the teacher's class order.")
    p = validate_probabilities(teacher_probs_val, n_classes, name="teacher outputs on V").astype(np.float64)
    if len(p) != len(y):
        raise DataError(f"V has {len(y)} labels but {len(p)} rows of teacher outputs; they must match row for row.")
    return p, y


def fit_accuracy_curve(scores, correct, *, increasing: bool = True, min_val: int = DEFAULT_MIN_VAL,
                       what: str = "teacher accuracy") -> tuple[np.ndarray, np.ndarray, str | None]:
    """Isotonic regression of a 0/1 `correct` indicator on `scores`, as knots for `np.interp`.

    Returns (knots_x, knots_y, fallback). Below `min_val` examples the fit would be noise, so
    it warns and returns a constant curve at the Laplace-smoothed rate (correct+1)/(n+2);
    `fallback` then says so (None otherwise). Constant data (all right, all wrong) gives a
    constant curve, never NaN. Outside the fitted range the curve is clipped to its end values.
    """
    from sklearn.isotonic import IsotonicRegression

    s = np.asarray(scores, dtype=np.float64)
    c = np.asarray(correct, dtype=np.float64)
    n = len(c)
    if n == 0:
        raise DataError(f"cannot estimate {what}: the validation set is empty.")
    if n < min_val:
        level = (c.sum() + 1.0) / (n + 2.0)
        fallback = f"constant curve at the smoothed accuracy (correct+1)/(n+2) = {level:.3f} (V has {n} < {min_val})"
        warnings.warn(f"V has only {n} examples (fewer than min_val={min_val}), too few to fit {what} by isotonic "
                      f"regression; falling back to a constant curve at the Laplace-smoothed accuracy "
                      f"(correct+1)/(n+2) = {level:.3f}, so every example gets the same reliability. Label more "
                      "validation examples for a real curve.", UserWarning, stacklevel=3)
        return np.array([0.0]), np.array([level]), fallback
    iso = IsotonicRegression(increasing=increasing, out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(s, c)
    x, y = np.asarray(iso.X_thresholds_, dtype=np.float64), np.asarray(iso.y_thresholds_, dtype=np.float64)
    return x, np.clip(np.nan_to_num(y, nan=c.mean()), 0.0, 1.0), None


@dataclass
class Reliability:
    """How often the teacher is right on V, as a function of its margin and of k.

    `accuracy_at(m)` interpolates the isotonic curve (piecewise linear between knots, clipped
    outside them, exactly like sklearn's `IsotonicRegression.predict` with out_of_bounds="clip").
    `per_class_accuracy[c]` is NaN for a class absent from V.
    """
    n_classes: int
    n_val: int
    margin_knots: np.ndarray
    accuracy_knots: np.ndarray
    topk_accuracy: np.ndarray
    accuracy: float
    per_class_accuracy: np.ndarray
    fallback: str | None = None

    def accuracy_at(self, margins) -> np.ndarray:
        return np.interp(np.asarray(margins, dtype=np.float64), self.margin_knots, self.accuracy_knots)

    def smallest_k(self, level: float) -> int:
        """Smallest k whose top-k accuracy on V is at least `level`; C when none reaches it."""
        hit = np.flatnonzero(self.topk_accuracy >= level - 1e-12)
        return int(hit[0]) + 1 if len(hit) else self.n_classes

    def curve(self, n_points: int = 101) -> tuple[np.ndarray, np.ndarray]:
        """(margins, accuracy) on an even grid of [0, 1], for plotting the reliability curve."""
        m = np.linspace(0.0, 1.0, int(n_points))
        return m, self.accuracy_at(m)

    def to_dict(self) -> dict:
        """JSON-ready summary: accuracies, top-k accuracies and the curve at margins 0, 0.1, …, 1."""
        m, a = self.curve(11)
        return {"n_val": self.n_val, "accuracy": float(self.accuracy),
                "topk_accuracy": [round(float(v), 6) for v in self.topk_accuracy],
                "per_class_accuracy": [None if np.isnan(v) else round(float(v), 6) for v in self.per_class_accuracy],
                "curve": {"margin": [round(float(v), 3) for v in m], "accuracy": [round(float(v), 6) for v in a]},
                "fallback": self.fallback}


def fit_reliability(teacher_probs_val, val_labels, *, n_classes: int, min_val: int = DEFAULT_MIN_VAL) -> Reliability:
    """Fit the teacher's reliability on V (teacher outputs at temperature 1 and true labels).

    Errors: DataError for empty V, mismatched lengths or labels outside [0, C-1];
    TeacherOutputError for malformed outputs or a single class. A V smaller than `min_val`
    warns and falls back to a constant curve (see `fit_accuracy_curve`).
    """
    p, y = check_validation(teacher_probs_val, val_labels, n_classes)
    margins = teacher_margin(p)
    correct = p.argmax(axis=1) == y
    mx, my, fallback = fit_accuracy_curve(margins, correct, increasing=True, min_val=min_val)
    # rank of the true label in the teacher's ordering (0 = top); ties broken by class order
    order = np.argsort(-p, axis=1, kind="stable")
    rank = np.argmax(order == y[:, None], axis=1)
    topk = np.array([(rank < k).mean() for k in range(1, n_classes + 1)])
    per_class = np.full(n_classes, np.nan)
    for c in np.unique(y):
        per_class[c] = correct[y == c].mean()
    return Reliability(n_classes=n_classes, n_val=len(y), margin_knots=mx, accuracy_knots=my, topk_accuracy=topk,
                       accuracy=float(correct.mean()), per_class_accuracy=per_class, fallback=fallback)


def apply_temperature(probs, temperature: float) -> np.ndarray:
    """Re-temper probabilities: softmax(log p / T) (exact, since log p equals the logits up to a row constant)."""
    if not temperature > 0:
        raise DataError(f"temperature must be > 0, got {temperature}.")
    return softmax(np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-12, None)), float(temperature))


def fit_temperature(teacher_probs_val, val_labels, *, bounds: tuple[float, float] = (0.05, 20.0)) -> float:
    """The one temperature T (within `bounds`) that minimises the teacher's NLL on V."""
    from scipy.optimize import minimize_scalar

    p0 = np.asarray(teacher_probs_val)
    p, y = check_validation(p0, val_labels, p0.shape[1] if p0.ndim == 2 else 0)
    logp = np.log(np.clip(p, 1e-12, None))

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(axis=1)) - z[np.arange(len(y)), y]))

    res = minimize_scalar(nll, bounds=(np.log(bounds[0]), np.log(bounds[1])), method="bounded")
    return float(np.exp(res.x))
