"""Hugging Face `datasets` folders (save_to_disk) as data: ClassLabel names as the class order, splits,
batch reading, and a whole `mentor run` on one."""

import subprocess
import sys

import numpy as np
import pytest
import yaml

datasets = pytest.importorskip("datasets")

from mentor.data import iter_file_batches, load_dataset, load_file  # noqa: E402
from mentor.errors import DataError  # noqa: E402

MENTOR = [sys.executable, "-m", "mentor.cli"]
TEXTS = ["good food", "awful taste", "loved it", "never again", "would buy", "stale and old"]


def _text_ds(labels=(1, 0, 1, 0, -1, 0)):
    feats = datasets.Features({"id": datasets.Value("string"), "text": datasets.Value("string"),
                               "label": datasets.ClassLabel(names=["neg", "pos"])})
    return datasets.Dataset.from_dict({"id": [f"r{i}" for i in range(6)], "text": TEXTS, "label": list(labels)},
                                      features=feats)


def test_classlabel_names_give_the_class_order(tmp_path):
    _text_ds().save_to_disk(tmp_path / "ds")
    data = load_file(tmp_path / "ds")
    assert data.kind == "text" and data.class_names == ["neg", "pos"] and not data.class_order_inferred
    assert data.labels.tolist() == [1, 0, 1, 0, -1, 0]  # -1 (ClassLabel's "no label") stays unlabeled
    assert list(data.ids) == [f"r{i}" for i in range(6)]


def test_stated_classes_are_matched_by_name_not_position(tmp_path):
    _text_ds().save_to_disk(tmp_path / "ds")
    data = load_file(tmp_path / "ds", classes=["pos", "neg"])  # the teacher's order
    assert data.class_names == ["pos", "neg"]
    assert data.labels.tolist() == [0, 1, 0, 1, -1, 1]  # "pos" rows are now class 0
    with pytest.raises(DataError, match="not in data.classes"):
        load_file(tmp_path / "ds", classes=["pos", "neutral"])


def test_dataset_dict_splits(tmp_path):
    ds = _text_ds()
    dd = datasets.DatasetDict({"train": ds.select(range(4)), "test": ds.select(range(4, 6))})
    dd.save_to_disk(tmp_path / "dd")
    assert len(load_file(tmp_path / "dd").ids) == 6  # all splits by default
    assert list(load_file(tmp_path / "dd", split="test").ids) == ["r4", "r5"]
    assert len(load_file(tmp_path / "dd", split=["train", "test"]).ids) == 6
    with pytest.raises(DataError, match=r"no split\(s\) \['dev'\].*\['train', 'test'\]"):
        load_file(tmp_path / "dd", split="dev")


def test_a_shuffled_selection_is_read_in_its_own_order(tmp_path):
    ds = _text_ds().shuffle(seed=3).select([5, 0, 2])  # an indices mapping over the Arrow table
    ds.save_to_disk(tmp_path / "ds")
    data = load_file(tmp_path / "ds")
    assert list(data.ids) == ds["id"] and list(data.features) == ds["text"]


def test_batches_cover_every_row_in_order(tmp_path):
    _text_ds().save_to_disk(tmp_path / "ds")
    got = list(iter_file_batches(tmp_path / "ds", batch_rows=4))
    assert [len(i) for i, _ in got] == [4, 2]
    assert [x for i, _ in got for x in i] == [f"r{i}" for i in range(6)]
    assert [t for _, x in got for t in x] == TEXTS


def test_folders_that_are_not_datasets_and_misplaced_splits_are_clear_errors(tmp_path):
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not a Hugging Face dataset: no dataset_dict.json"):
        load_file(tmp_path / "plain")
    _text_ds().save_to_disk(tmp_path / "ds")
    with pytest.raises(DataError, match="no splits"):
        load_file(tmp_path / "ds", split="train")


README = """---
dataset_info:
  features:
  - name: id
    dtype: string
  - name: text
    dtype: string
  - name: label
    dtype:
      class_label:
        names:
          '0': neg
          '1': pos
---
# reviews
"""


def _data_folder(root, readme=True):
    """A dataset as a Hub repository holds it: Parquet files per split, features in README.md."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    (root / "data").mkdir(parents=True)
    labels = [1, 0, 1, 0, -1, 0]
    for split, rows in (("train", range(4)), ("test", range(4, 6))):
        pq.write_table(pa.table({"id": [f"r{i}" for i in rows], "text": [TEXTS[i] for i in rows],
                                 "label": [labels[i] for i in rows]}), root / "data" / f"{split}-00000-of-00001.parquet")
    if readme:
        (root / "README.md").write_text(README)
    return root


def test_a_local_data_folder_is_streamed_with_its_classlabel_names(tmp_path):
    """Before: a folder that datasets.load_dataset reads was refused as 'not a dataset'."""
    folder = _data_folder(tmp_path / "reviews")
    data = load_file(folder)
    assert data.class_names == ["neg", "pos"] and not data.class_order_inferred
    assert list(data.ids) == [f"r{i}" for i in range(6)] and data.labels.tolist() == [1, 0, 1, 0, -1, 0]
    assert list(load_file(folder, split="test").ids) == ["r4", "r5"]
    got = list(iter_file_batches(folder, batch_rows=3, split="train"))
    assert [list(i) for i, _ in got] == [["r0", "r1", "r2"], ["r3"]]
    plain = load_file(_data_folder(tmp_path / "plain", readme=False), classes=["neg", "pos"])
    assert plain.labels.tolist() == [1, 0, 1, 0, -1, 0]  # no ClassLabel: integer labels, order stated


def test_a_folder_whose_files_disagree_is_a_clear_error(tmp_path):
    folder = _data_folder(tmp_path / "bad", readme=False)
    (folder / "data" / "train-00000-of-00001.parquet").write_bytes(b"not parquet at all")
    with pytest.raises(DataError, match="bad.*(cannot read|reading its data files failed)"):
        load_file(folder)


def test_mentor_run_on_a_saved_dataset(tmp_path):
    """digits as a user would have it on the Hub: a vector column and a ClassLabel column."""
    d = load_dataset("digits")
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    feats = datasets.Features({"id": datasets.Value("string"),
                               "pixels": datasets.Sequence(datasets.Value("float32"), length=64),
                               "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"id": list(d.ids), "pixels": d.features.astype(np.float32).tolist(),
                                "label": d.labels.tolist()}, features=feats).save_to_disk(tmp_path / "digits-hf")
    cfg = {"data": {"path": str(tmp_path / "digits-hf")}, "split": {"n_labeled": 100, "n_val": 200, "n_test": 300},
           "teacher": {"kind": "logistic", "epochs": 20, "min_steps": 0}, "student": {"kind": "logistic"},
           "train": {"epochs": 3, "min_steps": 0}, "output_dir": str(tmp_path / "run")}
    from mentor.config import parse_config
    from mentor.pipeline import run
    m = run(parse_config(cfg))
    assert m["data"]["n_classes"] == 10 and m["test_accuracy"] > 0.3  # chance is 0.1; a short run
    cfg["data"]["options"] = {"n": 5}  # a built-in loader's option means nothing here
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    r = subprocess.run(MENTOR + ["run", str(tmp_path / "cfg.yaml"), "--force"], capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 2 and "data.options ['n']" in r.stderr and "Traceback" not in r.stderr
