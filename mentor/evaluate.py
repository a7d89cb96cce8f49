"""Evaluation metrics: plain functions of probabilities and labels."""

from __future__ import annotations

import numpy as np


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((np.asarray(probs).argmax(axis=1) == np.asarray(labels)).mean())


def nll(probs: np.ndarray, labels: np.ndarray, eps: float = 1e-12) -> float:
    """Mean negative log-likelihood of the true label."""
    p = np.asarray(probs, dtype=np.float64)[np.arange(len(labels)), np.asarray(labels)]
    return float(-np.log(np.clip(p, eps, 1.0)).mean())


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ_b (|b|/n)·|acc(b) − conf(b)|."""
    probs = np.asarray(probs, dtype=np.float64)
    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    bins = np.clip((conf * n_bins).astype(int), 0, n_bins - 1)
    ece = 0.0
    for b in range(n_bins):
        m = bins == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def confidence_auroc(probs: np.ndarray, labels: np.ndarray) -> float | None:
    """How well the top probability separates right from wrong answers (AUROC; 0.5 = no better
    than chance). None when all answers are right or all wrong (nothing to separate)."""
    probs = np.asarray(probs, dtype=np.float64)
    correct = probs.argmax(axis=1) == np.asarray(labels)
    if correct.all() or not correct.any():
        return None
    from sklearn.metrics import roc_auc_score
    return float(roc_auc_score(correct, probs.max(axis=1)))


def agreement(probs_a: np.ndarray, probs_b: np.ndarray) -> float:
    """Fraction of examples on which two models predict the same top label."""
    return float((np.asarray(probs_a).argmax(axis=1) == np.asarray(probs_b).argmax(axis=1)).mean())


def gap_closed(student: float, labeled_only: float, teacher: float) -> float:
    """(student − labeled-only) / (teacher − labeled-only): 1 means the student caught up with
    the teacher, 0 means distillation added nothing. NaN when the teacher is no better than
    the labeled-only student (the ratio is then meaningless)."""
    denom = teacher - labeled_only
    if abs(denom) < 1e-9:
        return float("nan")
    return float((student - labeled_only) / denom)


def gap_closed_verdict(student_right, labeled_only_right, teacher_right) -> tuple[float | None, str | None]:
    """(gap closed, None) where the ratio means something, else (None, why not).

    Arguments are per-example correctness on the same test examples. The ratio means something
    when the teacher is clearly better than the labeled-only student (by more than two standard
    errors of the paired difference) and the distilled student is not below the labeled-only one.
    """
    s, lab, t = (np.asarray(a, dtype=np.float64) for a in (student_right, labeled_only_right, teacher_right))
    n = len(t)
    diff = t - lab
    se = float(diff.std(ddof=1) / np.sqrt(n)) if n > 1 else float("inf")
    if diff.mean() <= max(2 * se, 1e-9):
        return None, (f"not shown: the teacher ({100 * t.mean():.1f}%) is not clearly better than the labeled-only "
                      f"student ({100 * lab.mean():.1f}%) on {n} test examples, so there is no gap to close")
    if s.mean() < lab.mean():
        return None, (f"not shown: the distilled student ({100 * s.mean():.1f}%) is below the labeled-only student "
                      f"({100 * lab.mean():.1f}%); distilling did not help here")
    return gap_closed(s.mean(), lab.mean(), t.mean()), None


def classification_report(probs: np.ndarray, labels: np.ndarray, reference_probs: np.ndarray | None = None) -> dict:
    """The standard metric block written to metrics.json."""
    out = {"accuracy": accuracy(probs, labels), "nll": nll(probs, labels),
           "ece": expected_calibration_error(probs, labels), "n": int(len(labels))}
    if reference_probs is not None:
        out["agreement_with_teacher"] = agreement(probs, reference_probs)
    return out


def regime_hint(metrics: dict) -> str | None:
    """Which kind of correction tends to pay, from V only (README: "Which one should I use?")."""
    t, s = metrics.get("teacher_val_accuracy"), metrics.get("student", {}).get("val_accuracy")
    if t is None or s is None:
        return None
    head = f"On V the distilled student ({100 * s:.1f}%) "
    lab = metrics.get("labeled_only", {}).get("val_accuracy")
    if lab is not None and lab > s + 0.005:
        return (head + f"is below the labeled-only student ({100 * lab:.1f}%): distilling does not pay here "
                f"(the teacher is at {100 * t:.1f}% on V). Keep the labeled-only student, or compare methods "
                "with method: auto.")
    if s >= t - 0.005:
        return (head + f"reaches its teacher ({100 * t:.1f}%): what is left is the teacher's noise; corrections "
                "such as slam-hard tend to help here (or use method: auto).")
    if s < t - 0.03:
        return (head + f"stays well below its teacher ({100 * t:.1f}%): it is capacity-bound; keep soft targets "
                "(calibrated-soft) and avoid filtering corrections (or use method: auto).")
    return (head + f"is close to its teacher ({100 * t:.1f}%): no clear regime; compare corrections on V "
            "with method: auto.")


def machine_record() -> dict:
    """What a result was measured on, recorded beside the numbers."""
    import platform
    import torch
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
