"""Token-level LM distillation losses: dense references, invariants, top-k handling, masks, errors."""

import pytest
import torch

from mentor.lm import losses as L
from mentor.errors import ConfigError, TeacherOutputError

B, T, V = 2, 5, 11


def _logits(seed, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, T, V, generator=g, dtype=torch.float64) * scale


def _topk(teacher_logits, k):
    lp = torch.log_softmax(teacher_logits, -1)
    val, idx = lp.topk(k, -1)
    return L.TopK(idx, val)


def _dense_ref(name, s, t, beta=0.5, tt=0.7):
    """Per-token references written out on full-vocabulary probabilities."""
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    if name == "fkl":
        return (p * (p.log() - q.log())).sum(-1)
    if name == "rkl":
        return (q * (q.log() - p.log())).sum(-1)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * (p * (p / m).log()).sum(-1) + (1 - beta) * (q * (q / m).log()).sum(-1)
    r = torch.softmax((1 - tt) * s + tt * t, -1)
    return (r * (r.log() - q.log())).sum(-1)


def _call(name, s, teacher, **kw):
    extra = {"jsd": {"beta": 0.5}, "taid": {"t": 0.7}}.get(name, {})
    return L.LM_LOSSES[name](s, teacher, **extra, **kw)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "taid"])
def test_matches_dense_reference_full_logits(name):
    s, t = _logits(0), _logits(1, 2.0)
    got = _call(name, s, t, reduction="none")
    assert torch.allclose(got, _dense_ref(name, s, t), atol=1e-5)
    assert torch.allclose(_call(name, s, t), _dense_ref(name, s, t).mean(), atol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "taid"])
def test_topk_with_k_equal_vocab_equals_dense(name):
    s, t = _logits(2), _logits(3, 2.0)
    assert torch.allclose(_call(name, s, _topk(t, V), reduction="none"), _dense_ref(name, s, t), atol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "taid"])
@pytest.mark.parametrize("tail", ["bucket", "renorm"])
def test_zero_for_identical_distributions(name, tail):
    t = _logits(4, 3.0)
    assert float(_call(name, t.clone(), t)) == pytest.approx(0.0, abs=1e-6)
    assert float(_call(name, t.clone(), _topk(t, 4), tail=tail)) == pytest.approx(0.0, abs=1e-6)


def test_bucket_equals_kl_of_coarsened_distributions_and_is_below_dense():
    s, t = _logits(5), _logits(6, 2.0)
    k = 3
    tk = _topk(t, k)
    p, q = torch.softmax(t, -1), torch.softmax(s, -1)
    pk, qk = p.gather(-1, tk.indices), q.gather(-1, tk.indices)
    pc = torch.cat([pk, 1 - pk.sum(-1, keepdim=True)], -1)
    qc = torch.cat([qk, 1 - qk.sum(-1, keepdim=True)], -1)
    ref = (pc * (pc.log() - qc.log())).sum(-1)
    got = L.forward_kl(s, tk, reduction="none")
    assert torch.allclose(got, ref, atol=1e-5)
    assert (got <= _dense_ref("fkl", s, t) + 1e-6).all()
    # renorm: KL of the two distributions renormalised over the listed tokens
    ren = ((pk / pk.sum(-1, keepdim=True)) * ((pk / pk.sum(-1, keepdim=True)).log()
                                             - (qk / qk.sum(-1, keepdim=True)).log())).sum(-1)
    assert torch.allclose(L.forward_kl(s, tk, tail="renorm", reduction="none"), ren, atol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "taid"])
def test_mask_ignores_padded_positions(name):
    s, t = _logits(7), _logits(8, 2.0)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[0, 3:] = False
    mask[1, 4:] = False
    s2, t2 = s.clone(), t.clone()
    s2[~mask] = float("nan")  # garbage at padding must not leak
    t2[~mask] = 1e6
    ref = _dense_ref(name, s, t)[mask].mean()
    assert torch.allclose(_call(name, s2, t2, mask=mask), ref, atol=1e-5)
    assert torch.allclose(_call(name, s2, _topk(t2, 4), mask=mask),
                          _call(name, s, _topk(t, 4), reduction="none")[mask].mean(), atol=1e-5)


@pytest.mark.parametrize("name", ["fkl", "rkl", "jsd", "taid"])
@pytest.mark.parametrize("k", [1, 4, V])
def test_gradients_finite(name, k):
    s = _logits(9).float().requires_grad_(True)
    t = _logits(10, 5.0).float()
    _call(name, s, _topk(t, k)).backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0
    s.grad = None
    _call(name, s, t).backward()
    assert torch.isfinite(s.grad).all()


def test_taid_endpoints():
    s, t = _logits(11), _logits(12)
    assert torch.allclose(L.taid(s, t, t=1.0), L.forward_kl(s, t))
    assert float(L.taid(s, t, t=0.0)) == pytest.approx(0.0, abs=1e-7)


def test_next_token_ce_matches_cross_entropy():
    s = _logits(13)
    y = torch.randint(0, V, (B, T))
    ref = torch.nn.functional.cross_entropy(s.flatten(0, 1), y.flatten())
    assert torch.allclose(L.next_token_ce(s, y), ref, atol=1e-8)


def test_errors():
    s, t = _logits(14), _logits(15)
    too_many = L.TopK(torch.zeros(B, T, V + 1, dtype=torch.long), torch.zeros(B, T, V + 1))
    with pytest.raises(TeacherOutputError, match="larger than the vocabulary"):
        L.forward_kl(s, too_many)
    with pytest.raises(TeacherOutputError, match="vocabularies must match"):
        L.forward_kl(s, t[..., :-1])
    bad = _topk(t, 3)
    with pytest.raises(TeacherOutputError, match=r"indices must lie"):
        L.forward_kl(s, L.TopK(bad.indices + V, bad.logprobs))
    with pytest.raises(TeacherOutputError, match="repeats"):
        L.forward_kl(s, L.TopK(torch.zeros_like(bad.indices), bad.logprobs))
    with pytest.raises(ConfigError, match="beta"):
        L.generalized_jsd(s, t, beta=1.0)
    with pytest.raises(ConfigError, match="tail"):
        L.forward_kl(s, bad, tail="spread")
    with pytest.raises(TeacherOutputError, match="mask"):
        L.forward_kl(s, t, mask=torch.ones(B, T + 1))


def test_taid_schedule_moves_monotonically_and_checkpoints():
    sch = L.TAIDSchedule(10, 0.4, 1.0)
    ts = [sch.update(5.0 - 0.3 * i) for i in range(12)]
    assert ts[0] >= 0.4 and ts[-1] == pytest.approx(1.0)
    assert all(b >= a for a, b in zip(ts, ts[1:]))
    state = sch.state_dict()
    other = L.TAIDSchedule(10)
    other.load_state_dict(state)
    assert other.t == sch.t and other.step == sch.step


def test_fused_tail_logsumexp_values_and_gradients():
    """The one-pass (log Σ e^z, log Σ_tail e^z) equals logsumexp on the masked logits, with exact
    gradients (gradcheck), also where the tail underflows against the maximum in float32."""
    from mentor.lm.losses import _LogSumExpAndTail
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 3, 11, generator=g, dtype=torch.float64, requires_grad=True)
    idx = torch.randint(0, 11, (2, 3, 4), generator=g)  # may repeat a token: masking is idempotent
    assert torch.autograd.gradcheck(lambda x: _LogSumExpAndTail.apply(x, idx), (z,))
    ref_tail = torch.logsumexp(z.detach().scatter(-1, idx, float("-inf")), -1, keepdim=True)
    lse, tail = _LogSumExpAndTail.apply(z, idx)
    assert torch.allclose(lse, torch.logsumexp(z, -1, keepdim=True)) and torch.allclose(tail, ref_tail)
    # float32, position 0 with its listed tokens 200 nats above the rest: e^(z − max) underflows
    z32 = torch.randn(2, 1, 50, generator=g)
    top = torch.tensor([[[3, 7]], [[1, 2]]])
    z32[0, 0, [3, 7]] += 200.0
    z32.requires_grad_(True)
    lse, tail = _LogSumExpAndTail.apply(z32, top)
    z_ref = z32.detach().clone().requires_grad_(True)
    ref = torch.logsumexp(z_ref.scatter(-1, top, float("-inf")), -1, keepdim=True)
    assert torch.allclose(tail, ref) and torch.isfinite(tail).all()
    (lse.sum() + 0.5 * tail.sum()).backward()
    (torch.logsumexp(z_ref, -1, keepdim=True).sum() + 0.5 * ref.sum()).backward()
    assert torch.allclose(z32.grad, z_ref.grad, atol=1e-6)
