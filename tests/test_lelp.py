"""LELP: subclass targets from the teacher's embeddings, the subclass head, and a run end to end."""

import subprocess
import sys

import numpy as np
import pytest
import torch

from mentor.errors import ConfigError
from mentor.methods import MethodContext, plan_method
from mentor.students.models import MLP
from mentor.students.subclass import SubclassHead, lelp_targets, logit_directions


def _linear_teacher(n=600, d=12, c=3, seed=0):
    """Embeddings and the probabilities of a linear head on them: the LELP setting, exactly."""
    rng = np.random.default_rng(seed)
    h = rng.normal(size=(n, d))
    w, b = rng.normal(size=(c, d)), rng.normal(size=c)
    z = h @ w.T + b
    p = np.exp(z - z.max(1, keepdims=True))
    return h, w, p / p.sum(1, keepdims=True)


def test_logit_directions_are_exactly_what_changes_the_teachers_probabilities():
    h, w, p = _linear_teacher()
    basis = logit_directions(h, p)
    assert basis.shape == (12, 2)  # 3 classes: 2 directions matter (a shift of all logits does not)
    centred = w - w.mean(0)
    # the basis spans the centred head: projecting the head's rows on it leaves them unchanged
    assert np.allclose(centred @ basis @ basis.T, centred, atol=1e-6)
    assert np.allclose(basis.T @ basis, np.eye(2), atol=1e-8)


def test_targets_keep_the_teachers_class_probabilities_and_split_along_ignored_directions():
    h, w, p = _linear_teacher()
    t, info = lelp_targets(h, p, directions=2)
    assert t.shape == (600, 3 * 4) and info["lelp_subclasses"] == 4
    assert np.allclose(t.reshape(600, 3, 4).sum(2), p, atol=1e-6)  # class marginals: the teacher's
    assert np.allclose(t.sum(1), 1.0, atol=1e-6)
    # moving an embedding along a direction the head reads changes nothing in the split...
    basis = logit_directions(h, p)
    free_dir = np.linalg.svd(np.eye(12) - basis @ basis.T)[0][:, 0]
    split = t.reshape(600, 3, 4) / p[:, :, None]
    assert split.std(0).max() > 0.05  # the split does vary between examples
    # ...and moving it along one the head ignores moves the split but not the class probabilities
    h2 = h.copy()
    h2[:10] += 3.0 * free_dir
    t2, _ = lelp_targets(h2, p, directions=2)
    assert np.allclose(t2.reshape(600, 3, 4).sum(2), p, atol=1e-6)
    assert np.abs(t2[:10] - t[:10]).max() > 1e-3


def test_zero_directions_is_vanilla_soft_distillation():
    h, _, p = _linear_teacher()
    t, info = lelp_targets(h, p, directions=0)
    assert info["lelp_subclasses"] == 1 and np.allclose(t, p)


def test_subclass_head_returns_class_log_probs_that_sum_its_subclasses():
    torch.manual_seed(0)
    model = SubclassHead(MLP(8, 3, hidden=(16,)), 3, 4)
    x = torch.randn(5, 8)
    model.train()
    logp = model(x)
    sub = torch.softmax(model.subclass_logits, -1).view(5, 3, 4).sum(-1)
    assert torch.allclose(logp.exp(), sub, atol=1e-6)
    assert torch.allclose(logp.exp().sum(1), torch.ones(5), atol=1e-6)
    with pytest.raises(ConfigError, match="no"):
        SubclassHead(torch.nn.ReLU(), 3, 4)


def test_lelp_without_embeddings_is_refused_with_the_fix():
    with pytest.raises(ConfigError, match="teacher.embeddings: true"):
        plan_method("lelp", MethodContext(n_classes=3, teacher_probs_pool=np.full((4, 3), 1 / 3)))


def test_a_lelp_run_keeps_embeddings_in_the_store_and_ships_a_rebuildable_student(tmp_path):
    from mentor.pipeline import evaluate, label, load_student, prepare, student_probs, train
    from mentor.presets import demo_config
    from mentor.students.export import load_student_folder, save_student_folder  # noqa: F401
    cfg = demo_config(str(tmp_path / "run"))
    cfg.method, cfg.teacher.embeddings = "lelp", True
    cfg.method_options = {"lelp_directions": 1}
    cfg.train.epochs, cfg.train.min_steps = 2, 100
    cfg.teacher.epochs, cfg.teacher.min_steps = 20, 300
    ctx = prepare(cfg)
    store = label(ctx)
    assert "embedding" in store.extra_columns
    info = train(ctx, store)
    assert info["lelp_subclasses"] == 2 and info["method"] == "lelp"
    model, _, _ = load_student(ctx)
    assert isinstance(model, SubclassHead) and int(model.subclasses) == 2
    probs = student_probs(ctx, "student", ctx.splits.val)
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    train(ctx, store, labeled_only=True)
    assert evaluate(ctx, store)["test_accuracy"] > 0.5
    # the shipped folder rebuilds the subclass student in torch (not only in ONNX)
    out = subprocess.run([sys.executable, "-m", "mentor.cli", "export", str(tmp_path / "run"), str(tmp_path / "m")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    shipped, _, meta = load_student_folder(tmp_path / "m")
    assert meta["student"]["kind"] == "subclass" and isinstance(shipped, SubclassHead)


def test_cli_refuses_lelp_without_embeddings_and_embeddings_from_a_teacher_that_has_none(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"output_dir: {tmp_path / 'run'}\nmethod: lelp\ndata: {{name: digits}}\n"
                   "split: {n_labeled: 60, n_val: 100, n_test: 100}\n"
                   "teacher: {kind: logistic}\ntrain: {epochs: 1, min_steps: 0}\n")
    out = subprocess.run([sys.executable, "-m", "mentor.cli", "check-config", str(cfg)], capture_output=True, text=True)
    assert out.returncode == 2 and "Traceback" not in out.stderr + out.stdout
    assert "teacher.embeddings: true" in " ".join((out.stderr + out.stdout).split())
    out = subprocess.run([sys.executable, "-m", "mentor.cli", "run", str(cfg), "--set", "teacher.embeddings=true",
                          "--set", "teacher.kind=hgb"], capture_output=True, text=True)
    assert out.returncode == 2 and "cannot give its embeddings" in " ".join((out.stderr + out.stdout).split())
    out = subprocess.run([sys.executable, "-m", "mentor.cli", "check-config", str(cfg), "--set",
                          "method_options.lelp_directions=-1"], capture_output=True, text=True)
    assert out.returncode == 2 and "lelp_directions" in out.stderr + out.stdout


def test_embeddings_survive_the_row_log_the_shard_merge_and_a_reopen(tmp_path):
    """A paid answer's embedding is kept like its probabilities: through row-log frames, their
    flush into a Parquet shard and a fresh open, aligned to the ids asked for."""
    from mentor.store import TeacherStore
    from mentor.store.extras import vectors
    from mentor.teachers import EmbeddingTeacher, TorchTeacher

    torch.manual_seed(0)
    teacher = EmbeddingTeacher(TorchTeacher(MLP(6, 3, hidden=(5,)), 3))
    x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
    ids = np.array([f"r{i}" for i in range(50)])
    store = TeacherStore(tmp_path / "s", fingerprint=teacher.fingerprint, n_classes=3, shard_size=16)
    store.label(teacher, ((ids[i:i + 7], x[i:i + 7]) for i in range(0, 50, 7)))
    again = TeacherStore.open(tmp_path / "s")
    order = ids[::-1]
    got = vectors(again.read_extras(order, "embedding").column("embedding"))
    with torch.no_grad():
        want = torch.relu(teacher.teacher.module.net[0](torch.from_numpy(x[::-1].copy()))).numpy()
    assert got.shape == (50, 5) and np.allclose(got, want, atol=1e-5)
    assert teacher.fingerprint.endswith("-emb") and teacher.describe()["embeddings"] is True
