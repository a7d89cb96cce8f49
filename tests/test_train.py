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


# ------------------------------------------------------------------ the epoch kept: chosen on V (select_on)

def _val_acc(m, x, y):
    return float((predict_proba(m, x).argmax(1) == y).mean())


def test_select_on_keeps_the_weights_of_the_epoch_best_on_val(toy):
    from mentor.students.train import val_scores
    xl, yl, xu, t, xt, yt = toy
    xv, yv_wrong = xl, (yl + 1) % 10  # a V that contradicts A: the more the student learns, the worse it scores
    last, best = _model(), _model()
    cfg = dict(epochs=8, min_steps=0, lr=3e-3)
    r_last = train_student(last, xl, yl, x_pool=xu, teacher_probs=t, config=TrainConfig(**cfg),
                           x_val=xv, y_val=yv_wrong)
    r_best = train_student(best, xl, yl, x_pool=xu, teacher_probs=t, x_val=xv, y_val=yv_wrong,
                           config=TrainConfig(**cfg, select_on="val_nll"))
    nll = [h["val_nll"] for h in r_best.history]
    assert [h["val_nll"] for h in r_last.history] == nll  # scoring V changes nothing in training
    assert r_last.best_epoch is None and val_scores(last, xv, yv_wrong, "cpu")["val_nll"] == pytest.approx(nll[-1])
    assert r_best.best_epoch == 1 + int(np.argmin(nll)) and len(r_best.history) == 8
    assert val_scores(best, xv, yv_wrong, "cpu")["val_nll"] == pytest.approx(min(nll))  # best epoch's weights back
    assert min(nll) < nll[-1] - 0.1  # so keeping the last epoch would have been different
    acc = train_student(_model(), xl, yl, x_pool=xu, teacher_probs=t, x_val=xt, y_val=yt,
                        config=TrainConfig(**cfg, select_on="val_accuracy"))
    accs = [h["val_accuracy"] for h in acc.history]
    assert acc.best_epoch == 1 + int(np.argmax(accs))  # the first of equal scores: the earlier epoch


def test_patience_stops_training_after_epochs_without_a_better_val_score(toy):
    xl, yl, xu, t, *_ = toy
    r = train_student(_model(), xl, yl, x_pool=xu, teacher_probs=t, x_val=xl, y_val=(yl + 1) % 10,
                      config=TrainConfig(epochs=30, min_steps=0, lr=3e-3, select_on="val_accuracy", patience=2))
    assert r.stopped_early and len(r.history) == r.best_epoch + 2 < 30
    accs = [h["val_accuracy"] for h in r.history]
    assert max(accs[r.best_epoch:]) <= accs[r.best_epoch - 1]  # no later epoch was better


def test_a_resumed_run_keeps_the_same_best_epoch_and_weights(toy, tmp_path):
    xl, yl, xu, t, xv, yv = toy
    ck = tmp_path / "ck.pt"
    kw = dict(epochs=6, min_steps=0, lr=3e-3, select_on="val_accuracy", patience=3)
    ref = _model()
    r_ref = train_student(ref, xl, yl, x_pool=xu, teacher_probs=t, x_val=xv, y_val=yv, config=TrainConfig(**kw))
    m = _model()
    with pytest.raises(KeyboardInterrupt):
        train_student(m, xl, yl, x_pool=xu, teacher_probs=t, objective=_Crash(4), x_val=xv, y_val=yv,
                      config=TrainConfig(**kw, checkpoint_path=str(ck)))
    m2 = _model(seed=123)
    res = train_student(m2, xl, yl, x_pool=xu, teacher_probs=t, x_val=xv, y_val=yv,
                        config=TrainConfig(**kw, checkpoint_path=str(ck)))
    assert res.resumed_from_epoch == 3 and res.history == r_ref.history and res.best_epoch == r_ref.best_epoch
    assert torch.allclose(_params(ref), _params(m2), atol=1e-6)


@pytest.mark.parametrize("kw, val, match", [
    ({"select_on": "val_accuracy"}, False, "no V was given"),
    ({"patience": 3}, True, "needs train.select_on"),
    ({"select_on": "best"}, True, "must be one of last, val_accuracy, val_nll"),
])
def test_select_on_without_val_or_patience_without_select_on_is_a_clear_error(toy, kw, val, match):
    xl, yl, _, _, xv, yv = toy
    with pytest.raises(ConfigError, match=match):
        train_student(_model(), xl, yl, config=TrainConfig(epochs=1, min_steps=0, **kw),
                      **({"x_val": xv, "y_val": yv} if val else {}))


def test_cli_names_the_fix_for_patience_without_select_on_and_select_on_without_val(tmp_path):
    import subprocess
    import sys
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\ndata: {{name: digits}}\n"
                   "split: {n_labeled: 60, n_val: 100, n_test: 100}\ntrain: {epochs: 3, patience: 2}\n")
    run = lambda *extra: subprocess.run([sys.executable, "-m", "mentor.cli", "check-config", str(cfg), *extra],  # noqa: E731
                                        capture_output=True, text=True)
    out = run()
    said = " ".join((out.stderr + out.stdout).split())
    assert out.returncode == 2 and "Traceback" not in said and "train.select_on: val_accuracy or val_nll" in said
    out = run("--set", "train.select_on=val_nll", "--set", "split.n_val=0")
    said = " ".join((out.stderr + out.stdout).split())
    assert out.returncode == 2 and "split.n_val is 0" in said and "train.select_on: last" in said
    out = run("--set", "train.select_on=val_nll")
    assert out.returncode == 0 and "select_on: val_nll" in out.stdout and "patience: 2" in out.stdout


# --- bfloat16 autocast: train.amp (CUDA) and train.amp_on_cpu share one code path ---------------

@pytest.fixture(scope="module")
def labeled_digits(tmp_path_factory):
    """One digits run prepared and labeled once (a logistic teacher with embeddings, for lelp)."""
    from mentor.config import parse_config
    from mentor.pipeline import get_teacher, label, prepare
    base = {"data": {"name": "digits"}, "split": {"n_labeled": 60, "n_val": 60, "n_test": 100, "n_pool": 160},
            "teacher": {"kind": "logistic", "embeddings": True}, "student": {"kind": "mlp", "hidden": [32]},
            "train": {"epochs": 2, "min_steps": 0, "batch_size": 32}, "baseline": False,
            "output_dir": str(tmp_path_factory.mktemp("amp") / "run")}
    ctx = prepare(parse_config(base), force=True)
    return base, ctx, label(ctx, get_teacher(ctx))


def _train_probs(labeled, method, name, amp_on_cpu):
    from mentor.config import parse_config
    from mentor.pipeline import RunContext, student_probs, train
    base, ctx, store = labeled
    opts = {"auto_candidates": ["labeled-only", "vanilla-soft", "slam"], "auto_folds": 1} if method == "auto" else {}
    cfg = parse_config({**base, "method": method, "method_options": opts,
                        "train": {**base["train"], "amp_on_cpu": amp_on_cpu}})
    run = RunContext(cfg, ctx.data, ctx.splits, ctx.out)
    train(run, store, method=method, name=name)
    return student_probs(run, name, ctx.splits.test)


def _linear_output_dtypes():
    """Record the dtype of every training-mode nn.Linear output (a context: the hook is global)."""
    import contextlib

    @contextlib.contextmanager
    def ctx():
        seen = []
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda mod, _, out: seen.append(out.dtype) if isinstance(mod, torch.nn.Linear) and mod.training else None)
        try:
            yield seen
        finally:
            hook.remove()
    return ctx()


@pytest.mark.filterwarnings("ignore:train.amp_on_cpu is set")
@pytest.mark.parametrize("method", sorted(__import__("mentor.methods", fromlist=["METHODS"]).METHODS))
def test_every_method_trains_under_bfloat16_autocast_as_in_float32(labeled_digits, method):
    """train.amp runs each step under bfloat16 autocast on CUDA, train.amp_on_cpu on CPU: the same
    torch.autocast call, so this CPU test covers what no GPU here can. Every method's objective and
    weights must accept bfloat16 logits, and the student come out as the float32 one does, up to rounding."""
    with _linear_output_dtypes() as fp32_dtypes:
        fp32 = _train_probs(labeled_digits, method, f"fp32-{method}", False)
    with _linear_output_dtypes() as dtypes:
        bf16 = _train_probs(labeled_digits, method, f"bf16-{method}", True)
    assert set(fp32_dtypes) == {torch.float32} and set(dtypes) == {torch.bfloat16}  # every training forward
    assert np.isfinite(bf16).all() and np.allclose(bf16.sum(1), 1, atol=1e-5)
    assert np.abs(bf16 - fp32).max() < 0.02 and (bf16.argmax(1) == fp32.argmax(1)).mean() >= 0.95
    assert not np.array_equal(bf16, fp32)  # so autocast changed the arithmetic


def test_amp_on_cpu_is_off_by_default_warns_without_native_bfloat16_and_old_checkpoints_match(monkeypatch):
    import warnings
    from mentor.config import ADDED_KEYS, TrainSection
    from mentor.students import train as trainer
    assert not TrainSection().amp_on_cpu and ADDED_KEYS[("train", "amp_on_cpu")] is False
    assert "amp_on_cpu" not in trainer._config_record(TrainConfig())  # so a checkpoint from before it matches
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert not trainer.uses_autocast(TrainConfig(), cpu) and trainer.uses_autocast(TrainConfig(), cuda)
    assert not trainer.uses_autocast(TrainConfig(amp=False), cuda)
    monkeypatch.setattr(trainer, "cpu_has_native_bfloat16", lambda: False)
    with pytest.warns(UserWarning, match="no native bfloat16"):
        assert trainer.uses_autocast(TrainConfig(amp_on_cpu=True), cpu)
    monkeypatch.setattr(trainer, "cpu_has_native_bfloat16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert trainer.uses_autocast(TrainConfig(amp_on_cpu=True), cpu)
