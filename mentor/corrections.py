"""Corrections for teacher mistakes: plain functions on arrays/tensors, plus thin objectives.

Everything here works inside any training loop; the objectives (`SlamObjective`,
`ForwardCorrectionObjective`, `TaidObjective`) only bundle per-example state for the bundled
trainer's `pool_loss(student_logits, teacher_probs, pool_index)` contract.

- Weighted distillation: per-example weights `w(x) = P(teacher right | score(x))`, normalised
  to mean 1 over the pool (`margin_weights`, `disagreement_weights`; reconstructed).
- SLaM: score the student's mixed prediction
  `mix_j = α·f_j + (1 − α)·(1 − f_j)·[j ∈ topk(t)]` (verified form; `/(k − 1)` on the second
  term in the normalised variant) with `α = acc(margin)` and `k` from top-k accuracy on V
  (both reconstructed; the rules are options).
- Baselines: confidence thresholding, global forward correction, TAID.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .errors import ConfigError, DataError
from .losses import EPS, distillation_targets
from .reliability import Reliability, check_validation, fit_accuracy_curve, teacher_margin

# ---------------------------------------------------------------------------------------------- weights


def normalize_weights(weights) -> np.ndarray:
    """w / mean(w), so the weighted loss keeps the scale (and the learning rate its meaning)."""
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or not np.isfinite(w).all() or (w < 0).any():
        raise DataError(f"weights must be a finite, non-negative 1-d array, got shape {w.shape}.")
    if len(w) == 0 or not w.any():
        raise DataError("all weights are zero: the teacher looks always wrong on V (its estimated accuracy is 0 "
                        "everywhere), so weighting would drop the whole pool. Check V's labels against the "
                        "teacher's class order, or use vanilla distillation.")
    return (w / w.mean()).astype(np.float32)


def margin_weights(teacher_probs_pool, reliability: Reliability) -> np.ndarray:
    """Weighted distillation, one pass: `w(x) = acc(mT(x))`, normalised to mean 1 over the pool."""
    return normalize_weights(reliability.accuracy_at(teacher_margin(teacher_probs_pool)))


def disagreement_score(teacher_probs, student_probs) -> np.ndarray:
    """½‖t − f‖₁ per row: total-variation distance between teacher and student, in [0, 1]."""
    t, f = np.asarray(teacher_probs, dtype=np.float64), np.asarray(student_probs, dtype=np.float64)
    if t.shape != f.shape:
        raise DataError(f"teacher and student probabilities must have the same shape, got {t.shape} and {f.shape}.")
    return 0.5 * np.abs(t - f).sum(axis=1)


def disagreement_weights(teacher_probs, student_probs, teacher_probs_val, student_probs_val, val_labels, *,
                         min_val: int = 50) -> np.ndarray:
    """Weighted distillation, two passes: weights from how much a first-pass student disagrees.

    `score = ½‖t − f0‖₁`; a non-increasing isotonic map of `[teacher right]` on the score is
    fitted on V (first-pass student's and teacher's outputs there) and applied to the pool;
    weights are normalised to mean 1. A tiny V warns and gives uniform weights.
    """
    tv, y = check_validation(teacher_probs_val, val_labels, np.asarray(teacher_probs_val).shape[-1])
    x, a, _ = fit_accuracy_curve(disagreement_score(tv, student_probs_val), tv.argmax(1) == y, increasing=False,
                                 min_val=min_val, what="teacher accuracy by teacher-student disagreement")
    return normalize_weights(np.interp(disagreement_score(teacher_probs, student_probs), x, a))


def weight_stats(w: np.ndarray) -> dict:
    w = np.asarray(w, dtype=np.float64)
    return {"mean": float(w.mean()), "min": float(w.min()), "max": float(w.max()), "zero_fraction": float((w == 0).mean())}


# ---------------------------------------------------------------------------------------------- SLaM


def _column(v, n: int, like: torch.Tensor) -> torch.Tensor:
    """A scalar or per-example (n,) value as an (n, 1) tensor on `like`'s device and dtype."""
    v = torch.as_tensor(v, device=like.device, dtype=like.dtype)
    return v.expand(n).reshape(n, 1) if v.dim() == 0 else v.reshape(n, 1)


def _topk_mask(teacher_probs: torch.Tensor, k) -> torch.Tensor:
    """[j ∈ topk(t)] per row with a per-example k (ties broken by class order)."""
    n, c = teacher_probs.shape
    order = torch.argsort(teacher_probs, dim=-1, descending=True, stable=True)
    ranks = torch.empty_like(order).scatter_(-1, order, torch.arange(c, device=order.device).expand(n, c))
    return ranks < _column(k, n, teacher_probs)


def _mix_terms(student_probs, teacher_probs, alpha, k, normalized):
    """(α as a column, second term (1 − α)(1 − f_j)[j ∈ topk](/(k − 1)))."""
    n, c = teacher_probs.shape
    _check_k(k, c, normalized)
    kk = torch.as_tensor(k, device=teacher_probs.device)
    a = _column(alpha, n, student_probs)
    second = (1 - a) * (1 - student_probs) * _topk_mask(teacher_probs, kk).to(student_probs.dtype)
    if normalized:
        second = second / (_column(kk, n, student_probs) - 1)
    return a, second


def slam_mix(student_probs: torch.Tensor, teacher_probs: torch.Tensor, alpha, k, normalized: bool = False):
    """SLaM's mixed prediction `α·f_j + (1 − α)·(1 − f_j)·[j ∈ topk(t)]` (÷ (k − 1) if normalised).

    `alpha` and `k` are scalars or per-example tensors of shape (n,). Gradients flow through f.
    """
    a, second = _mix_terms(student_probs, teacher_probs, alpha, k, normalized)
    return a * student_probs + second


def slam_coefficients(alpha, k, topk_mask: torch.Tensor, normalized: bool = False):
    """Per-example constants that make the SLaM mix one fused op per step.

    On the top-k classes `mix_j = α·f_j + (1 − α)(1 − f_j)/d = b·f_j + c` with d = 1 (or k − 1
    normalised), `b = α − (1 − α)/d` and `c = (1 − α)/d`; elsewhere `mix_j = α·f_j`. Returns
    `(log α, b, c, on)` as (n, 1), (n, 1), (n, 1), (n, C) tensors, where `on` marks the entries
    that use `b·f + c` (top-k and α < 1). They depend only on the teacher, so a training loop
    computes them once per pool example instead of sorting the teacher's outputs every step.
    """
    n, c_ = topk_mask.shape
    alpha = torch.as_tensor(alpha)
    dtype = alpha.dtype if torch.is_floating_point(alpha) else torch.float32
    a = _column(alpha, n, torch.empty(0, dtype=dtype, device=topk_mask.device))
    d = _column(k, n, a) - 1 if normalized else torch.ones_like(a)
    c = (1 - a) / d
    return torch.log(a), a - c, c, topk_mask.bool() & (c > 0)


def slam_loss_from_coefficients(student_logits: torch.Tensor, target_probs: torch.Tensor, log_alpha, b, c, on):
    """`−Σ_j target_j · log mix_j` given `slam_coefficients` (the fast path of `slam_loss`).

    Where the second term is 0 (outside the top k, or α = 1) `log mix_j = log α + log f_j`
    exactly, so α = 1 is plain distillation to the last digit and tiny student probabilities
    keep their gradient; elsewhere `mix_j ≥ c > 0` and the log is safe (clamped for rounding).
    """
    logf = F.log_softmax(student_logits, dim=-1)
    mixed = torch.log(torch.addcmul(c, b, logf.exp()).clamp(EPS, 1.0))
    log_mix = torch.where(on, mixed, log_alpha + logf)
    return -(target_probs * log_mix).sum(dim=-1)


def _check_k(k, n_classes: int, normalized: bool) -> None:
    kk = torch.as_tensor(k)
    if bool(((kk < 1) | (kk > n_classes)).any()) or (normalized and bool((kk < 2).any())):
        raise ConfigError(f"SLaM k must lie in [{2 if normalized else 1}, {n_classes}] (n_classes={n_classes}); "
                          "the normalised mix divides by k − 1, so it needs k ≥ 2.")


def slam_loss(student_logits: torch.Tensor, target_probs: torch.Tensor, alpha, k, normalized: bool = False,
              teacher_probs: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example `−Σ_j target_j · log(mix_j)` with the SLaM mix of the student's softmax.

    `target_probs` is the teacher distribution (soft) or its one-hot argmax (hard); the top-k set
    comes from `teacher_probs` (defaults to `target_probs`, right for soft targets; pass the
    teacher's probabilities for hard ones). `alpha` and `k` are scalars or per-example (n,)
    tensors. Same value as scoring `slam_mix` (see `slam_loss_from_coefficients` for how
    α = 1 and tiny probabilities stay exact).
    """
    t = target_probs if teacher_probs is None else teacher_probs
    _check_k(k, t.shape[-1], normalized)
    alpha = torch.as_tensor(alpha, dtype=student_logits.dtype, device=student_logits.device)
    coef = slam_coefficients(alpha, k, _topk_mask(t, torch.as_tensor(k, device=t.device)), normalized)
    return slam_loss_from_coefficients(student_logits, target_probs, *coef)


def sign_change_alpha(normalized: bool, k=2):
    """α at which the gradient on the teacher's classes changes sign: ∂mix_j/∂f_j = α − (1 − α)
    (unnormalised) is 0 at α = ½; α − (1 − α)/(k − 1) (normalised) is 0 at α = 1/k. At that α
    the example gives no gradient; below it, the student is pushed *away* from the teacher."""
    return 1.0 / np.asarray(k, dtype=np.float64) if normalized else 0.5


def slam_alpha(margins, reliability: Reliability, floor=None, *, normalized: bool = False, k=2) -> np.ndarray:
    """α(x) = acc(mT(x)) clipped to [floor, 1].

    The floor defaults to the sign-change point (½ unnormalised, 1/k normalised; see
    `sign_change_alpha`), so an unreliable example is ignored rather than pushed to the wrong
    label; a floor below that point is refused.
    """
    lowest = sign_change_alpha(normalized, k)
    floor = lowest if floor is None else np.asarray(floor, dtype=np.float64)
    if np.any(floor < lowest - 1e-12) or np.any(floor > 1):
        raise ConfigError(f"SLaM α floor must lie in [{'1/k' if normalized else '1/2'}, 1]: below it the mixed "
                          "loss pushes the student away from the teacher's label. Got "
                          f"{np.min(floor)}.")
    return np.clip(reliability.accuracy_at(margins), floor, 1.0)


def slam_k(reliability: Reliability, n_classes: int, rule: str = "topk-accuracy", level: float = 0.9) -> int:
    """SLaM's k: 2 for binary tasks; otherwise by `rule`:

    - "topk-accuracy": the smallest k whose top-k accuracy on V reaches `level` (at least 2,
      so the mix always offers an alternative class; C when no k reaches it);
    - "fixed:K": K itself (2 ≤ K ≤ C).
    """
    if n_classes < 2:
        raise ConfigError("SLaM needs at least two classes.")
    if n_classes == 2:
        return 2
    if rule == "topk-accuracy":
        if not 0 < level <= 1:
            raise ConfigError(f"SLaM k level must lie in (0, 1], got {level}.")
        return int(min(max(2, reliability.smallest_k(level)), n_classes))
    if rule.startswith("fixed:"):
        try:
            k = int(rule.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"SLaM k rule {rule!r}: expected 'fixed:K' with an integer K.") from None
        if not 2 <= k <= n_classes:
            raise ConfigError(f"SLaM k rule {rule!r}: K must lie in [2, {n_classes}].")
        return k
    raise ConfigError(f"unknown SLaM k rule {rule!r}; use 'topk-accuracy' or 'fixed:K'.")


class _PerExample:
    """Holds per-pool-example arrays and serves them, on the right device, by pool index."""

    def __init__(self, **arrays):
        self._np = {name: np.asarray(v) for name, v in arrays.items()}
        self._cache: dict = {}

    def _get(self, name: str, index: torch.Tensor) -> torch.Tensor:
        key = (name, index.device)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self._np[name], device=index.device)
        return self._cache[key][index]

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _check_mode(mode: str) -> str:
    if mode not in ("soft", "hard"):
        raise ConfigError(f"distillation mode must be 'soft' or 'hard', got {mode!r}")
    return mode


class SlamObjective(_PerExample):
    """SLaM on the pool: per-example α and k (arrays over the pool, indexed by `pool_index`).

    Targets are the teacher's probabilities at temperature 1 (soft) or its one-hot top label
    (hard). Given `teacher_probs_pool` (same order as α), the mix's constants and top-k sets are
    computed once here (`slam_coefficients`), so a step costs one fused op more than plain
    distillation; without it they are recomputed from each batch's teacher outputs.
    """

    def __init__(self, alpha: np.ndarray, k: np.ndarray, mode: str = "soft", normalized: bool = False,
                 teacher_probs_pool: np.ndarray | None = None):
        alpha, k = np.asarray(alpha, dtype=np.float64), np.asarray(k, dtype=np.int64)
        if alpha.shape != k.shape or alpha.ndim != 1:
            raise ConfigError(f"alpha and k must be 1-d arrays over the pool of equal length, got {alpha.shape}, {k.shape}.")
        if (k < (2 if normalized else 1)).any():
            raise ConfigError("SLaM k must be ≥ 2 for the normalised mix (≥ 1 otherwise).")
        if (alpha < sign_change_alpha(normalized, k) - 1e-9).any() or (alpha > 1).any():
            raise ConfigError("SLaM α below the sign-change point (½, or 1/k normalised) or above 1 would push "
                              "the student away from the teacher; clip it with `slam_alpha`.")
        arrays = {"alpha": alpha.astype(np.float32), "k": k}
        if teacher_probs_pool is not None:
            arrays.update(_pool_coefficients(np.asarray(teacher_probs_pool, dtype=np.float32), arrays["alpha"], k,
                                             normalized))
        super().__init__(**arrays)
        self.mode, self.normalized = _check_mode(mode), normalized

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        target = distillation_targets(teacher_probs, self.mode)
        if "coef" in self._np:
            coef = self._get("coef", pool_index).to(student_logits.dtype)
            return slam_loss_from_coefficients(student_logits, target, coef[:, 0:1], coef[:, 1:2], coef[:, 2:3],
                                               self._get("on", pool_index))
        return slam_loss(student_logits, target, self._get("alpha", pool_index).to(student_logits.dtype),
                         self._get("k", pool_index), self.normalized, teacher_probs=teacher_probs)


def _pool_coefficients(teacher_probs: np.ndarray, alpha: np.ndarray, k: np.ndarray, normalized: bool,
                       chunk: int = 65536) -> dict:
    """`slam_coefficients` over the whole pool, in chunks (the top-k sort needs n×C indices)."""
    if teacher_probs.ndim != 2 or len(teacher_probs) != len(alpha):
        raise ConfigError(f"teacher_probs_pool must be (n_pool, C) with n_pool = len(alpha) = {len(alpha)}, "
                          f"got {teacher_probs.shape}.")
    _check_k(k, teacher_probs.shape[1], normalized)
    coef, on = [], []
    for s in range(0, len(alpha), chunk):
        t, kk = torch.from_numpy(teacher_probs[s:s + chunk]), torch.from_numpy(k[s:s + chunk])
        la, b, c, o = slam_coefficients(torch.from_numpy(alpha[s:s + chunk]), kk, _topk_mask(t, kk), normalized)
        coef.append(torch.cat([la, b, c], dim=1).numpy())
        on.append(o.numpy())
    return {"coef": np.concatenate(coef) if coef else np.zeros((0, 3), np.float32),
            "on": np.concatenate(on) if on else np.zeros((0, teacher_probs.shape[1]), bool)}


# ---------------------------------------------------------------------------------------------- baselines


def threshold_mask(teacher_probs_pool, threshold: float) -> np.ndarray:
    """1 where the teacher's top probability reaches `threshold`, else 0 (float32 weights)."""
    return (np.asarray(teacher_probs_pool).max(axis=1) >= threshold).astype(np.float32)


def choose_threshold(teacher_probs_val, val_labels) -> tuple[float, dict]:
    """Confidence threshold for pseudo-labels, chosen on V only.

    Criterion: among thresholds τ equal to the teacher confidences seen on V, maximise
    `(#correct kept) × precision = correct(τ)² / kept(τ)` — the expected number of clean
    pseudo-labels, discounted by the noise rate among those kept. τ = min confidence (keep
    everything) is always a candidate; ties go to the lower τ (more data). Returns
    (threshold, {"coverage", "precision"} on V).
    """
    p, y = check_validation(teacher_probs_val, val_labels, np.asarray(teacher_probs_val).shape[-1])
    conf = p.max(axis=1)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, correct = conf[order], (p.argmax(1) == y)[order]
    kept = np.arange(1, len(y) + 1)
    cum = np.cumsum(correct)
    # only cut between distinct confidences: keeping the first i means τ = conf_sorted[i-1]
    last_of_run = np.r_[conf_sorted[1:] < conf_sorted[:-1], True]
    score = np.where(last_of_run, cum.astype(np.float64) ** 2 / kept, -1.0)
    best = int(len(score) - 1 - np.argmax(score[::-1]))  # largest kept set among the best scores
    return float(conf_sorted[best]), {"coverage": float(kept[best] / len(y)),
                                      "precision": float(cum[best] / kept[best])}


def forward_noise_matrix(eps: float, n_classes: int) -> np.ndarray:
    """T = (1 − ε)I + ε/(C − 1)(11ᵀ − I): the teacher keeps the label with probability 1 − ε,
    otherwise flips it uniformly to another class."""
    c = n_classes
    return (1 - eps) * np.eye(c) + eps / (c - 1) * (np.ones((c, c)) - np.eye(c))


class ForwardCorrectionObjective:
    """Global forward correction: CE(target, f·T) with one noise rate ε for all examples.

    With the symmetric T above, `(f·T)_j = (1 − ε)f_j + ε(1 − f_j)/(C − 1)`: exactly the
    normalised SLaM mix with α = 1 − ε and k = C, so it reuses `slam_loss`. ε is capped at
    (C − 1)/C, where f·T is uniform (no gradient) — beyond it the label would flip.
    """

    def __init__(self, eps: float, n_classes: int, mode: str = "hard"):
        if n_classes < 2:
            raise ConfigError("forward correction needs at least two classes.")
        if not 0 <= eps <= 1:
            raise ConfigError(f"noise rate ε must lie in [0, 1], got {eps}.")
        self.eps = float(min(eps, (n_classes - 1) / n_classes))
        self.n_classes, self.mode = n_classes, _check_mode(mode)

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        target = distillation_targets(teacher_probs, self.mode)
        logf = F.log_softmax(student_logits, dim=-1)
        if self.eps == 0:  # f·T = f: plain distillation
            return -(target * logf).sum(dim=-1)
        c = self.eps / (self.n_classes - 1)  # every class is in the "top C": one affine map for all
        log_mix = torch.log((logf.exp() * (1 - self.eps - c) + c).clamp(EPS, 1.0))
        return -(target * log_mix).sum(dim=-1)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class TaidObjective:
    """TAID: KL(p_t ‖ f) with the moving target `p_t = softmax((1 − t)·stopgrad(z_s) + t·log teacher)`.

    `t` rises linearly from `t_start` (first epoch) to `t_end` (last of `n_epochs`), advanced by
    `on_epoch_end`; it lives in `state_dict`, so a resumed run continues the schedule. (The
    paper adapts the step to the loss; this linear schedule is the simple variant.)
    """

    def __init__(self, n_epochs: int, t_start: float = 0.4, t_end: float = 1.0):
        if n_epochs < 1:
            raise ConfigError(f"TAID needs n_epochs ≥ 1, got {n_epochs}.")
        if not 0 <= t_start <= t_end <= 1:
            raise ConfigError(f"TAID needs 0 ≤ t_start ≤ t_end ≤ 1, got {t_start}, {t_end}.")
        self.n_epochs, self.t_start, self.t_end = int(n_epochs), float(t_start), float(t_end)
        self.t = self.t_start

    def schedule(self, epoch: int) -> float:
        """t used during `epoch` (0-based)."""
        frac = min(1.0, epoch / max(self.n_epochs - 1, 1))
        return self.t_start + (self.t_end - self.t_start) * frac

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        logf = F.log_softmax(student_logits, dim=-1)
        log_target = F.log_softmax((1 - self.t) * student_logits.detach()
                                   + self.t * torch.log(teacher_probs.clamp_min(EPS)), dim=-1)
        return (log_target.exp() * (log_target - logf)).sum(dim=-1)

    def on_epoch_end(self, epoch: int) -> None:
        self.t = self.schedule(epoch + 1)

    def state_dict(self) -> dict:
        return {"t": self.t}

    def load_state_dict(self, state: dict) -> None:
        if "t" in state:
            self.t = float(state["t"])
