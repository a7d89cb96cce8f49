"""Distillation losses as plain functions on tensors.

Every function returns one loss per example (shape (n,)) so a caller can weight, mask or
average as it likes; `distillation_loss` does the usual weighted mean. They work inside any
training loop: pass the student's logits and the teacher's probabilities.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

EPS = 1e-12


def teacher_log_probs(teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Log-probabilities of the teacher at temperature τ: log softmax(log t / τ).

    Stored outputs are probabilities at τ = 1; re-tempering their logs is exact because
    log t differs from the teacher's logits only by a per-row constant.
    """
    logp = torch.log(teacher_probs.clamp_min(EPS))
    if temperature == 1.0:
        return logp - torch.logsumexp(logp, dim=-1, keepdim=True)
    return F.log_softmax(logp / temperature, dim=-1)


def soft_cross_entropy(student_logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """CE(target, softmax(student)) per example: −Σ_j target_j log f_j."""
    return -(target_probs * F.log_softmax(student_logits, dim=-1)).sum(dim=-1)


def kd_kl(student_logits: torch.Tensor, teacher_probs: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Hinton KD per example: τ² · KL(t_τ ‖ f_τ).

    Same gradient as soft cross-entropy (they differ by the teacher's entropy, a constant), but
    zero when student and teacher agree, which makes it the readable number to log. The τ²
    factor keeps gradient magnitudes comparable across temperatures.
    """
    t_log = teacher_log_probs(teacher_probs, temperature)
    s_log = F.log_softmax(student_logits / temperature, dim=-1)
    return (temperature ** 2) * (t_log.exp() * (t_log - s_log)).sum(dim=-1)


def hard_distillation(student_logits: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """CE against the teacher's top label (one-hot pseudo-label)."""
    return F.cross_entropy(student_logits, teacher_probs.argmax(dim=-1), reduction="none")


def mse_logits(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Mean squared error between logits per example (logits centred, since they are shift-invariant)."""
    s = student_logits - student_logits.mean(dim=-1, keepdim=True)
    t = teacher_logits - teacher_logits.mean(dim=-1, keepdim=True)
    return ((s - t) ** 2).mean(dim=-1)


def distillation_targets(teacher_probs: torch.Tensor, mode: str = "soft", temperature: float = 1.0) -> torch.Tensor:
    """The target distribution a student is scored against: tempered teacher or one-hot top label."""
    if mode == "soft":
        return teacher_log_probs(teacher_probs, temperature).exp()
    if mode == "hard":
        return F.one_hot(teacher_probs.argmax(dim=-1), teacher_probs.shape[-1]).to(teacher_probs.dtype)
    raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")


def per_example_distillation(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *,
                             mode: str = "soft", temperature: float = 1.0) -> torch.Tensor:
    """Plain (vanilla) distillation loss per example, hard or soft."""
    if mode == "soft":
        return kd_kl(student_logits, teacher_probs, temperature)
    if mode == "hard":
        return hard_distillation(student_logits, teacher_probs)
    raise ValueError(f"mode must be 'soft' or 'hard', got {mode!r}")


def weighted_mean(losses: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Σ w_i ℓ_i / n. Weights are expected to average 1 over the pool, so the scale of the loss
    (and hence the meaning of the learning rate) is that of the unweighted loss."""
    if weights is None:
        return losses.mean()
    return (losses * weights.to(losses.dtype)).sum() / max(losses.shape[0], 1)


def distillation_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, *, mode: str = "soft",
                      temperature: float = 1.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted mean of the per-example distillation loss: the one-liner for a custom loop."""
    return weighted_mean(per_example_distillation(student_logits, teacher_probs, mode=mode,
                                                  temperature=temperature), weights)


def dkd_terms(student_logits: torch.Tensor, teacher_probs: torch.Tensor, target: torch.Tensor,
              temperature: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Decoupled KD's two parts per example (Zhao et al., 2022), at temperature τ:
    TCKD = KL(b_t ‖ b_s) on the binary split (target class, all others), and
    NCKD = KL(t̂ ‖ f̂) between the distributions over the non-target classes alone.
    They decompose KD exactly: KL(t ‖ f) = TCKD + (1 − t_target) · NCKD, which is the coupling
    (a confident teacher silences the non-target term) that DKD removes by weighting them apart."""
    t_log = teacher_log_probs(teacher_probs, temperature)
    s_log = F.log_softmax(student_logits / temperature, dim=-1)
    mask = F.one_hot(target, student_logits.shape[-1]).bool()
    t_g, s_g = t_log[mask], s_log[mask]  # log prob of the target class
    t_rest = torch.log1p(-t_g.exp().clamp(max=1 - 1e-7))
    s_rest = torch.log1p(-s_g.exp().clamp(max=1 - 1e-7))
    tckd = t_g.exp() * (t_g - s_g) + t_rest.exp() * (t_rest - s_rest)
    neg = torch.finfo(t_log.dtype).min
    t_hat = torch.log_softmax(t_log.masked_fill(mask, neg), dim=-1)
    s_hat = torch.log_softmax(s_log.masked_fill(mask, neg), dim=-1)
    nckd = (t_hat.exp() * (t_hat - s_hat)).masked_fill(mask, 0.0).sum(dim=-1)
    return tckd, nckd


def dkd_loss(student_logits: torch.Tensor, teacher_probs: torch.Tensor, target: torch.Tensor | None = None, *,
             alpha: float = 1.0, beta: float = 8.0, temperature: float = 1.0) -> torch.Tensor:
    """DKD per example: τ² (α·TCKD + β·NCKD). Without labels (the pool) the target is the teacher's
    top class. α = 1, β = 1 − t_target would be plain KD; β > 1 lets the "dark knowledge" among the
    wrong classes count even where the teacher is confident."""
    if target is None:
        target = teacher_probs.argmax(dim=-1)
    tckd, nckd = dkd_terms(student_logits, teacher_probs, target, temperature)
    return (temperature ** 2) * (alpha * tckd + beta * nckd)


class DKDObjective:
    """The trainer's pool objective for DKD (targets: the teacher's top class)."""

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 1.0):
        self.alpha, self.beta, self.temperature = float(alpha), float(beta), float(temperature)

    def pool_loss(self, student_logits, teacher_probs, pool_index):
        return dkd_loss(student_logits, teacher_probs, alpha=self.alpha, beta=self.beta, temperature=self.temperature)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass
