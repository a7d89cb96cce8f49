"""The bundled trainer: seeding, weights hook, checkpoint/resume, errors."""

import numpy as np
import pytest
import torch

from mentor.errors import ConfigError, DataError
from mentor.students.models import MLP
from mentor.students.train import TrainConfig, VanillaObjective, predict_proba, train_student


@pytest.fixture(scope="module")
def toy():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    rng = np.random.default_rng(0)
    t = rng.dirichlet(np.ones(10), size=400).astype(np.float32)
    t[np.arange(400), y[100:500]] += 2.0
    t /= t.sum(1, keepdims=True)
    return x[:100], y[:100], x[100:500], t, x[500:], y[500:]


def _model(seed=0):
    torch.manual_seed(seed)
    return MLP(64, 10, (16,))


def _params(m):
    return torch.cat([p.detach().flatten() for p in m.parameters()])


def test_seeded_runs_are_identical_and_seeds_differ(toy):
    xl, yl, xu, t, *_ = toy
    cfg = TrainConfig(epochs=3, min_steps=0, seed=1)
    a, b, c = _model(), _model(), _model()
    train_student(a, xl, yl, x_pool=xu, teacher_probs=t, config=cfg)
    train_student(b, xl, yl, x_pool=xu, teacher_probs=t, config=cfg)
    train_student(c, xl, yl, x_pool=xu, teacher_probs=t, config=TrainConfig(epochs=3, min_steps=0, seed=2))
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))


def test_unit_weights_reproduce_unweighted_training(toy):
    xl, yl, xu, t, *_ = toy
    cfg = TrainConfig(epochs=2, min_steps=0)
    a, b = _model(), _model()
    train_student(a, xl, yl, x_pool=xu, teacher_probs=t, config=cfg)
    train_student(b, xl, yl, x_pool=xu, teacher_probs=t, pool_weights=np.ones(len(xu)), config=cfg)
    assert torch.allclose(_params(a), _params(b), atol=1e-6)


def test_zero_weight_examples_are_ignored(toy):
    """Zero weight on a pool example must make the run identical to one where its target is garbage."""
    xl, yl, xu, t, *_ = toy
    w = np.ones(len(xu), np.float32)
    w[:50] = 0
    t2 = t.copy()
    t2[:50] = np.roll(t2[:50], 3, axis=1)
    cfg = TrainConfig(epochs=2, min_steps=0)
    a, b = _model(), _model()
    train_student(a, xl, yl, x_pool=xu, teacher_probs=t, pool_weights=w, config=cfg)
    train_student(b, xl, yl, x_pool=xu, teacher_probs=t2, pool_weights=w, config=cfg)
    assert torch.allclose(_params(a), _params(b), atol=1e-6)


def test_distillation_helps_the_student_on_digits(toy):
    xl, yl, xu, t, xt, yt = toy
    from sklearn.datasets import load_digits
    y_all = load_digits().target
    clean = np.eye(10, dtype=np.float32)[y_all[100:500]]  # an oracle teacher
    a, b = _model(), _model()
    train_student(a, xl, yl, config=TrainConfig(epochs=20, min_steps=300))
    train_student(b, xl, yl, x_pool=xu, teacher_probs=clean, config=TrainConfig(epochs=20, min_steps=300))
    acc = lambda m: (predict_proba(m, xt).argmax(1) == yt).mean()
    assert acc(b) > acc(a) + 0.02


class _Crash(VanillaObjective):
    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_epoch_end(self, epoch):
        if epoch + 1 == self.at:
            raise KeyboardInterrupt("simulated crash")


def test_checkpoint_resume_gives_the_same_model(toy, tmp_path):
    xl, yl, xu, t, *_ = toy
    ck = tmp_path / "ck.pt"
    cfg = TrainConfig(epochs=4, min_steps=0, checkpoint_path=str(ck))
    ref = _model()
    train_student(ref, xl, yl, x_pool=xu, teacher_probs=t, config=TrainConfig(epochs=4, min_steps=0))
    m = _model()
    with pytest.raises(KeyboardInterrupt):
        train_student(m, xl, yl, x_pool=xu, teacher_probs=t, objective=_Crash(3), config=cfg)
    assert ck.exists()
    m2 = _model(seed=123)  # fresh process state: weights come from the checkpoint
    res = train_student(m2, xl, yl, x_pool=xu, teacher_probs=t, config=cfg)
    assert res.resumed_from_epoch == 2
    assert len(res.history) == 4
    assert torch.allclose(_params(ref), _params(m2), atol=1e-6)


def test_checkpoint_from_another_config_is_refused(toy, tmp_path):
    xl, yl, xu, t, *_ = toy
    ck = tmp_path / "ck.pt"
    train_student(_model(), xl, yl, config=TrainConfig(epochs=1, min_steps=0, checkpoint_path=str(ck)))
    with pytest.raises(ConfigError, match="another training config"):
        train_student(_model(), xl, yl, config=TrainConfig(epochs=2, min_steps=0, checkpoint_path=str(ck)))


@pytest.mark.parametrize("weights, match", [
    (np.zeros(400), "all pool_weights are zero"),
    (np.full(400, np.nan), "finite and non-negative"),
    (-np.ones(400), "finite and non-negative"),
    (np.ones(3), "shape"),
])
def test_bad_weights(toy, weights, match):
    xl, yl, xu, t, *_ = toy
    with pytest.raises(DataError, match=match):
        train_student(_model(), xl, yl, x_pool=xu, teacher_probs=t, pool_weights=weights,
                      config=TrainConfig(epochs=1, min_steps=0))


def test_teacher_rows_must_match_pool(toy):
    xl, yl, xu, t, *_ = toy
    with pytest.raises(DataError, match="one row per pool example"):
        train_student(_model(), xl, yl, x_pool=xu, teacher_probs=t[:10], config=TrainConfig(epochs=1))
