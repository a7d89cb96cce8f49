"""DHO (dual-head distillation): the blend's ends are the two heads, each head learns from its own
data only, the blend weight is chosen on V and only there, and a dho student saves and loads."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mentor.errors import ConfigError
from mentor.methods import MethodContext, plan_method, train_with_plan
from mentor.students.dual import DHOObjective, DualHead, blend_probs, choose_blend
from mentor.students.models import MLP, SmallCNN
from mentor.students.train import TrainConfig, predict_proba


def _dual(seed=0, base=None):
    torch.manual_seed(seed)
    return DualHead(base or MLP(8, 3, (16,)))


def test_blend_ends_are_the_two_heads():
    model = _dual()
    x = torch.randn(20, 8)
    label, teacher = model.eval().heads(x)
    for w, head in ((0.0, label), (1.0, teacher)):
        model.blend.fill_(w)
        assert torch.allclose(torch.softmax(model(x), -1), torch.softmax(head, -1), atol=1e-6)
    model.blend.fill_(0.3)
    want = blend_probs(torch.softmax(label, -1), torch.softmax(teacher, -1), 0.3)
    assert torch.allclose(torch.softmax(model(x), -1), want, atol=1e-6)
    # with blend 0 the wrapped student predicts exactly what the plain student predicts
    model.blend.fill_(0.0)
    plain = predict_proba(model.base, x.numpy(), device="cpu")
    assert np.allclose(predict_proba(model, x.numpy(), device="cpu"), plain, atol=1e-6)


def test_each_head_learns_only_from_its_own_targets():
    """CE on labels moves the label head and not the teacher head; the pool term the reverse."""
    model = _dual().train()
    obj = DHOObjective()
    obj.bind(model)
    x, y = torch.randn(10, 8), torch.randint(0, 3, (10,))
    F.cross_entropy(model(x), y).backward()
    assert model.teacher_head.weight.grad is None and model.base.net[-1].weight.grad.abs().sum() > 0
    model.zero_grad(set_to_none=True)
    t = torch.softmax(torch.randn(10, 3), -1)
    obj.pool_loss(model(x), t, None).sum().backward()
    assert model.base.net[-1].weight.grad is None and model.teacher_head.weight.grad.abs().sum() > 0
    assert model.base.net[0].weight.grad.abs().sum() > 0  # the shared backbone learns from the pool too


def test_blend_is_chosen_on_v_and_favours_the_head_that_is_right_there():
    y = np.array([0, 1, 2, 0, 1, 2])
    right = np.eye(3)[y] * 0.8 + 0.2 / 3
    wrong = np.eye(3)[(y + 1) % 3] * 0.8 + 0.2 / 3
    assert choose_blend(right, wrong, y)["dho_blend"] == 0.0
    assert choose_blend(wrong, right, y)["dho_blend"] == 1.0
    mixed = choose_blend(np.full((6, 3), 1 / 3), right, y)
    assert mixed["dho_val_accuracy"] == 1.0 and mixed["dho_teacher_head_val_accuracy"] == 1.0


def test_wrapper_fits_cnn_students_and_refuses_a_student_without_a_linear_layer():
    model = DualHead(SmallCNN((1, 8, 8), 4))
    label, teacher = model.heads(torch.rand(2, 64))
    assert label.shape == teacher.shape == (2, 4)
    with pytest.raises(ConfigError, match="last linear layer"):
        DualHead(torch.nn.Sequential(torch.nn.ReLU()))
    with pytest.raises(ConfigError, match="dual-head student"):
        DHOObjective().bind(MLP(8, 3))


def _digits(seed=0):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    rng = np.random.default_rng(seed)
    t = np.eye(10)[np.where(rng.random(len(y)) < 0.8, y, rng.integers(0, 10, len(y)))] * 0.9 + 0.01
    return x, y, t.astype(np.float32)


def test_training_never_sees_v_only_the_blend_does():
    """Two runs that differ only in V's labels train identical weights; only the blend moves."""
    x, y, t = _digits()
    xl, yl, xu, tu, xv, yv = x[:60], y[:60], x[260:760], t[260:760], x[60:260], y[60:260]
    cfg = TrainConfig(epochs=2, min_steps=0, batch_size=128, device="cpu")
    states, blends = [], []
    for labels in (yv, (yv + 1) % 10):
        ctx = MethodContext(n_classes=10, teacher_probs_pool=tu, val_labels=labels)
        plan = plan_method("dho", ctx)
        torch.manual_seed(0)
        model = plan.student_wrapper(MLP(64, 10, (16,)))
        train_with_plan(model, xl, yl, xu, tu, plan, cfg)
        states.append({k: v.clone() for k, v in model.state_dict().items() if k != "blend"})
        blends.append(model.fit_blend(xv, labels, device="cpu"))
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])
    assert blends[0]["dho_val_accuracy"] > blends[1]["dho_val_accuracy"]
    with pytest.raises(ConfigError, match="V is empty"):
        plan_method("dho", MethodContext(n_classes=10, teacher_probs_pool=tu, val_labels=np.array([], int)))
    with pytest.raises(ConfigError, match="cannot be an auto candidate"):
        plan_method("auto", MethodContext(n_classes=10, teacher_probs_pool=tu, teacher_probs_val=t[60:260],
                                          val_labels=yv, train_and_predict=lambda p: None,
                                          options={"auto_candidates": ["vanilla-soft", "dho"]}))


def test_a_dho_run_saves_its_blend_and_loads_as_a_dual_head(tmp_path):
    from mentor.pipeline import evaluate, label, load_student, prepare, student_probs, train
    from mentor.presets import demo_config
    cfg = demo_config(str(tmp_path / "run"))
    cfg.method = "dho"
    cfg.train.epochs, cfg.train.min_steps = 2, 300
    ctx = prepare(cfg)
    store = label(ctx)
    info = train(ctx, store)
    assert 0.0 <= info["dho_blend"] <= 1.0 and info["method"] == "dho"
    model, _, saved = load_student(ctx)
    assert isinstance(model, DualHead) and float(model.blend) == pytest.approx(saved["dho_blend"])
    probs = student_probs(ctx, "student", ctx.splits.val)
    assert np.mean(probs.argmax(1) == ctx.data.labels[ctx.splits.val]) == pytest.approx(info["dho_val_accuracy"])
    train(ctx, store, labeled_only=True)
    metrics = evaluate(ctx, store)
    assert metrics["test_accuracy"] > 0.5
    assert json.loads(json.dumps(info))  # the run info stays plain data
