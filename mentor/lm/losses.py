"""Token-level distillation losses for language models, as plain functions with a padding mask.

Every loss takes the student's logits `(B, T, V)` and a teacher given either as

- full logits `(B, T, V)` (a tensor), or
- `TopK(indices, logprobs)`, both `(B, T, k)`: the teacher's k most likely next tokens and their
  log-probabilities (what APIs return and what `mentor.lm.distill` stores for big vocabularies),

plus an optional `mask` `(B, T)` (1 = real position, 0 = padding). Positions are already aligned:
`student_logits[:, t]` and the teacher at `t` both predict token `t + 1`; shift before calling.

How top-k teachers are handled (`tail=`):

- `"bucket"` (default): both distributions are coarsened to k + 1 outcomes — the k listed tokens
  and one tail bucket holding everything else. The teacher's tail mass is `1 − Σ exp(logprobs)`
  (floored at `TAIL_FLOOR` so reverse KL stays finite when the list covers all the mass); the
  student's is the exact log-sum-exp of its logits outside the list. Every divergence is then
  computed on these k + 1 outcomes. It is zero when the distributions agree, never exceeds the
  full-vocabulary value (data processing), and equals it when k = V.
- `"renorm"`: both distributions are renormalised over the k listed tokens and the rest ignored
  (the student gets no signal about mass it puts outside the list).

Losses: `forward_kl` KL(p_T ‖ p_S), `reverse_kl` KL(p_S ‖ p_T), `generalized_jsd` with β
(β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m), m = β·p_T + (1−β)·p_S), `taid` KL(p_t ‖ p_S) with the TAID target
p_t = softmax((1−t)·stopgrad(z_S) + t·z_T) (log-probabilities stand in for logits; softmax ignores
the per-token constant), and `next_token_ce` for the plain language-model loss. `reduction`
"mean" averages over unmasked positions, "sum" sums them, "none" returns `(B, T)` with zeros at
masked positions.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from ..errors import ConfigError, TeacherOutputError

TAIL_FLOOR = 1e-10
TAILS = ("bucket", "renorm")
REDUCTIONS = ("mean", "sum", "none")


class TopK(NamedTuple):
    """Top-k teacher outputs: token indices (long) and their log-probabilities, both (B, T, k)."""

    indices: torch.Tensor
    logprobs: torch.Tensor


def _check_topk(teacher: TopK, vocab: int, lead: tuple) -> None:
    idx, val = teacher.indices, teacher.logprobs
    if idx.shape != val.shape or idx.dim() != 3:
        raise TeacherOutputError(f"top-k teacher: indices {tuple(idx.shape)} and logprobs {tuple(val.shape)} "
                                 "must both have shape (batch, time, k).")
    if tuple(idx.shape[:2]) != lead:
        raise TeacherOutputError(f"top-k teacher has (batch, time) {tuple(idx.shape[:2])} but the student "
                                 f"logits have {lead}; align teacher and student positions.")
    k = idx.shape[-1]
    if k > vocab:
        raise TeacherOutputError(f"top-k teacher: k={k} is larger than the vocabulary ({vocab}). "
                                 "Store at most vocab_size entries per position.")
    if k < 1:
        raise TeacherOutputError("top-k teacher: k must be at least 1.")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab):
        raise TeacherOutputError(f"top-k teacher: token indices must lie in [0, {vocab - 1}], "
                                 f"got [{int(idx.min())}, {int(idx.max())}].")
    if k > 1 and idx.numel():
        s = torch.sort(idx, dim=-1).values
        if (s[..., 1:] == s[..., :-1]).any():
            raise TeacherOutputError("top-k teacher: a token index repeats within one position.")


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """float16/bfloat16 logits are computed on in float32; float64 stays float64."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def aligned_log_probs(student_logits: torch.Tensor, teacher, *, tail: str = "bucket"
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Student and teacher log-probabilities on one common support, both (B, T, K).

    K = V for full teacher logits; k + 1 (bucket, when k < V) or k otherwise for top-k teachers.
    The teacher side carries no gradient.
    """
    if tail not in TAILS:
        raise ConfigError(f"tail must be one of {TAILS}, got {tail!r}.")
    if student_logits.dim() != 3:
        raise TeacherOutputError(f"student logits must be (batch, time, vocab), got {tuple(student_logits.shape)}.")
    B, T, V = student_logits.shape
    z = _upcast(student_logits)
    if isinstance(teacher, torch.Tensor):
        if teacher.shape != student_logits.shape:
            raise TeacherOutputError(f"teacher logits {tuple(teacher.shape)} and student logits "
                                     f"{tuple(student_logits.shape)} differ; the vocabularies must match.")
        return F.log_softmax(z, -1), F.log_softmax(teacher.detach().to(z.dtype), -1)
    if not isinstance(teacher, TopK):
        raise TeacherOutputError(f"teacher must be a logits tensor or TopK(indices, logprobs), "
                                 f"got {type(teacher).__name__}.")
    _check_topk(teacher, V, (B, T))
    idx, t_val = teacher.indices.long(), teacher.logprobs.detach().to(z.dtype)
    k = idx.shape[-1]
    s_top = z.gather(-1, idx)
    if tail == "renorm":
        return F.log_softmax(s_top, -1), F.log_softmax(t_val, -1)
    if k == V:  # the list covers the vocabulary: no tail bucket
        return s_top - torch.logsumexp(z, -1, keepdim=True), t_val
    lse, lse_tail = _LogSumExpAndTail.apply(z, idx)
    s_tail = lse_tail - lse
    t_mass = 1.0 - torch.exp(torch.logsumexp(t_val, -1, keepdim=True))
    t_tail = torch.log(t_mass.clamp_min(TAIL_FLOOR))
    return torch.cat([s_top - lse, s_tail], -1), torch.cat([t_val, t_tail], -1)


class _LogSumExpAndTail(torch.autograd.Function):
    """(log Σ_j e^{z_j}, log Σ_{j ∉ idx} e^{z_j}) over the last axis, both (..., 1).

    One pass for both sums, and a backward pass that is one multiply over the vocabulary: the
    generic `logsumexp(z.scatter(idx, -inf))` costs a full copy of the logits and several more
    passes. The tail is summed, not obtained by subtraction, so a small tail keeps its precision;
    positions whose tail underflows against the overall maximum (listed tokens > ~87 nats above
    all others in float32) are recomputed exactly on their own.
    """

    @staticmethod
    def forward(ctx, z, idx):
        m = z.amax(-1, keepdim=True)
        e = torch.exp(z - m)
        total = e.sum(-1, keepdim=True)
        e_top = e.gather(-1, idx)
        e.scatter_(-1, idx, 0.0)  # e now holds the tail terms only
        tail = e.sum(-1, keepdim=True)
        lse, lse_tail = m + torch.log(total), m + torch.log(tail)
        low = (tail <= torch.finfo(z.dtype).tiny * 1e3).squeeze(-1)
        if low.any():  # rare: exact tail log-sum-exp for those positions only
            lse_tail[low] = torch.logsumexp(z[low].scatter(-1, idx[low], float("-inf")), -1, keepdim=True)
        ctx.save_for_backward(z, e, e_top, idx, total, tail, lse_tail, low)
        return lse, lse_tail

    @staticmethod
    def backward(ctx, g_lse, g_tail):
        z, e, e_top, idx, total, tail, lse_tail, low = ctx.saved_tensors
        # d lse / dz = softmax; d lse_tail / dz = softmax over the tail (0 at the listed tokens)
        grad = e * (g_lse / total + g_tail / tail.clamp_min(torch.finfo(z.dtype).tiny))
        if low.any():
            q = torch.exp(z[low] - lse_tail[low]).scatter(-1, idx[low], 0.0)
            grad[low] = e[low] * (g_lse[low] / total[low]) + q * g_tail[low]
        grad.scatter_(-1, idx, e_top * (g_lse / total))
        return grad, None


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p ‖ q) over the last axis; terms with p = 0 count as 0."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)


def _reduce(per_token: torch.Tensor, mask, reduction: str) -> torch.Tensor:
    if reduction not in REDUCTIONS:
        raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}.")
    if mask is None:
        mask = torch.ones_like(per_token, dtype=torch.bool)
    else:
        if tuple(mask.shape) != tuple(per_token.shape):
            raise TeacherOutputError(f"mask {tuple(mask.shape)} must have shape (batch, time) = "
                                     f"{tuple(per_token.shape)}.")
        mask = mask.bool()
    # where, not multiply: padded positions may hold inf/NaN and must not leak into the result
    masked = torch.where(mask, per_token, torch.zeros_like(per_token))
    if reduction == "none":
        return masked
    if reduction == "sum":
        return masked.sum()
    return masked.sum() / mask.sum().clamp_min(1)


def forward_kl(student_logits, teacher, mask=None, *, tail: str = "bucket", reduction: str = "mean"):
    """KL(p_T ‖ p_S): mass-covering, the usual token-level KD."""
    s, t = aligned_log_probs(student_logits, teacher, tail=tail)
    return _reduce(_kl(t, s), mask, reduction)


def reverse_kl(student_logits, teacher, mask=None, *, tail: str = "bucket", reduction: str = "mean"):
    """KL(p_S ‖ p_T): mode-seeking."""
    s, t = aligned_log_probs(student_logits, teacher, tail=tail)
    return _reduce(_kl(s, t), mask, reduction)


def generalized_jsd(student_logits, teacher, mask=None, *, beta: float = 0.5, tail: str = "bucket",
                    reduction: str = "mean"):
    """β·KL(p_T ‖ m) + (1−β)·KL(p_S ‖ m) with m = β·p_T + (1−β)·p_S; β in (0, 1), 0.5 is the JSD."""
    if not 0.0 < float(beta) < 1.0:
        raise ConfigError(f"generalized_jsd beta must lie strictly between 0 and 1, got {beta}.")
    s, t = aligned_log_probs(student_logits, teacher, tail=tail)
    log_m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1.0 - beta)]), 0)
    return _reduce(beta * _kl(t, log_m) + (1.0 - beta) * _kl(s, log_m), mask, reduction)


def taid(student_logits, teacher, mask=None, *, t: float, tail: str = "bucket", reduction: str = "mean"):
    """KL(p_t ‖ p_S) with the TAID target p_t = softmax((1−t)·stopgrad(z_S) + t·z_T), t in [0, 1].

    t = 1 is forward KL; t = 0 gives zero loss. Use `TAIDSchedule` to move t during training.
    """
    if not 0.0 <= float(t) <= 1.0:
        raise ConfigError(f"taid t must lie in [0, 1], got {t}.")
    s, te = aligned_log_probs(student_logits, teacher, tail=tail)
    target = F.log_softmax((1.0 - t) * s.detach() + t * te, -1)
    return _reduce(_kl(target, s), mask, reduction)


def next_token_ce(student_logits, labels, mask=None, *, reduction: str = "mean"):
    """Plain next-token cross-entropy; `labels` (B, T) are the tokens each position predicts."""
    if tuple(labels.shape) != tuple(student_logits.shape[:2]):
        raise TeacherOutputError(f"labels {tuple(labels.shape)} must match the logits' (batch, time) "
                                 f"{tuple(student_logits.shape[:2])}.")
    per = F.cross_entropy(_upcast(student_logits).flatten(0, 1), labels.long().flatten().clamp_min(0),
                          reduction="none").view(labels.shape)
    return _reduce(per, mask, reduction)


class TAIDSchedule:
    """The interpolation weight t of TAID, moved from `t_start` to `t_end` over `total_steps`.

    Reconstructed, not the paper's exact rule: t follows a linear ramp, and with `adaptive` it may
    run ahead of the ramp by `momentum`-smoothed relative improvement of the loss (t never goes
    back). The state is small and must be saved with the student (`state_dict` / `load_state_dict`).
    """

    def __init__(self, total_steps: int, t_start: float = 0.4, t_end: float = 1.0, *,
                 adaptive: bool = True, momentum: float = 0.99, step_scale: float = 0.05):
        if total_steps < 1:
            raise ConfigError(f"TAIDSchedule total_steps must be >= 1, got {total_steps}.")
        if not 0.0 <= t_start <= t_end <= 1.0:
            raise ConfigError(f"TAIDSchedule needs 0 <= t_start <= t_end <= 1, got {t_start}, {t_end}.")
        self.total_steps, self.t_start, self.t_end = int(total_steps), float(t_start), float(t_end)
        self.adaptive, self.momentum, self.step_scale = adaptive, float(momentum), float(step_scale)
        self.step, self.t, self.prev_loss, self.trend = 0, float(t_start), None, 0.0

    def update(self, loss: float) -> float:
        """Record this step's loss; return t for the next step."""
        self.step += 1
        ramp = self.t_start + (self.t_end - self.t_start) * min(1.0, self.step / self.total_steps)
        extra = 0.0
        if self.adaptive and self.prev_loss is not None and self.prev_loss > 0:
            rel = (self.prev_loss - float(loss)) / self.prev_loss
            self.trend = self.momentum * self.trend + (1 - self.momentum) * rel
            extra = self.step_scale * max(self.trend, 0.0)
        self.prev_loss = float(loss)
        self.t = min(self.t_end, max(self.t, ramp, self.t + extra))
        return self.t

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("step", "t", "prev_loss", "trend")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            setattr(self, k, v)


LM_LOSSES: dict[str, Callable] = {"fkl": forward_kl, "rkl": reverse_kl, "jsd": generalized_jsd, "taid": taid}
