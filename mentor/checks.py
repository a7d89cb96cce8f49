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
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad)[0])
        raise TeacherOutputError(
            f"{name}: {int(bad.sum())} row(s) contain NaN or inf (first at row {row}: {arr[row][:8]}). "
            "Fix the teacher or drop those examples; nothing was stored for this batch.")
    if (arr < -1e-6).any():
        row = int(np.flatnonzero((arr < -1e-6).any(axis=1))[0])
        raise TeacherOutputError(
            f"{name}: negative probabilities (first at row {row}). If these are logits, declare "
            "the output kind as 'logits' so they are passed through a softmax.")
    sums = arr.sum(axis=1, dtype=np.float64)
    off = np.abs(sums - 1.0) > atol
    if off.any():
        row = int(np.flatnonzero(off)[0])
        raise TeacherOutputError(
            f"{name}: {int(off.sum())} row(s) do not sum to 1 (first at row {row}: sum={sums[row]:.6f}). "
            "If these are logits declare kind 'logits'; if they are top-k probabilities declare "
            "kind 'topk'; otherwise renormalise them.")
    return np.clip(arr, 0.0, 1.0)


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
