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


LABELED_ONLY = "labeled-only"  # methods.LABELED_ONLY: auto's no-distillation candidate


def paired_se(a, b) -> float:
    """Standard error of mean(a − b) over the same examples (sd/√n): the noise of a comparison on V."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else float("inf")


def _show(name: str, c: dict) -> str:
    lo, hi = c["interval95"]
    return f"{name} {100 * c['val_accuracy']:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"


def advice_from_candidates(auto: dict) -> dict:
    """What the candidates' V scores support (auto's record, `methods.choose_on_validation`).

    One number on V does not tell which correction pays (BENCHMARKS.md, "Which advice to trust"),
    so the advice is the comparison itself: "dont-distil" when the labeled-only student is above
    the best distilled candidate by more than noise; "within-noise" when V cannot tell the best
    from another candidate (not distilling included); "clear" otherwise. It names auto's choice.
    """
    c, ref, chosen = auto["candidates"], auto["reference"], auto["chosen"]
    k = float(auto.get("noise_se", 1.0))
    order = [o for o in auto.get("order", c) if o in c]
    near = [o for o in order if o not in (ref, LABELED_ONLY) and c[o]["within_noise"]]
    lab = c.get(LABELED_ONLY)
    out = {"method": chosen, "best": ref, "near": near}
    pays = ""
    if lab is not None:
        d, se = lab["diff_vs_reference"], lab["diff_se"]
        gap = f"{100 * d:+.1f} ± {100 * se:.1f} points, paired"
        if d > k * se + 1e-12:
            return {**out, "verdict": "dont-distil", "text": (
                f"Don't distil: on V the labeled-only student ({_show(LABELED_ONLY, lab)}) is above the best distilled "
                f"candidate ({_show(ref, c[ref])}) by more than noise ({gap}). Keep the labeled-only student.")}
        if d >= -k * se - 1e-12:
            return {**out, "near": [LABELED_ONLY, *near], "verdict": "within-noise", "text": (
                f"Within noise: on V not distilling ({_show(LABELED_ONLY, lab)}) and the best distilled candidate "
                f"({_show(ref, c[ref])}) cannot be told apart ({gap}); auto kept {chosen}. Distilling does not "
                "clearly pay here.")}
        pays = f" Distilling pays: labeled-only is below it by more than noise ({gap})."
    if near:
        return {**out, "verdict": "within-noise", "text": (
            f"Within noise: {_show(ref, c[ref])} scored best on V, but V cannot tell it from "
            f"{', '.join(near)} (within {k:g} paired SE); auto kept "
            + (f"the simplest, {chosen}." if chosen != ref else
               f"{ref}: keeping the best scored higher on V examples the choice did not see.") + pays)}
    return {**out, "verdict": "clear", "text": (
        f"{_show(ref, c[ref])} is best on V, above every other candidate by more than noise." + pays)}


def advice_from_run(metrics: dict) -> dict | None:
    """What V supports after one method: whether distilling with it beat not distilling, beyond
    noise (paired SE on V when recorded). Which correction pays it does not say: one number cannot."""
    s = metrics.get("student", {}).get("val_accuracy")
    if s is None:
        return None
    method, t = metrics.get("method", "?"), metrics.get("teacher_val_accuracy")
    head = f"On V the distilled student ({method}) is at {100 * s:.1f}%" + (
        f", its teacher at {100 * t:.1f}%" if t is not None else "")
    tail = (" Which correction pays, one number on V cannot tell (BENCHMARKS.md): `method: auto` scores "
            "labeled-only, λ variants and the corrections on V with intervals and names the winner.")
    lab = metrics.get("labeled_only", {})
    if lab.get("val_accuracy") is None:
        return {"verdict": "unknown", "method": None, "text": head + "." + tail}
    d = s - lab["val_accuracy"]
    n = (metrics.get("sizes") or {}).get("n_val") or 0
    se = lab.get("val_diff_se")
    if se is None:  # unpaired (wider): the two binomial SEs combined
        se = float(np.sqrt(sum(p * (1 - p) for p in (s, lab["val_accuracy"])) / n)) if n else float("inf")
    gap = (f"the labeled-only student is at {100 * lab['val_accuracy']:.1f}% "
           f"({100 * d:+.1f} ± {100 * se:.1f} points for distilling)")
    if -d > se:
        return {"verdict": "dont-distil", "method": LABELED_ONLY, "text": (
            head + f"; {gap}: don't distil with {method}. A correction may still pay where {method} does not "
            "(BENCHMARKS.md: LetterRecognition/A300): `method: auto` compares labeled-only, λ variants and the "
            "corrections on V and keeps labeled-only if it still wins.")}
    if d <= se:
        return {"verdict": "within-noise", "method": method, "text": (
            head + f"; {gap}: within noise, distilling does not clearly pay." + tail)}
    return {"verdict": "distil", "method": method, "text": head + f"; {gap}: distilling pays." + tail}


def method_advice(metrics: dict) -> dict | None:
    """The advice printed after a run ({verdict, method, text}): from auto's candidates when it
    ran, else from the one method against the labeled-only student. None without V scores."""
    auto = (metrics.get("train_info") or {}).get("auto")
    if auto and auto.get("candidates"):
        return advice_from_candidates(auto)
    return advice_from_run(metrics)


def machine_record() -> dict:
    """What a result was measured on, recorded beside the numbers."""
    import platform
    import torch
    return {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cuda": torch.cuda.is_available()}
