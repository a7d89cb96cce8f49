"""Validation of teacher outputs at the boundary, shared by teachers, the store and the loaders.

Teacher outputs come from user files, remote APIs and models; a single NaN or a row that does
not sum to one silently poisons a whole training run, so everything is checked once, here.
"""

from __future__ import annotations

import numpy as np

from .errors import TeacherOutputError

PROB_SUM_TOLERANCE = 1e-3


def validate_probabilities(probs, n_classes: int | None = None, *, name: str = "teacher outputs",
                           atol: float = PROB_SUM_TOLERANCE) -> np.ndarray:
    """Return `probs` as a float32 (n, C) array after checking it is a probability table.

    Raises TeacherOutputError naming the first offending row and the fix.
    """
    arr = np.asarray(probs)
    if arr.ndim != 2:
        raise TeacherOutputError(
            f"{name}: expected a 2-d array of shape (n_examples, n_classes), got shape {arr.shape}. "
            "Return one row of class probabilities per example.")
    if n_classes is not None and arr.shape[1] != n_classes:
        raise TeacherOutputError(
            f"{name}: the teacher gives {arr.shape[1]} classes but the labels have {n_classes}. "
            "Make the teacher's class order match the label encoding (0..n_classes-1), or set "
            "n_classes to the teacher's class count.")
    if arr.shape[1] < 1:
        raise TeacherOutputError(f"{name}: zero classes in the teacher outputs.")
    arr = arr.astype(np.float32, copy=False)
    # one pass for the row sums: a row holding NaN or ±inf has a sum that is not finite (float32
    # values summed in float64 cannot overflow), so the sums find those rows too
    with np.errstate(invalid="ignore", over="ignore"):  # inf + -inf: NaN, reported below
        sums = arr.sum(axis=1, dtype=np.float64)
    bad = ~np.isfinite(sums)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TeacherOutputError(
            f"{name}: {int(bad.sum())} row(s) contain NaN or inf (first at row {row}: {arr[row][:8]}). "
            "Fix the teacher or drop those examples; nothing was stored for this batch.")
    if arr.size and arr.min() < -1e-6:
        row = int(np.flatnonzero((arr < -1e-6).any(axis=1))[0])
        raise TeacherOutputError(
            f"{name}: negative probabilities (first at row {row}). If these are logits, declare "
            "the output kind as 'logits' so they are passed through a softmax.")
    off = np.abs(sums - 1.0) > atol
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise TeacherOutputError(
            f"{name}: {int(off.sum())} row(s) do not sum to 1 (first at row {row}: sum={sums[row]:.6f}). "
            "If these are logits declare kind 'logits'; if they are top-k probabilities declare "
            "kind 'topk'; otherwise renormalise them.")
    return np.clip(arr, 0.0, 1.0)


# Up to this many classes the row max and top two run as a loop over the columns (C elementwise
# passes, exact: max and min only): numpy's reductions along short rows are 2-3x slower (1M x 10
# float32: max 111 vs 35 ms, the top two by np.partition 81 vs 44 ms, on this machine).
_COLUMN_LOOP_MAX = 64


def row_max(p: np.ndarray) -> np.ndarray:
    """Largest value per row of a 2-d array (the top-1 probability)."""
    if p.shape[1] > _COLUMN_LOOP_MAX:
        return p.max(axis=1)
    top = p[:, 0].copy()
    for j in range(1, p.shape[1]):
        np.maximum(top, p[:, j], out=top)
    return top


def top_two_gap(p: np.ndarray) -> np.ndarray:
    """Largest minus second-largest value per row of a 2-d array with >= 2 columns (the margin)."""
    if p.shape[1] > _COLUMN_LOOP_MAX:
        top2 = np.partition(p, p.shape[1] - 2, axis=1)[:, -2:]
        return top2[:, 1] - top2[:, 0]  # partition puts the largest last: no abs needed
    first, second = np.maximum(p[:, 0], p[:, 1]), np.minimum(p[:, 0], p[:, 1])
    tmp = np.empty_like(first)
    for j in range(2, p.shape[1]):  # a new column c: second = max(second, min(first, c)), first = max(first, c)
        c = p[:, j]
        np.maximum(second, np.minimum(first, c, out=tmp), out=second)
        np.maximum(first, c, out=first)
    return np.subtract(first, second, out=first)


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def logits_to_probabilities(logits, n_classes: int | None = None, *, name: str = "teacher logits") -> np.ndarray:
    arr = np.asarray(logits, dtype=np.float64)
    if arr.ndim != 2:
        raise TeacherOutputError(f"{name}: expected shape (n_examples, n_classes), got {arr.shape}.")
    if not np.isfinite(arr).all():
        row = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise TeacherOutputError(f"{name}: NaN or inf logits (first at row {row}). Fix the teacher outputs.")
    return validate_probabilities(softmax(arr), n_classes, name=name)


def topk_to_dense(indices, values, n_classes: int, *, name: str = "teacher top-k outputs") -> np.ndarray:
    """Dense (n, C) probabilities from top-k class indices and probabilities.

    The mass not covered by the top k is spread evenly over the other classes: the
    maximum-entropy completion, which keeps the top-k ranking and sums to one.
    """
    idx = np.asarray(indices)
    val = np.asarray(values, dtype=np.float64)
    if idx.shape != val.shape or idx.ndim != 2:
        raise TeacherOutputError(
            f"{name}: indices {idx.shape} and probabilities {val.shape} must both be (n_examples, k).")
    n, k = idx.shape
    if k > n_classes:
        raise TeacherOutputError(f"{name}: k={k} is larger than the number of classes ({n_classes}).")
    if n and (idx.min() < 0 or idx.max() >= n_classes):
        raise TeacherOutputError(
            f"{name}: class indices must lie in [0, {n_classes - 1}], got range [{idx.min()}, {idx.max()}].")
    if not np.isfinite(val).all():
        raise TeacherOutputError(f"{name}: NaN or inf in the top-k probabilities.")
    if (val < 0).any():
        raise TeacherOutputError(f"{name}: negative top-k probabilities; pass probabilities, not logits.")
    covered = val.sum(axis=1)
    if (covered > 1 + PROB_SUM_TOLERANCE).any():
        row = int(np.flatnonzero(covered > 1 + PROB_SUM_TOLERANCE)[0])
        raise TeacherOutputError(f"{name}: top-k probabilities sum to {covered[row]:.4f} > 1 at row {row}.")
    if n:
        dup = (np.sort(idx, axis=1)[:, 1:] == np.sort(idx, axis=1)[:, :-1]).any(axis=1) if k > 1 else np.zeros(n, bool)
        if dup.any():
            raise TeacherOutputError(f"{name}: repeated class index within a row (first at row {int(np.flatnonzero(dup)[0])}).")
    rest = n_classes - k
    dense = np.zeros((n, n_classes), dtype=np.float64)
    if rest > 0:
        dense += (np.clip(1.0 - covered, 0.0, None) / rest)[:, None]
    np.put_along_axis(dense, idx.astype(np.int64), val, axis=1)
    if rest == 0:
        dense /= dense.sum(axis=1, keepdims=True)
    return dense.astype(np.float32)


def dense_to_topk(probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k class indices (descending probability) and their probabilities."""
    probs = np.asarray(probs)
    k = min(int(k), probs.shape[1])
    part = np.argpartition(-probs, k - 1, axis=1)[:, :k]
    vals = np.take_along_axis(probs, part, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")
    return np.take_along_axis(part, order, axis=1).astype(np.int32), np.take_along_axis(vals, order, axis=1)


# ---------------------------------------------------------------------------------------------- class order

def class_permutation(teacher_classes, data_classes, *, name: str = "teacher") -> np.ndarray | None:
    """Column index into the teacher's outputs for each data class, matched by name; None when the
    orders agree. Both lists must hold the same names (a teacher that knows other classes cannot be
    matched silently)."""
    theirs = [str(c).strip() for c in teacher_classes]
    ours = [str(c).strip() for c in data_classes]
    if len(set(theirs)) != len(theirs):
        raise TeacherOutputError(f"{name}: class names {theirs} repeat a name; give each output column one class.")
    if sorted(theirs) != sorted(ours):
        raise TeacherOutputError(
            f"{name}: its classes {theirs[:20]} are not the data's classes {ours[:20]} (missing "
            f"{sorted(set(ours) - set(theirs))[:10]}, unknown {sorted(set(theirs) - set(ours))[:10]}). Name the "
            "teacher's classes exactly as the labels (teacher.classes / data.classes).")
    perm = np.array([theirs.index(c) for c in ours], np.int64)
    return None if (perm == np.arange(len(perm))).all() else perm


def suspected_permutation(probs_val, labels_val, class_names=None, *, min_gain: float = 0.1,
                          min_examples: int = 10) -> dict | None:
    """Evidence on V that the teacher numbers its classes differently from the labels.

    The best one-to-one relabelling of the teacher's top labels (Hungarian assignment on the
    confusion matrix) is compared with its accuracy as is; a gain of at least `min_gain` and
    `min_examples` V examples cannot come from a few confused classes, only from a class order
    that differs. Returns {accuracy, relabelled_accuracy, pairs: [(teacher says, labels say)]}
    or None.
    """
    from scipy.optimize import linear_sum_assignment

    probs_val, labels_val = np.asarray(probs_val), np.asarray(labels_val)
    n, C = probs_val.shape
    if n == 0:
        return None
    conf = np.zeros((C, C), np.int64)
    np.add.at(conf, (probs_val.argmax(1), labels_val), 1)  # rows: teacher's class, columns: V's label
    rows, cols = linear_sum_assignment(-conf)
    acc, best = float(np.trace(conf)) / n, float(conf[rows, cols].sum()) / n
    if best - acc < min_gain or (best - acc) * n < min_examples:
        return None
    names = [str(c) for c in class_names] if class_names is not None else [str(i) for i in range(C)]
    pairs = [(names[r], names[c]) for r, c in zip(rows, cols) if r != c and conf[r, c] > 0]
    return {"accuracy": acc, "relabelled_accuracy": best, "pairs": pairs}
