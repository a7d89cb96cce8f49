"""Reliability fit, weighted distillation, SLaM and the noise baselines: invariants and errors."""

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mentor import corrections as cr
from mentor import losses
from mentor.errors import ConfigError, DataError, TeacherOutputError
from mentor.methods import METHODS, MethodContext, MethodPlan, plan_method
from mentor.students.models import MLP
from mentor.reliability import apply_temperature, fit_reliability, fit_temperature, teacher_margin
from mentor.students.train import TrainConfig, VanillaObjective, predict_proba, train_student

CORRECTION_METHODS = ["weighted-margin", "weighted-margin-hard", "weighted-disagreement", "slam", "slam-hard",
                      "slam-normalized", "threshold", "forward-correction", "taid", "calibrated-soft", "dkd"]


def _rand(n=6, c=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=g, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(n, c, generator=g, dtype=torch.float64) * 2, -1)
    return logits, teacher


def _grad(fn, logits):
    z = logits.clone().requires_grad_(True)
    loss = fn(z)
    loss.sum().backward()
    return loss.detach(), z.grad


def _noisy_teacher(y, n_classes, acc, seed=0, sharp=3.0):
    """Teacher probabilities whose top label is right with probability ~acc, more often when confident."""
    rng = np.random.default_rng(seed)
    n = len(y)
    logits = rng.normal(size=(n, n_classes))
    right = rng.random(n) < acc
    wrong_label = (y + rng.integers(1, n_classes, size=n)) % n_classes
    top = np.where(right, y, wrong_label)
    logits[np.arange(n), top] += sharp * rng.random(n) + (right * 1.0)
    p = np.exp(logits - logits.max(1, keepdims=True))
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- SLaM math

def test_slam_alpha_one_is_plain_distillation_loss_and_gradient():
    s, t = _rand()
    loss, g = _grad(lambda z: cr.slam_loss(z, t, torch.ones(len(t), dtype=t.dtype), 3), s)
    ref_loss, _ = _grad(lambda z: losses.soft_cross_entropy(z, t), s)
    _, ref_g = _grad(lambda z: losses.kd_kl(z, t), s)
    assert torch.equal(loss, ref_loss)
    assert torch.allclose(g, ref_g, atol=1e-12, rtol=0)
    hot = losses.distillation_targets(t, "hard")
    loss_h, g_h = _grad(lambda z: cr.slam_loss(z, hot, 1.0, 2, teacher_probs=t), s)
    ref_h, ref_gh = _grad(lambda z: losses.hard_distillation(z, t), s)
    assert torch.allclose(loss_h, ref_h, atol=1e-12, rtol=0) and torch.allclose(g_h, ref_gh, atol=1e-12, rtol=0)


def test_slam_alpha_half_k2_gives_zero_gradient():
    s, t = _rand(c=5)
    hot = losses.distillation_targets(t, "hard")
    _, g = _grad(lambda z: cr.slam_loss(z, hot, 0.5, 2, teacher_probs=t), s)
    assert g.abs().max() < 1e-12
    s2, t2 = _rand(c=2)  # binary, soft targets: every class is in the top 2
    _, g2 = _grad(lambda z: cr.slam_loss(z, t2, 0.5, 2), s2)
    assert g2.abs().max() < 1e-12
    # just above ½ the gradient pushes towards the teacher's label (logit of yT goes up)
    _, g3 = _grad(lambda z: cr.slam_loss(z, hot, 0.6, 2, teacher_probs=t), s)
    assert (g3.gather(1, t.argmax(1, keepdim=True)) < 0).all()


def test_normalized_slam_at_alpha_one_over_k_gives_zero_gradient():
    s, t = _rand(c=6)
    hot = losses.distillation_targets(t, "hard")
    for k in (2, 3, 5):
        _, g = _grad(lambda z: cr.slam_loss(z, hot, 1.0 / k, k, normalized=True, teacher_probs=t), s)
        assert g.abs().max() < 1e-12


def test_slam_mix_matches_formula_with_per_example_alpha_and_k():
    s, t = _rand(n=4, c=5)
    f = torch.softmax(s, -1)
    alpha = torch.tensor([1.0, 0.8, 0.6, 0.5], dtype=t.dtype)
    k = torch.tensor([1, 2, 3, 5])
    mix = cr.slam_mix(f, t, alpha, k)
    mixn = cr.slam_mix(f, t, alpha, k.clamp_min(2), normalized=True)
    for i in range(4):
        top = set(torch.argsort(t[i], descending=True)[:int(k[i])].tolist())
        kn = max(int(k[i]), 2)
        topn = set(torch.argsort(t[i], descending=True)[:kn].tolist())
        for j in range(5):
            a, fj = float(alpha[i]), float(f[i, j])
            assert abs(mix[i, j] - (a * fj + (1 - a) * (1 - fj) * (j in top))) < 1e-12
            assert abs(mixn[i, j] - (a * fj + (1 - a) * (1 - fj) * (j in topn) / (kn - 1))) < 1e-12


def test_slam_loss_gradcheck_float64():
    s, t = _rand(n=5, c=4, seed=3)
    alpha = torch.tensor([0.55, 0.7, 0.9, 1.0, 0.6], dtype=torch.float64)
    k = torch.tensor([2, 3, 2, 4, 3])
    hot = losses.distillation_targets(t, "hard")
    for target, normalized in ((t, False), (t, True), (hot, False)):
        fn = lambda z: cr.slam_loss(z, target, alpha, k, normalized=normalized, teacher_probs=t)  # noqa: E731
        assert torch.autograd.gradcheck(fn, (s.clone().requires_grad_(True),))


def test_slam_no_nan_at_probabilities_zero_and_one():
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.5, 0.5, 0.0]])
    s = torch.tensor([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-50.0, 60.0, 0.0]])
    for alpha in (1.0, 0.5, 0.7):
        for normalized in (False, True):
            loss, g = _grad(lambda z: cr.slam_loss(z, t, alpha, 2, normalized=normalized), s)
            assert torch.isfinite(loss).all() and torch.isfinite(g).all()
    # α = 1 and a student certain of the wrong class: the gradient is still there (no clamp kill)
    _, g = _grad(lambda z: cr.slam_loss(z, t, 1.0, 2), torch.tensor([[-40.0, 40.0, 0.0]] * 3))
    assert g[0, 0] < -0.99


def test_alpha_is_clipped_away_from_label_flipping_values():
    rel = fit_reliability(np.array([[0.9, 0.1]] * 60 + [[0.6, 0.4]] * 60), np.r_[np.zeros(60), np.ones(60)].astype(int),
                          n_classes=2)  # confident → right, unsure → wrong (acc 0)
    a = cr.slam_alpha(np.array([0.0, 0.2, 0.8]), rel)
    assert a.min() >= 0.5 and a[-1] == 1.0
    assert np.allclose(cr.slam_alpha(np.array([0.0]), rel, normalized=True, k=4), 0.25)
    with pytest.raises(ConfigError, match="floor"):
        cr.slam_alpha(np.array([0.1]), rel, floor=0.3)
    with pytest.raises(ConfigError, match="sign-change"):
        cr.SlamObjective(np.array([0.4]), np.array([2]))
    with pytest.raises(ConfigError, match="k"):
        cr.slam_mix(torch.ones(1, 3) / 3, torch.ones(1, 3) / 3, 0.9, 1, normalized=True)


def test_slam_k_rules():
    y = np.repeat(np.arange(4), 50)
    p = np.full((200, 4), 0.05)
    p[np.arange(200), (y + (np.arange(200) % 2)) % 4] = 0.7  # right half the time, true label 2nd otherwise
    p[np.arange(200), np.where(np.arange(200) % 2, y, (y + 1) % 4)] = 0.2
    rel = fit_reliability(p, y, n_classes=4)
    assert rel.topk_accuracy[0] == pytest.approx(0.5) and rel.topk_accuracy[1] == 1.0
    assert rel.smallest_k(0.9) == 2 and rel.smallest_k(0.4) == 1
    assert cr.slam_k(rel, 4) == 2 and cr.slam_k(rel, 4, level=0.4) == 2 and cr.slam_k(rel, 2) == 2
    assert cr.slam_k(rel, 4, rule="fixed:3") == 3
    for bad in ("fixed:9", "fixed:x", "nope"):
        with pytest.raises(ConfigError):
            cr.slam_k(rel, 4, rule=bad)


# ---------------------------------------------------------------------------------------------- reliability

def test_isotonic_curve_is_monotone_and_matches_empirical_accuracy():
    rng = np.random.default_rng(0)
    n = 20000
    m = rng.random(n)
    top = np.c_[(1 + m) / 2, (1 - m) / 2]  # binary teacher with margin m
    y = np.where(rng.random(n) < 0.5 + 0.5 * m, 0, 1)  # P(right | m) = (1 + m) / 2
    rel = fit_reliability(top, y, n_classes=2)
    grid, acc = rel.curve(101)
    assert (np.diff(acc) >= 0).all()
    assert np.abs(rel.accuracy_at(grid[5:-5]) - (1 + grid[5:-5]) / 2).max() < 0.05
    assert np.allclose(teacher_margin(top), m)
    assert rel.accuracy == pytest.approx(((top.argmax(1) == y)).mean())
    assert rel.to_dict()["fallback"] is None and rel.topk_accuracy[-1] == 1.0


def test_tiny_validation_set_warns_and_falls_back_to_smoothed_accuracy():
    p = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]] * 3)
    y = np.array([0, 1, 1] * 3)
    with pytest.warns(UserWarning, match="min_val=50.*smoothed"):
        rel = fit_reliability(p, y, n_classes=2)
    assert np.allclose(rel.accuracy_at([0.0, 0.5, 1.0]), (6 + 1) / (9 + 2))
    assert rel.fallback and "smoothed" in rel.to_dict()["fallback"]


def test_edge_cases_all_correct_all_wrong_single_class():
    p = np.random.default_rng(0).dirichlet(np.ones(3), size=100)
    p[:, 0] += 2
    p /= p.sum(1, keepdims=True)
    y_right = np.zeros(100, int)  # V with a single class, the teacher always right
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        right = fit_reliability(p, y_right, n_classes=3)
        wrong = fit_reliability(p, (y_right + 1) % 3, n_classes=3)
    assert np.allclose(right.accuracy_at([0, 0.5, 1]), 1.0) and np.allclose(wrong.accuracy_at([0, 0.5, 1]), 0.0)
    assert np.isfinite(right.accuracy_knots).all() and np.isfinite(wrong.accuracy_knots).all()
    assert np.allclose(cr.margin_weights(p, right), 1.0)
    with pytest.raises(DataError, match="always wrong"):
        cr.margin_weights(p, wrong)
    d = right.to_dict()
    assert d["per_class_accuracy"][1] is None  # class absent from V


def test_validation_errors():
    p = np.array([[0.7, 0.3]] * 60)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fit_reliability(p, np.r_[np.zeros(59, int), 2], n_classes=2)
    with pytest.raises(DataError, match=r"\[0, 1\]"):
        fit_reliability(p, np.r_[np.zeros(59, int), -1], n_classes=2)
    with pytest.raises(DataError, match="empty"):
        fit_reliability(np.zeros((0, 2)), np.zeros(0, int), n_classes=2)
    with pytest.raises(DataError, match="row for row"):
        fit_reliability(p, np.zeros(59, int), n_classes=2)
    with pytest.raises(TeacherOutputError, match="no margin with one class"):
        teacher_margin(np.ones((4, 1)))
    with pytest.raises(TeacherOutputError, match="one class"):
        fit_reliability(np.ones((60, 1)), np.zeros(60, int), n_classes=1)
    with pytest.raises(DataError, match="always wrong"):
        cr.normalize_weights(np.zeros(5))


def test_temperature_scaling_recovers_overconfidence():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3000, 4)) * 2
    p_true = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    y = np.array([rng.choice(4, p=r) for r in p_true])
    overconfident = apply_temperature(p_true, 0.5)  # sharpened by 2
    assert fit_temperature(overconfident, y) == pytest.approx(2.0, rel=0.15)


# ---------------------------------------------------------------------------------------------- weights & baselines

def test_disagreement_weights_fall_with_disagreement():
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    t = _noisy_teacher(y, 3, acc=0.7, seed=1)
    right = t.argmax(1) == y
    # a first-pass student that agrees where the teacher is right and not where it is wrong
    f = np.where(right[:, None], t, np.roll(t, 1, axis=1))
    w = cr.disagreement_weights(t, f, t, f, y)
    assert w.mean() == pytest.approx(1.0, abs=1e-5)
    assert w[right].mean() > 3 * w[~right].mean()
    order = np.argsort(cr.disagreement_score(t, f))
    assert (np.diff(w[order]) <= 1e-6).all()


def test_choose_threshold_maximises_clean_count_times_precision():
    # confidences 0.9 (10 right), 0.7 (10 right, 10 wrong), 0.5 (10 wrong)
    conf = np.r_[np.full(10, 0.9), np.full(20, 0.7), np.full(10, 0.5)]
    p = np.c_[conf, 1 - conf]
    y = np.r_[np.zeros(10), np.zeros(10), np.ones(10), np.ones(10)].astype(int)
    thr, on_val = cr.choose_threshold(p, y)
    # candidates: 0.9 → 10²/10 = 10; 0.7 → 20²/30 = 13.3; 0.5 → 20²/40 = 10
    assert thr == pytest.approx(0.7) and on_val["coverage"] == pytest.approx(0.75)
    assert np.array_equal(cr.threshold_mask(p, thr), (conf >= 0.7).astype(np.float32))


def test_forward_correction_eps_zero_is_plain_ce_and_matches_matrix():
    s, t = _rand(c=4)
    obj0 = cr.ForwardCorrectionObjective(0.0, 4)
    assert torch.allclose(obj0.pool_loss(s, t, None), losses.hard_distillation(s, t), atol=1e-12, rtol=0)
    eps = 0.3
    T = torch.as_tensor(cr.forward_noise_matrix(eps, 4))
    ref = F.nll_loss(torch.log(torch.softmax(s, -1) @ T), t.argmax(1), reduction="none")
    assert torch.allclose(cr.ForwardCorrectionObjective(eps, 4).pool_loss(s, t, None), ref, atol=1e-12)
    assert cr.ForwardCorrectionObjective(0.99, 4).eps == pytest.approx(0.75)


def test_taid_schedule_and_state_round_trip():
    obj = cr.TaidObjective(n_epochs=4)
    ts = [obj.t]
    for e in range(3):
        obj.on_epoch_end(e)
        ts.append(obj.t)
    assert np.allclose(ts, [0.4, 0.6, 0.8, 1.0])
    fresh = cr.TaidObjective(n_epochs=4)
    obj.t = 0.6
    fresh.load_state_dict(obj.state_dict())
    assert fresh.t == 0.6
    s, t = _rand()
    obj.t = 1.0  # at t = 1 TAID is plain KD
    assert torch.allclose(obj.pool_loss(s, t, None), losses.kd_kl(s, t), atol=1e-10)


# ---------------------------------------------------------------------------------------------- registry + trainer

@pytest.fixture(scope="module")
def digits_ctx():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    t = _noisy_teacher(y, 10, acc=0.8, seed=0)
    xl, yl = x[:60], y[:60]
    xv, yv, tv = x[60:260], y[60:260], t[60:260]
    xu, tu = x[260:860], t[260:860]
    cfg = TrainConfig(epochs=1, min_steps=0, batch_size=256, device="cpu")

    def train_and_predict(plan):
        m = _model()
        train_student(m, xl, yl, x_pool=xu, teacher_probs=tu, objective=plan.objective,
                      pool_weights=plan.pool_weights, config=cfg)
        return predict_proba(m, xu, device="cpu"), predict_proba(m, xv, device="cpu")

    ctx = MethodContext(n_classes=10, teacher_probs_pool=tu, teacher_probs_val=tv, val_labels=yv, seed=0,
                        train_and_predict=train_and_predict, n_epochs=1)
    return ctx, (xl, yl, xu, tu), cfg


def _model():
    torch.manual_seed(0)
    return MLP(64, 10, (16,))


@pytest.mark.parametrize("name", CORRECTION_METHODS)
def test_each_method_trains_one_epoch_on_digits(name, digits_ctx):
    ctx, (xl, yl, xu, tu), cfg = digits_ctx
    assert (METHODS[name].__doc__ or "").strip(), f"{name} has no description"
    plan = plan_method(name, ctx)
    assert isinstance(plan, MethodPlan)
    res = train_student(_model(), xl, yl, x_pool=xu, teacher_probs=tu, objective=plan.objective,
                        pool_weights=plan.pool_weights, config=cfg)
    assert np.isfinite(res.history[-1]["loss"])
    if name != "taid":
        assert plan.info


@pytest.mark.parametrize("name", [m for m in CORRECTION_METHODS if m not in ("taid", "dkd")])
def test_methods_need_validation_outputs(name, digits_ctx):
    ctx, *_ = digits_ctx
    bare = MethodContext(n_classes=10, teacher_probs_pool=ctx.teacher_probs_pool)
    with pytest.raises(ConfigError, match="validation set V"):
        plan_method(name, bare)


def test_constant_reliability_weights_reproduce_plain_distillation(digits_ctx):
    ctx, (xl, yl, xu, tu), cfg = digits_ctx
    w = cr.normalize_weights(np.full(len(tu), 0.37))
    assert np.array_equal(w, np.ones(len(tu), np.float32))
    a, b = _model(), _model()
    train_student(a, xl, yl, x_pool=xu, teacher_probs=tu, objective=VanillaObjective("soft"), config=cfg)
    train_student(b, xl, yl, x_pool=xu, teacher_probs=tu, objective=VanillaObjective("soft"), pool_weights=w,
                  config=cfg)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_slam_objective_with_alpha_one_trains_like_vanilla(digits_ctx):
    _, (xl, yl, xu, tu), cfg = digits_ctx
    a, b = _model(), _model()
    train_student(a, xl, yl, x_pool=xu, teacher_probs=tu, objective=VanillaObjective("hard"), config=cfg)
    obj = cr.SlamObjective(np.ones(len(tu)), np.full(len(tu), 3), mode="hard")
    train_student(b, xl, yl, x_pool=xu, teacher_probs=tu, objective=obj, config=cfg)
    assert all(torch.allclose(p, q, atol=1e-6) for p, q in zip(a.parameters(), b.parameters()))


def test_taid_resumes_its_schedule_from_a_checkpoint(tmp_path, digits_ctx):
    _, (xl, yl, xu, tu), _ = digits_ctx
    ck = str(tmp_path / "taid.pt")
    obj = cr.TaidObjective(n_epochs=3)
    cfg = TrainConfig(epochs=2, min_steps=0, batch_size=256, device="cpu", checkpoint_path=ck)
    train_student(_model(), xl, yl, x_pool=xu, teacher_probs=tu, objective=obj, config=cfg)
    resumed = cr.TaidObjective(n_epochs=3)
    train_student(_model(), xl, yl, x_pool=xu, teacher_probs=tu, objective=resumed, config=cfg)  # nothing left to do
    assert resumed.t == pytest.approx(obj.t) == pytest.approx(1.0)


def test_cleanlab_filter_flags_mostly_teacher_mistakes(digits_ctx):
    from dataclasses import replace
    from sklearn.datasets import load_digits
    ctx, (xl, yl, xu, tu), cfg = digits_ctx
    y_pool = load_digits().target[260:860]
    plan = plan_method("cleanlab-filter", replace(ctx, pool_features=xu))
    dropped = plan.pool_weights == 0
    wrong = tu.argmax(1) != y_pool
    assert 0 < dropped.mean() < 0.6
    assert dropped[wrong].mean() > 2 * dropped[~wrong].mean()  # confident learning finds the teacher's errors
    res = train_student(_model(), xl, yl, x_pool=xu, teacher_probs=tu, objective=plan.objective,
                        pool_weights=plan.pool_weights, config=cfg)
    assert np.isfinite(res.history[-1]["loss"])
    with pytest.raises(ConfigError, match="pool's features"):
        plan_method("cleanlab-filter", ctx)


@pytest.mark.parametrize("normalized", [False, True])
def test_slam_precomputed_pool_coefficients_match_per_step_loss(normalized):
    """The objective's once-per-pool constants give the same loss and gradient as recomputing the
    top-k set from each batch, including per-example k, α = 1 rows and one-hot (tied) teachers."""
    logits, teacher = _rand(n=40, c=6, seed=3)
    teacher = teacher.float()
    teacher[:5] = F.one_hot(teacher[:5].argmax(1), 6).float()  # ties at 0 in the top-k sort
    k = np.random.default_rng(0).integers(2, 6, size=40)
    alpha = np.random.default_rng(1).uniform(0.5, 1.0, size=40)
    alpha[::7] = 1.0
    if normalized:
        alpha = np.maximum(alpha, 1.0 / k)
    fast = cr.SlamObjective(alpha, k, mode="soft", normalized=normalized, teacher_probs_pool=teacher.numpy())
    slow = cr.SlamObjective(alpha, k, mode="soft", normalized=normalized)
    assert "coef" in fast._np and "coef" not in slow._np
    idx = torch.tensor([3, 0, 17, 8, 39, 1, 5])
    z = logits.float()[idx]
    lf, gf = _grad(lambda q: fast.pool_loss(q, teacher[idx], idx), z)
    ls, gs = _grad(lambda q: slow.pool_loss(q, teacher[idx], idx), z)
    assert torch.allclose(lf, ls, atol=1e-6) and torch.allclose(gf, gs, atol=1e-6)
    with pytest.raises(ConfigError, match="teacher_probs_pool"):
        cr.SlamObjective(alpha, k, teacher_probs_pool=teacher.numpy()[:10])


def test_auto_keeps_the_candidate_with_best_validation_accuracy(digits_ctx):
    ctx, (xl, yl, xu, tu), cfg = digits_ctx
    cands = ["vanilla-soft", "threshold", "slam-hard"]  # simplest first (auto orders them so)
    seen = []
    real = ctx.train_and_predict

    def spy(plan):
        out = real(plan)
        seen.append(float((out[1].argmax(1) == ctx.val_labels).mean()))
        return out

    # no cross-fitting, no noise rule: the plain best on V
    plain = {"auto_candidates": cands[::-1], "auto_folds": 1, "auto_noise_se": 0}
    auto_ctx = MethodContext(**{**ctx.__dict__, "train_and_predict": spy, "options": plain})
    plan = plan_method("auto", auto_ctx)
    info = plan.info["auto"]
    assert list(info["val_accuracy"]) == cands and list(info["val_accuracy"].values()) == seen
    assert info["val_accuracy"][info["chosen"]] == max(seen)
    assert type(plan.objective) is type(plan_method(info["chosen"], ctx).objective)
    # cross-fitted (default 2 folds): methods that fit on V train once per fold, vanilla once
    seen.clear()
    plan_method("auto", MethodContext(**{**auto_ctx.__dict__, "options": {"auto_candidates": cands}}))
    assert len(seen) == 1 + 2 + 2
    for bad in (["auto"], ["nope"], []):
        with pytest.raises(ConfigError, match="auto_candidates"):
            plan_method("auto", MethodContext(**{**ctx.__dict__, "options": {"auto_candidates": bad}}))


def test_calibrated_soft_retempers_an_overconfident_teacher_on_v_without_moving_argmax(digits_ctx):
    ctx, (xl, yl, xu, tu), cfg = digits_ctx
    from mentor.reliability import apply_temperature
    sharp = dict(teacher_probs_pool=apply_temperature(ctx.teacher_probs_pool, 0.25).astype(np.float32),
                 teacher_probs_val=apply_temperature(ctx.teacher_probs_val, 0.25).astype(np.float32))
    over = MethodContext(**{**ctx.__dict__, **sharp})
    plan = plan_method("calibrated-soft", over)
    assert plan.info["teacher_temperature"] > 2.0  # undoes most of the 4x sharpening
    assert np.array_equal(plan.pool_targets.argmax(1), over.teacher_probs_pool.argmax(1))
    assert plan.pool_targets.max(1).mean() < over.teacher_probs_pool.max(1).mean()
    assert plan.targets(over.teacher_probs_pool) is plan.pool_targets
    # the option gives any method the calibrated outputs (and the same temperature)
    slam = plan_method("slam", MethodContext(**{**over.__dict__, "options": {"calibrate_teacher": True}}))
    assert slam.info["teacher_temperature"] == pytest.approx(plan.info["teacher_temperature"])
    assert np.allclose(slam.pool_targets, plan.pool_targets)
    assert plan_method("slam", over).pool_targets is None


def test_dkd_options_are_checked_and_reach_the_objective(digits_ctx):
    from dataclasses import replace

    from mentor.methods import check_method_options
    ctx, *_ = digits_ctx
    check_method_options("dkd", {"dkd_alpha": 0.5, "dkd_beta": 2})
    with pytest.raises(ConfigError, match="dkd_beta must be"):
        check_method_options("dkd", {"dkd_beta": -1})
    with pytest.raises(ConfigError, match="not read by method 'dkd'"):
        check_method_options("dkd", {"slam_k_rule": "topk-accuracy"})
    plan = plan_method("dkd", replace(ctx, options={"dkd_alpha": 0.5, "dkd_beta": 2.0}, temperature=3.0))
    assert (plan.objective.alpha, plan.objective.beta, plan.objective.temperature) == (0.5, 2.0, 3.0)
