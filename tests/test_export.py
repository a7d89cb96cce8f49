"""The shippable student folder: written by `mentor run`, read back with the same probabilities,
exported to ONNX within 1e-4 of torch for every built-in kind, used by `mentor predict` on real
files, and refusing bad folders and bad inputs with exit 2 (never unpickling anything)."""

import json
import pickle
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

from mentor.errors import DataError
from mentor.students.export import (BUILT_IN_KINDS, FORMAT_VERSION, load_student_folder, predict_file,
                                    save_student_folder)
from mentor.students.models import Featurizer, build_model

MENTOR = [sys.executable, "-m", "mentor.cli"]
TOPICS = ["computers", "food", "sports", "medicine"]


def _cli(*args, cwd=None):
    """The real CLI in a subprocess (what a user runs: exit status, stderr, no traceback)."""
    return subprocess.run([*MENTOR, *args], capture_output=True, text=True, cwd=cwd)


class _Result:
    def __init__(self, r):
        self.returncode, self.stdout, self.stderr = r.exit_code, r.stdout, r.stderr


def _cli_here(*args):
    """The same CLI in this process (typer's runner): the many error cases without a Python start each."""
    from typer.testing import CliRunner
    from mentor.cli import app
    return _Result(CliRunner().invoke(app, [str(a) for a in args]))


def _exit_2(res, *needles):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    assert "Traceback" not in res.stderr and res.stderr.startswith("error: "), res.stderr
    for n in needles:
        assert n in res.stderr, (n, res.stderr)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """A real `mentor run` on digits given as a user's Parquet file (a vector column, string labels)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression
    root = tmp_path_factory.mktemp("digits")
    x, y = load_digits(return_X_y=True)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    ids = [f"img-{i:05d}" for i in range(len(y))]
    pq.write_table(pa.table({"id": ids, "pixels": [list(map(float, r / 16)) for r in x],
                             "label": [names[v] if i < 1000 else None for i, v in enumerate(y)]}),
                   root / "data.parquet")
    probs = LogisticRegression(max_iter=300).fit(x[:300] / 16, y[:300]).predict_proba(x / 16)
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in probs]}), root / "teacher.parquet")
    cfg = {"seed": 0, "output_dir": "run", "data": {"path": "data.parquet", "classes": names},
           "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
           "teacher": {"kind": "file", "path": "teacher.parquet"},
           "student": {"kind": "mlp", "hidden": [32]}, "train": {"epochs": 6, "min_steps": 0}, "baseline": False}
    (root / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli("run", str(root / "config.yaml"))
    assert res.returncode == 0, res.stderr
    # new data as a user brings it: the pixels in another file, without labels
    pq.write_table(pa.table({"id": ids[1000:], "pixels": [list(map(float, r / 16)) for r in x[1000:]]}),
                   root / "new.parquet")
    return root


def test_run_writes_a_model_folder_with_card_and_checked_onnx(digits_run):
    folder = digits_run / "run" / "model"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["README.md", "featurizer.json", "featurizer.safetensors", "mentor_student.json", "model.onnx",
                     "model.safetensors"]  # a tabular file: standardised, mean and scale in safetensors
    rec = json.loads((folder / "mentor_student.json").read_text())
    metrics = json.loads((digits_run / "run" / "metrics.json").read_text())
    assert rec["format_version"] == FORMAT_VERSION and rec["student"]["kind"] == "mlp"
    assert rec["student"]["args"]["in_features"] == 64 and rec["student"]["args"]["hidden"] == [32]
    assert rec["class_names"][:2] == ["zero", "one"] and rec["data"]["inputs"]["columns"] == ["pixels"]
    assert rec["onnx"]["exported"] and rec["onnx"]["max_abs_diff"] <= 1e-4 and rec["onnx"]["checked_rows"] == 200
    assert rec["metrics"]["test"]["accuracy"] == metrics["student"]["accuracy"]
    assert rec["teacher"]["fingerprint"] == metrics["teacher_fingerprint"]
    assert metrics["model_folder"]["onnx"]["exported"]
    lat = rec["latency_ms_per_example"]
    assert all(lat[k] > 0 for k in ("torch_b1_ms", "torch_b64_ms", "onnx_b1_ms", "onnx_b64_ms"))
    card = (folder / "README.md").read_text()
    for needle in (f"{100 * metrics['student']['accuracy']:.2f}%", "ECE", "batch 64", "onnxruntime",
                   "Intended use", "featurizer", rec["teacher"]["fingerprint"], "A = 100"):
        assert needle in card, needle


def test_folder_round_trip_same_probabilities_as_the_run_student(digits_run):
    from mentor.pipeline import load_student, open_run
    from mentor.students.train import predict_proba
    ctx = open_run(digits_run / "run")
    model, feat, _ = load_student(ctx)
    x = ctx.data.features[ctx.splits.test]
    expected = predict_proba(model, feat.transform(x), device="cpu")
    m2, f2, rec = load_student_folder(digits_run / "run" / "model")
    assert np.array_equal(predict_proba(m2, f2.transform(x), device="cpu"), expected)
    assert rec["seed"] == 0 and rec["method"] == "vanilla-soft"


def test_predict_cli_same_argmax_as_the_run_student_torch_and_onnx(digits_run, tmp_path):
    from mentor.pipeline import load_student, open_run
    from mentor.students.train import predict_proba
    ctx = open_run(digits_run / "run")
    model, feat, _ = load_student(ctx)
    expected = predict_proba(model, feat.transform(ctx.data.features[1000:]), device="cpu")
    for runtime in ("torch", "onnx"):
        out = tmp_path / f"pred-{runtime}.parquet"
        cli = _cli if runtime == "torch" else _cli_here
        res = cli("predict", str(digits_run / "run" / "model"), str(digits_run / "new.parquet"), "--out", str(out),
                  "--runtime", runtime, "--batch-size", "100")
        assert res.returncode == 0, res.stderr
        table = pq.read_table(out)
        assert table.column_names[:3] == ["id", "label", "prob_zero"] and table.num_rows == 797
        assert table.column("id").to_pylist() == list(ctx.data.ids[1000:])
        probs = np.stack([table.column(f"prob_{c}").to_numpy() for c in ctx.data.class_names], 1)
        assert np.abs(probs - expected).max() <= 1e-4
        assert table.column("label").to_pylist() == [ctx.data.class_names[i] for i in expected.argmax(1)]


def test_export_command_with_seed_runs_reports_spread(digits_run, tmp_path):
    import shutil
    other = tmp_path / "run-seed1"
    shutil.copytree(digits_run / "run", other, ignore=shutil.ignore_patterns("model", "store", "checkpoints"))
    cfg = yaml.safe_load((other / "config.yaml").read_text())
    cfg["seed"] = 1
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    m = json.loads((other / "metrics.json").read_text())
    m["seed"], m["student"]["accuracy"] = 1, m["student"]["accuracy"] - 0.02
    (other / "metrics.json").write_text(json.dumps(m))
    res = _cli_here("export", str(digits_run / "run"), str(tmp_path / "shipped"), "--seed-run", str(other))
    assert res.returncode == 0, res.stderr
    rec = json.loads((tmp_path / "shipped" / "mentor_student.json").read_text())
    assert [r["seed"] for r in rec["metrics"]["seeds"]] == [0, 1]
    assert "Over 2 seeds (0, 1)" in (tmp_path / "shipped" / "README.md").read_text()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")  # a folder that is not a model folder is never replaced
    _exit_2(_cli_here("export", str(digits_run / "run"), str(tmp_path / "mine")), "is not a mentor model folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    cfg["student"]["hidden"] = [8]  # not the same config: refused, naming the difference
    (other / "config.yaml").write_text(yaml.safe_dump(cfg))
    _exit_2(_cli_here("export", str(digits_run / "run"), str(tmp_path / "x"), "--seed-run", str(other)),
            "student.hidden", "not the same config")


@pytest.mark.parametrize("kind", BUILT_IN_KINDS)
def test_every_built_in_kind_exports_onnx_within_1e4(kind, tmp_path):
    from sklearn.datasets import load_digits
    x, _ = load_digits(return_X_y=True)
    x = (x[:300] / 16).astype(np.float32)
    if kind == "cnn1d":
        x = x[:, :40]  # a 40-long signal: adaptive pooling to 8 that is no divisor of the length
    torch.manual_seed(0)
    model = build_model(kind, in_features=x.shape[1], n_classes=10, image_shape=(1, 8, 8), hidden=(16,))
    feat = Featurizer("standardize").fit(x)
    meta = {"student": {"kind": kind, "args": {"in_features": x.shape[1], "n_classes": 10, "image_shape": [1, 8, 8],
                                               "hidden": [16], "dropout": 0.0}},
            "n_classes": 10, "class_names": None, "data": {"name": "t", "kind": "tabular", "inputs": {}}}
    rec = save_student_folder(model, feat, meta, tmp_path / "m", check_x=feat.transform(x), latency=False)
    assert rec["onnx"]["exported"], rec["onnx"]
    assert rec["onnx"]["max_abs_diff"] <= 1e-4
    m2, f2, _ = load_student_folder(tmp_path / "m")
    with torch.no_grad():
        assert torch.equal(m2(torch.from_numpy(f2.transform(x))), model.eval()(torch.from_numpy(feat.transform(x))))


def test_custom_module_exports_onnx_but_is_not_rebuilt_by_torch(tmp_path):
    from mentor.students.export import built_in_args

    class Odd(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.w(x) * 2

    x = np.random.default_rng(0).normal(size=(20, 4)).astype(np.float32)
    kind, args = built_in_args("mlp", Odd(), {"in_features": 4, "n_classes": 3, "hidden": [8]})
    assert kind == "custom" and args["class"].endswith("Odd")
    meta = {"student": {"kind": kind, "args": args}, "n_classes": 3, "class_names": None,
            "data": {"name": "t", "kind": "tabular", "inputs": {"kind": "tabular", "n_features": 4}}}
    rec = save_student_folder(Odd(), Featurizer().fit(x), meta, tmp_path / "m", check_x=x, latency=False)
    assert rec["onnx"]["exported"]
    with pytest.raises(DataError, match="--runtime onnx"):
        load_student_folder(tmp_path / "m")


def test_writing_a_folder_respects_the_models_forward_batch(tmp_path):
    """The ONNX check and the timings run the module on V's rows: a model with `predict_batch_size`
    (a transformer: 64, EfficientNet: 256) must see no larger batch, or a big V takes gigabytes."""
    from mentor.students.export import built_in_args, torch_probs

    class Small(torch.nn.Module):
        predict_batch_size = 7

        def __init__(self):
            super().__init__()
            self.w, self.seen = torch.nn.Linear(4, 3), []

        def forward(self, x):
            self.seen.append(len(x))
            return self.w(x)

    x = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    model = Small()
    kind, args = built_in_args("mlp", model, {"in_features": 4, "n_classes": 3, "hidden": [8]})
    meta = {"student": {"kind": kind, "args": args}, "n_classes": 3, "class_names": None,
            "data": {"name": "t", "kind": "tabular", "inputs": {"kind": "tabular", "n_features": 4}}}
    save_student_folder(model, Featurizer().fit(x), meta, tmp_path / "m", check_x=x, onnx="off")
    assert model.seen and max(model.seen) == 7  # the timings' torch side (batch 64), in forward batches of 7
    model.seen.clear()
    assert torch_probs(model, x, batch_size=10).shape == (30, 3) and max(model.seen) == 10  # an explicit batch wins


def test_a_student_that_cannot_export_is_recorded_or_refused(tmp_path):
    class NoExport(torch.nn.Module):  # singular values: ONNX has no operator for them
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Linear(4, 3)

        def forward(self, x):
            return self.w(x) + torch.linalg.svdvals(x.T @ x)[:3]

    x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
    meta = {"student": {"kind": "custom", "args": {}}, "n_classes": 3, "class_names": None,
            "data": {"name": "t", "kind": "tabular", "inputs": {}}}
    rec = save_student_folder(NoExport(), Featurizer().fit(x), meta, tmp_path / "m", check_x=x, latency=False)
    assert rec["onnx"]["exported"] is False and "torch.onnx.export failed" in rec["onnx"]["why"]
    assert "\x1b" not in rec["onnx"]["why"]
    assert not (tmp_path / "m" / "model.onnx").exists() and "Not exported" in (tmp_path / "m" / "README.md").read_text()
    with pytest.raises(DataError, match="could not be exported to ONNX"):
        save_student_folder(NoExport(), Featurizer().fit(x), meta, tmp_path / "m2", check_x=x, onnx="required")
    assert not (tmp_path / "m2").exists()
    with pytest.raises(DataError, match="no checked model.onnx"):
        predict_file(tmp_path / "m", tmp_path / "unused.parquet", tmp_path / "p.parquet", runtime="onnx")


def _text_files(root):
    """Four fortunes topics as a user's file, and a file teacher (TF-IDF + logistic regression on 150 rows)."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from mentor.data import load_fortunes
    d = load_fortunes(topics=TOPICS)
    texts, y = [str(t) for t in d.features], d.labels
    ids = [str(i) for i in d.ids]
    pq.write_table(pa.table({"id": ids, "text": texts, "label": [TOPICS[v] for v in y]}), root / "texts.parquet")
    vec = TfidfVectorizer().fit(texts)
    fit = np.random.default_rng(0).permutation(len(texts))[:150]
    probs = LogisticRegression(max_iter=300).fit(vec.transform(texts)[fit], y[fit]).predict_proba(vec.transform(texts))
    pq.write_table(pa.table({"id": ids, "probs": [list(r) for r in probs]}), root / "teacher.parquet")
    return ids, texts


def test_text_student_tfidf_round_trip_and_predict_csv(tmp_path):
    ids, texts = _text_files(tmp_path)
    cfg = {"seed": 0, "output_dir": "run", "data": {"path": "texts.parquet", "classes": TOPICS},
           "split": {"n_labeled": 80, "n_val": 100, "n_test": 200},
           "teacher": {"kind": "file", "path": "teacher.parquet"},
           "student": {"kind": "tfidf", "max_features": 2000}, "train": {"epochs": 4, "min_steps": 0}, "baseline": False}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    res = _cli_here("run", str(tmp_path / "c.yaml"))
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "run" / "model"
    rec = json.loads((folder / "mentor_student.json").read_text())
    assert rec["featurizer"]["kind"] == "tfidf" and rec["onnx"]["exported"] and rec["onnx"]["max_abs_diff"] <= 1e-4
    vocab = json.loads((folder / "featurizer.json").read_text())
    assert len(vocab["vocabulary_"]) == rec["student"]["args"]["in_features"] and vocab["settings"]["ngram_range"] == [1, 2]
    import pyarrow.csv as pcsv
    pcsv.write_csv(pa.table({"id": ids[:50], "text": texts[:50]}), tmp_path / "new.csv")
    res = _cli_here("predict", str(folder), str(tmp_path / "new.csv"), "--out", str(tmp_path / "p.parquet"),
                    "--runtime", "onnx")
    assert res.returncode == 0, res.stderr
    from mentor.pipeline import load_student, open_run
    from mentor.students.train import predict_proba
    model, feat, _ = load_student(open_run(tmp_path / "run"))
    expected = predict_proba(model, feat.transform(np.array(texts[:50], dtype=object)), device="cpu").argmax(1)
    assert pq.read_table(tmp_path / "p.parquet").column("label").to_pylist() == [TOPICS[i] for i in expected]
    # numbers given to a text model: exit 2 naming the text column
    pq.write_table(pa.table({"id": ["a", "b"], "x1": [1.0, 2.0]}), tmp_path / "nums.parquet")
    _exit_2(_cli_here("predict", str(folder), str(tmp_path / "nums.parquet"), "--out", str(tmp_path / "q.parquet")),
            "reads text from a column 'text'")


def test_predict_bad_inputs_exit_2(digits_run, tmp_path):
    folder = str(digits_run / "run" / "model")
    pq.write_table(pa.table({"id": ["a", "b"], "pixels": [[0.1] * 60, [0.2] * 60]}), tmp_path / "short.parquet")
    _exit_2(_cli("predict", folder, str(tmp_path / "short.parquet"), "--out", str(tmp_path / "p.parquet")),
            "60 features per row", "trained on 64")
    pq.write_table(pa.table({"id": ["a"], "other": [[0.1] * 64]}), tmp_path / "renamed.parquet")
    _exit_2(_cli_here("predict", folder, str(tmp_path / "renamed.parquet"), "--out", str(tmp_path / "p.parquet")),
            "differ from the ones the model was trained on", "'pixels'")
    pq.write_table(pa.table({"id": ["a"], "text": ["some words"]}), tmp_path / "text.parquet")
    _exit_2(_cli_here("predict", folder, str(tmp_path / "text.parquet"), "--out", str(tmp_path / "p.parquet")),
            "'pixels'", "columns are ['id', 'text']")
    _exit_2(_cli_here("predict", str(digits_run / "run"), str(tmp_path / "text.parquet"), "--out", str(tmp_path / "p.parquet")),
            "is a run folder", "/model")
    _exit_2(_cli_here("predict", folder, str(tmp_path / "nope.parquet"), "--out", str(tmp_path / "p.parquet")),
            "does not exist")
    assert not (tmp_path / "p.parquet").exists()


def _copy_folder(digits_run, tmp_path):
    import shutil
    dest = tmp_path / "m"
    shutil.copytree(digits_run / "run" / "model", dest)
    return dest


class Payload:
    """Unpickling this creates the file at `path`: what an attacker's code would do."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_bad_model_folders_exit_2_and_nothing_is_unpickled(digits_run, tmp_path):
    new = str(digits_run / "new.parquet")
    out = str(tmp_path / "p.parquet")
    m = _copy_folder(digits_run, tmp_path)
    (m / "mentor_student.json").unlink()
    _exit_2(_cli_here("predict", str(m), new, "--out", out), "no mentor_student.json", "mentor export")
    _exit_2(_cli_here("predict", str(tmp_path / "absent"), new, "--out", out), "does not exist")

    import shutil
    shutil.rmtree(m)
    m = _copy_folder(digits_run, tmp_path)
    (m / "model.safetensors").unlink()
    _exit_2(_cli_here("predict", str(m), new, "--out", out), "model.safetensors is missing")

    # a pickle (torch.save) in place of the weights, carrying a payload: refused, never run
    probe = tmp_path / "probe"
    torch.save({"net.0.weight": torch.zeros(1), "x": Payload(probe)}, m / "model.safetensors")
    _exit_2(_cli("predict", str(m), new, "--out", out), "not a safetensors file", "never unpickles")
    with pytest.raises(DataError, match="not a safetensors file"):
        load_student_folder(m)
    (m / "model.safetensors").write_bytes(pickle.dumps(Payload(probe)))
    _exit_2(_cli_here("predict", str(m), new, "--out", out), "not a safetensors file")
    assert not probe.exists()

    shutil.rmtree(m)
    m = _copy_folder(digits_run, tmp_path)
    rec = json.loads((m / "mentor_student.json").read_text())
    rec["format_version"] = 99
    (m / "mentor_student.json").write_text(json.dumps(rec))
    _exit_2(_cli_here("predict", str(m), new, "--out", out), "format_version 99", "Upgrade mentor")

    rec["format_version"] = FORMAT_VERSION
    rec["student"]["args"]["hidden"] = [16]  # the config says another architecture than the weights hold
    (m / "mentor_student.json").write_text(json.dumps(rec))
    _exit_2(_cli_here("predict", str(m), new, "--out", out), "does not match", "net.0.weight", "mentor export")
    # the ONNX runtime does not need the torch module, so it still works
    assert _cli_here("predict", str(m), new, "--out", out, "--runtime", "onnx").returncode == 0
