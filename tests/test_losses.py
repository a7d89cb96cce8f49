"""Reference checks and invariants for the distillation losses."""

import pytest
import torch
import torch.nn.functional as F

from mentor import losses


def _rand(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, -1)
    return logits, teacher


def test_kd_kl_matches_reference_formula():
    s, t = _rand()
    for tau in (1.0, 2.0, 4.0):
        t_tau = torch.softmax(torch.log(t) / tau, -1)
        ref = tau ** 2 * (t_tau * (torch.log(t_tau) - F.log_softmax(s / tau, -1))).sum(-1)
        assert torch.allclose(losses.kd_kl(s, t, tau), ref, atol=1e-10)


def test_kd_kl_zero_iff_identical_and_nonnegative():
    s, t = _rand()
    assert torch.allclose(losses.kd_kl(torch.log(t), t), torch.zeros(len(t), dtype=t.dtype), atol=1e-10)
    assert (losses.kd_kl(s, t) > 0).all()


def test_soft_ce_and_kl_differ_by_teacher_entropy_and_share_gradients():
    s, t = _rand()
    s1 = s.clone().requires_grad_(True)
    s2 = s.clone().requires_grad_(True)
    ce = losses.soft_cross_entropy(s1, t)
    kl = losses.kd_kl(s2, t)
    entropy = -(t * torch.log(t)).sum(-1)
    assert torch.allclose(ce - kl, entropy, atol=1e-10)
    ce.sum().backward()
    kl.sum().backward()
    assert torch.allclose(s1.grad, s2.grad, atol=1e-10)
    # the gradient of soft CE w.r.t. the logits is softmax(s) - t
    assert torch.allclose(s1.grad, torch.softmax(s, -1) - t, atol=1e-10)


def test_hard_distillation_is_ce_on_teacher_argmax():
    s, t = _rand()
    ref = F.cross_entropy(s, t.argmax(-1), reduction="none")
    assert torch.allclose(losses.hard_distillation(s, t), ref)
    onehot = losses.distillation_targets(t, "hard")
    assert torch.allclose(losses.soft_cross_entropy(s, onehot), ref)


def test_temperature_changes_target_but_tau1_is_identity():
    _, t = _rand()
    assert torch.allclose(losses.distillation_targets(t, "soft", 1.0), t, atol=1e-12)
    hot = losses.distillation_targets(t, "soft", 5.0)
    assert (hot.max(-1).values < t.max(-1).values).all()  # higher τ flattens


def test_no_nan_with_zero_and_one_probabilities():
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.5, 0.5]], dtype=torch.float64)
    s = torch.tensor([[50.0, -50.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64, requires_grad=True)
    for tau in (1.0, 3.0):
        out = losses.kd_kl(s, t, tau)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(s.grad).all()


def test_gradcheck_kd_kl():
    s, t = _rand(4, 3)
    s.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda z: losses.kd_kl(z, t, 2.0), (s,))


def test_weighted_mean_with_unit_weights_equals_plain_mean():
    s, t = _rand()
    per = losses.per_example_distillation(s, t)
    assert torch.allclose(losses.distillation_loss(s, t, weights=torch.ones(len(s), dtype=s.dtype)), per.mean())
    w = torch.tensor([2.0, 0, 0, 0, 0, 4.0], dtype=s.dtype)
    assert torch.allclose(losses.weighted_mean(per, w), (2 * per[0] + 4 * per[5]) / 6)


def test_mse_logits_is_shift_invariant():
    s, t = _rand()
    assert torch.allclose(losses.mse_logits(s + 3.0, s), torch.zeros(len(s), dtype=s.dtype), atol=1e-12)
    assert (losses.mse_logits(s, torch.log(t)) > 0).all()


def test_bad_mode_raises():
    s, t = _rand()
    with pytest.raises(ValueError, match="soft"):
        losses.per_example_distillation(s, t, mode="medium")


def test_dkd_parts_decompose_kd_exactly():
    """KL(t ‖ f) = TCKD + (1 − t_target)·NCKD for any target class, at any temperature (DKD's eq. 3)."""
    s, t = _rand(seed=3)
    for tau in (1.0, 2.5):
        for target in (t.argmax(-1), torch.zeros(len(t), dtype=torch.long)):
            tckd, nckd = losses.dkd_terms(s, t, target, tau)
            t_tau = losses.teacher_log_probs(t, tau).exp()
            pt_target = t_tau.gather(1, target[:, None])[:, 0]
            kd = losses.kd_kl(s, t, tau) / tau ** 2
            assert torch.allclose(tckd + (1 - pt_target) * nckd, kd, atol=1e-9)
            assert (tckd >= -1e-12).all() and (nckd >= -1e-12).all()


def test_dkd_loss_weights_the_parts_and_defaults_to_the_teachers_top_class():
    s, t = _rand(seed=4)
    tckd, nckd = losses.dkd_terms(s, t, t.argmax(-1), 2.0)
    got = losses.dkd_loss(s, t, alpha=0.5, beta=3.0, temperature=2.0)
    assert torch.allclose(got, 4.0 * (0.5 * tckd + 3.0 * nckd), atol=1e-12)
    # a student with the teacher's target share but the other classes permuted: the binary part is
    # zero, the non-target part is not (what DKD's β makes count)
    z = torch.log(t.clone())
    top = t.argmax(-1)
    for i in range(len(t)):
        rest = [j for j in range(t.shape[1]) if j != top[i]]
        z[i, rest] = z[i, rest].flip(0)
    tckd, nckd = losses.dkd_terms(z, t, top)
    assert torch.allclose(tckd, torch.zeros_like(tckd), atol=1e-9) and (nckd > 1e-6).all()
