"""Data sets, the A/V/U/test split and the user's file formats."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mentor.data import (Dataset, _r_lazyload_chunk, fine_foods_candidates, iter_file_batches,
                         letter_recognition_candidates, load_dataset, load_digits, load_fashion_mnist,
                         load_file, load_fine_foods, load_fortunes, load_letter_recognition,
                         load_mnist1d, make_splits)
from mentor.errors import DataError

FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")
FORTUNES_ROOT = Path("/usr/share/games/fortunes")


def load_or_skip(loader, present: bool, **kwargs) -> Dataset:
    """Skip with the loader's own message when its resource is absent; fail on any other error."""
    if present:
        return loader(**kwargs)
    with pytest.raises(DataError) as e:
        loader(**kwargs)
    pytest.skip(str(e.value))


def assert_well_formed(ds: Dataset, n: int, n_classes: int) -> None:
    assert len(ds) == n and len(ds.labels) == n and len(ds.features) == n
    assert ds.n_classes == n_classes
    assert ds.labels.dtype == np.int64
    assert set(np.unique(ds.labels)) == set(range(n_classes))
    assert len(set(ds.ids.tolist())) == n


@pytest.fixture(scope="module")
def fashion():
    return load_or_skip(load_fashion_mnist, FASHION_ROOT.is_dir())


@pytest.fixture(scope="module")
def digits():
    return load_digits()


# ---------------------------------------------------------------- loaders

def test_digits(digits):
    assert_well_formed(digits, 1797, 10)
    assert digits.features.shape == (1797, 64) and digits.features.dtype == np.float32
    assert digits.features.min() == 0.0 and digits.features.max() == 1.0
    assert digits.kind == "image" and digits.image_shape == (1, 8, 8)


def test_fashion_mnist(fashion):
    assert_well_formed(fashion, 70000, 10)
    assert fashion.features.shape == (70000, 784) and fashion.features.dtype == np.float32
    assert 0.0 <= fashion.features.min() and fashion.features.max() == 1.0
    assert fashion.image_shape == (1, 28, 28) and len(fashion.class_names) == 10
    assert fashion.is_test.sum() == 10000 and not fashion.is_test[:60000].any()
    assert fashion.ids[0] == "train/0" and fashion.ids[60000] == "t10k/0"
    # 6,000 train + 1,000 test images per class: catches a wrong label offset or split mix-up.
    assert np.bincount(fashion.labels[~fashion.is_test]).tolist() == [6000] * 10
    assert np.bincount(fashion.labels[fashion.is_test]).tolist() == [1000] * 10


def test_letter_recognition():
    present = any(p.is_file() for p in letter_recognition_candidates())
    ds = load_or_skip(load_letter_recognition, present)
    assert_well_formed(ds, 20000, 26)
    assert ds.features.shape == (20000, 16) and ds.kind == "tabular"
    assert ds.class_names == [chr(ord("A") + i) for i in range(26)]
    # Raw integer attributes 0..15: nothing standardised here.
    assert ds.features.min() == 0 and ds.features.max() == 15
    assert np.array_equal(ds.features, np.round(ds.features))


def test_fortunes():
    ds = load_or_skip(load_fortunes, FORTUNES_ROOT.is_dir())
    assert_well_formed(ds, len(ds), 17)
    assert 5000 < len(ds) < 8000 and ds.kind == "text" and ds.features.ndim == 1
    topics = [i.split("/")[0] for i in ds.ids]
    assert [ds.class_names[y] for y in ds.labels] == topics
    words = np.array([len(t.split()) for t in ds.features])
    assert words.min() >= 4 and words.max() <= 120
    assert len({" ".join(t.split()) for t in ds.features}) == len(ds)
    two = load_fortunes(topics=["food", "art"])
    assert two.n_classes == 2 and two.class_names == ["food", "art"]


def fine_foods_rdx():
    return next((p for p in fine_foods_candidates() if p.is_file()), None)


def test_fine_foods():
    ds = load_or_skip(load_fine_foods, fine_foods_rdx() is not None)
    assert_well_formed(ds, 5000, 2)
    assert ds.kind == "text" and ds.class_names == ["great", "other"] and ds.features.ndim == 1
    assert ds.is_test.sum() == 1000 and not ds.is_test[:4000].any()
    assert ds.ids[0] == "train/0" and ds.ids[3999] == "train/3999" and ds.ids[4000] == "test/0"
    # modeldata's counts: 2,600 of 4,000 train and 658 of 1,000 test reviews are "great".
    assert np.bincount(ds.labels[~ds.is_test]).tolist() == [2600, 1400]
    assert np.bincount(ds.labels[ds.is_test]).tolist() == [658, 342]
    assert all(isinstance(t, str) and t.strip() for t in ds.features)
    assert ds.features[0].startswith("this stuff is  not stuffing")
    again = load_dataset("fine_foods")  # from the Parquet cache by now
    assert np.array_equal(again.ids, ds.ids) and np.array_equal(again.labels, ds.labels)
    assert again.features.tolist() == ds.features.tolist()


def test_fine_foods_cache_is_keyed_and_rebuilt(tmp_path, monkeypatch):
    rdx = fine_foods_rdx()
    if rdx is None:
        pytest.skip("r-cran-modeldata is not unpacked; run `bash scripts/install-data.sh`")
    src = tmp_path / "src"
    src.mkdir()
    for suffix in (".rdx", ".rdb"):
        (src / f"Rdata{suffix}").write_bytes(rdx.with_suffix(suffix).read_bytes())
    monkeypatch.setenv("MENTOR_DATA_DIR", str(tmp_path / "data"))
    cache = tmp_path / "data" / "modeldata" / "fine-foods.parquet"
    first = load_fine_foods(path=src)
    assert cache.is_file() and pq.read_table(cache).num_rows == 5000
    # A second load reads the cache, not the .rdb (damaged here, so parsing it would fail).
    (src / "Rdata.rdb").write_bytes(b"\0" * 16)
    assert load_fine_foods(path=src).ids.tolist() == first.ids.tolist()
    (src / "Rdata.rdb").write_bytes(rdx.with_suffix(".rdb").read_bytes())
    # A cache made from another source (other key), or an unreadable one, is parsed again and replaced.
    stale = pa.table({"split": ["train"], "product": ["p"], "review": ["r"], "score": ["great"]})
    pq.write_table(stale.replace_schema_metadata({b"mentor.source": b"other"}), cache)
    assert len(load_fine_foods(path=src)) == 5000 and pq.read_table(cache).num_rows == 5000
    cache.write_bytes(b"not parquet")
    assert load_fine_foods(path=src).features.tolist() == first.features.tolist()
    assert pq.read_table(cache).num_rows == 5000


@pytest.mark.parametrize("kind", [b"Z", b"2", b"1", b"0", None])
def test_r_lazyload_chunk_compressions(kind):
    import bz2
    import lzma
    import zlib

    raw = b"serialised R object " * 50
    header = len(raw).to_bytes(4, "big")
    filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
    packed = {b"Z": lzma.compress(raw, format=lzma.FORMAT_RAW, filters=filters), b"2": bz2.compress(raw),
              b"1": zlib.compress(raw), b"0": raw, None: zlib.compress(raw)}[kind]
    if kind is None:  # `compressed` 1 (TRUE): no type byte, zlib
        assert _r_lazyload_chunk(header + packed, 1) == raw
    else:
        assert _r_lazyload_chunk(header + kind + packed, 3) == raw
    with pytest.raises(DataError, match="damaged"):
        _r_lazyload_chunk((len(raw) + 1).to_bytes(4, "big") + b"0" + raw, 3)
    with pytest.raises(DataError, match="unknown compression"):
        _r_lazyload_chunk(header + b"X" + raw, 2)


def test_fortunes_parsing(tmp_path):
    (tmp_path / "cats").write_text(
        "one two three four\n%\ntoo short\n%\none  two three\nfour\n%\n\n%\ncats chase the mice\n",
        encoding="latin-1")
    (tmp_path / "dogs").write_text("dogs chase the cats\n%\ncats chase the mice\n%\ncaf\xe9 au lait ok\n",
                                   encoding="latin-1")
    ds = load_fortunes(topics=["cats", "dogs"], root=tmp_path)
    # Record 2 duplicates record 0 up to whitespace; dogs/1 duplicates cats/4: first kept.
    assert ds.ids.tolist() == ["cats/0", "cats/4", "dogs/0", "dogs/2"]
    assert ds.labels.tolist() == [0, 0, 1, 1]
    assert ds.features[3] == "caf\xe9 au lait ok"


def test_loader_errors_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(root=tmp_path)
    with pytest.raises(DataError, match="apt-get install fortunes"):
        load_fortunes(root=tmp_path / "none")
    with pytest.raises(DataError, match="install-data.sh"):
        load_letter_recognition(path=tmp_path / "LetterRecognition.rda")
    with pytest.raises(DataError, match="install-data.sh.*apt-get download r-cran-modeldata"):
        load_fine_foods(path=tmp_path)
    if FORTUNES_ROOT.is_dir():
        with pytest.raises(DataError, match="available: .*computers"):
            load_fortunes(topics=["no-such-topic"])


def test_mnist1d():
    ds = load_or_skip(load_mnist1d, importlib.util.find_spec("mnist1d") is not None, n=205, seed=3)
    assert_well_formed(ds, 205, 10)
    assert ds.features.shape == (205, 40) and ds.features.dtype == np.float32
    assert ds.is_test is None
    state = np.random.get_state()[1].copy(), random.getstate()
    again = load_mnist1d(n=205, seed=3)
    assert np.array_equal(np.random.get_state()[1], state[0]) and random.getstate() == state[1]
    assert np.array_equal(again.features, ds.features)
    assert not np.array_equal(load_mnist1d(n=205, seed=4).features, ds.features)


def test_load_dataset_dispatch():
    assert load_dataset("digits").name == "digits"
    with pytest.raises(DataError, match=r"unknown data set 'mnist'.*'digits'.*'fashion-mnist'"):
        load_dataset("mnist")


def test_validate_reports_problems():
    good = dict(name="t", ids=np.array(["a", "b", "a"], dtype=object),
                features=np.zeros((3, 2), np.float32), labels=np.array([0, 1, -1], np.int32), n_classes=2,
                kind="tabular")
    with pytest.raises(DataError, match=r"occur more than once.*'a'"):
        Dataset(**good).validate()
    good["ids"] = np.array(["a", "b", "c"], dtype=object)
    with pytest.raises(DataError, match="labels must be int64"):
        Dataset(**good).validate()
    good["labels"] = np.array([0, 2, -1], np.int64)
    with pytest.raises(DataError, match=r"outside \[-1, 1\].*'b'"):
        Dataset(**good).validate()
    good["labels"] = np.array([0, 1, -1], np.int64)
    good["features"] = np.array([[0, 0], [np.nan, 0], [0, 0]], np.float32)
    with pytest.raises(DataError, match=r"NaN or inf.*'b'"):
        Dataset(**good).validate()


# ---------------------------------------------------------------- splits

def synthetic(n_unlabeled=0, counts=(30, 30, 30, 3, 1)) -> Dataset:
    labels = np.concatenate([np.full(c, k) for k, c in enumerate(counts)] + [np.full(n_unlabeled, -1)])
    n = len(labels)
    return Dataset("syn", np.array([f"r{i}" for i in range(n)], dtype=object),
                   np.arange(2 * n, dtype=np.float32).reshape(n, 2), labels.astype(np.int64),
                   len(counts), "tabular").validate()


def test_splits_disjoint_sizes_and_cover(digits):
    s = make_splits(digits, n_labeled=10, n_val=100, n_test=300, seed=0)
    assert s.sizes() == {"labeled": 10, "val": 100, "pool": 1797 - 410, "test": 300}
    parts = [s.labeled, s.val, s.pool, s.test]
    joined = np.concatenate(parts)
    assert len(np.unique(joined)) == len(joined) == len(digits)
    assert set(digits.labels[s.labeled]) == set(range(10))  # one per class at the tightest size
    assert set(digits.labels[s.val]) == set(range(10))
    assert all(np.array_equal(p, np.sort(p)) for p in parts)


def test_splits_default_test_is_a_fifth_of_labeled(digits):
    assert len(make_splits(digits, n_labeled=50, n_val=50).test) == round(0.2 * 1797)


def test_splits_seeded(digits):
    a = make_splits(digits, n_labeled=50, n_val=50, seed=7)
    b = make_splits(digits, n_labeled=50, n_val=50, seed=7)
    c = make_splits(digits, n_labeled=50, n_val=50, seed=8)
    for part in ("labeled", "val", "pool", "test"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.labeled, c.labeled)
    assert not np.array_equal(a.test, c.test)


def test_splits_stratified(digits):
    s = make_splits(digits, n_labeled=100, n_val=100, seed=1)
    assert np.bincount(digits.labels[s.labeled], minlength=10).tolist() == [10] * 10


def test_splits_every_class_in_a_when_stratifying_fails():
    ds = synthetic(counts=(60, 60, 60, 2, 1))  # class 4 has one row: sklearn cannot stratify
    for seed in range(5):
        s = make_splits(ds, n_labeled=5, n_val=5, n_test=10, seed=seed)
        assert set(ds.labels[s.labeled]) == {0, 1, 2, 3, 4}


def test_unlabeled_rows_only_in_pool():
    ds = synthetic(n_unlabeled=50)
    s = make_splits(ds, n_labeled=10, n_val=10, n_test=20, seed=0)
    unlabeled = np.flatnonzero(ds.labels == -1)
    assert np.isin(unlabeled, s.pool).all()
    for part in (s.labeled, s.val, s.test):
        assert (ds.labels[part] >= 0).all()
    assert len(s.pool) == len(ds) - 40


def test_splits_official_test_and_pool_subsample(fashion):
    s = make_splits(fashion, n_labeled=100, n_val=100, seed=0)
    assert np.array_equal(s.test, np.flatnonzero(fashion.is_test))
    test = fashion.subset(s.test)
    assert len(test) == 10000 and test.is_test.all() and test.ids[0] == "t10k/0"
    assert np.array_equal(test.features[5], fashion.features[60005])
    assert len(s.pool) == 60000 - 200
    sub = make_splits(fashion, n_labeled=100, n_val=100, n_test=500, n_pool=1000, seed=0)
    assert len(sub.test) == 500 and fashion.is_test[sub.test].all()
    assert len(sub.pool) == 1000 and not fashion.is_test[sub.pool].any()


def test_split_errors(digits):
    with pytest.raises(DataError, match="has only 1438 outside the test set"):
        make_splits(digits, n_labeled=1400, n_val=100)
    with pytest.raises(DataError, match="no rows are left for the unlabeled pool"):
        make_splits(digits, n_labeled=1000, n_val=497, n_test=300)
    with pytest.raises(DataError, match="n_val must be an integer >= 1"):
        make_splits(digits, n_labeled=10, n_val=0)
    with pytest.raises(DataError, match="n_labeled must be an integer >= 1, got 0"):
        make_splits(digits, n_labeled=0, n_val=10)
    with pytest.raises(DataError, match="n_pool=5000 but only"):
        make_splits(digits, n_labeled=10, n_val=10, n_pool=5000)
    with pytest.raises(DataError, match="leaves too little for A and V: .* only 1797 labeled rows"):
        make_splits(digits, n_labeled=10, n_val=10, n_test=1797)
    is_test = np.zeros(len(digits), bool)
    is_test[:5] = True
    with pytest.raises(DataError, match="only 5 labeled rows in its official test split"):
        make_splits(Dataset(**{**digits.__dict__, "is_test": is_test}), n_labeled=10, n_val=10, n_test=6)


# ---------------------------------------------------------------- the user's files

def write_parquet(path, **columns):
    pq.write_table(pa.table(columns), path, row_group_size=7)
    return path


def test_parquet_numeric_columns(tmp_path):
    p = write_parquet(tmp_path / "d.parquet", id=[10, 11, 12], a=[1.0, 2.0, 3.0], b=[4, 5, 6],
                      label=[0, None, 2])
    ds = load_file(p)
    assert ds.ids.tolist() == ["10", "11", "12"] and ds.name == "d" and ds.kind == "tabular"
    assert ds.features.tolist() == [[1, 4], [2, 5], [3, 6]] and ds.features.dtype == np.float32
    assert ds.labels.tolist() == [0, -1, 2] and ds.n_classes == 3
    picked = load_file(p, feature_columns=["b"], n_classes=5, name="mine")
    assert picked.features.tolist() == [[4], [5], [6]] and picked.n_classes == 5 and picked.name == "mine"


@pytest.mark.parametrize("vector_type", [pa.list_(pa.float32()), pa.list_(pa.float64(), 3)])
def test_parquet_vector_column(tmp_path, vector_type):
    vectors = pa.array([[1, 2, 3], [4, 5, 6]], type=vector_type)
    p = write_parquet(tmp_path / "v.parquet", id=["a", "b"], emb=vectors, other=[9, 9], label=[1, 0])
    ds = load_file(p)
    assert ds.features.tolist() == [[1, 2, 3], [4, 5, 6]]


def test_parquet_text_and_string_labels(tmp_path):
    p = write_parquet(tmp_path / "t.parquet", id=["x", "y", "z", "w"], text=["hi", "yo", "ok", "no"],
                      label=["spam", None, "ham", ""], source=["s1", "s1", "s2", "s2"])
    ds = load_file(p)
    assert ds.kind == "text" and ds.features.tolist() == ["hi", "yo", "ok", "no"]
    assert ds.class_names == ["ham", "spam"] and ds.labels.tolist() == [1, -1, 0, -1]
    with pytest.raises(DataError, match="string labels give 2 classes"):
        load_file(p, n_classes=3)


def test_csv(tmp_path):
    p = tmp_path / "d.csv"
    p.write_text("id,f1,f2,label\n007,0.5,1,1\n008,1.5,2,\n009,2.5,3,0\n")
    ds = load_file(p)
    assert ds.ids.tolist() == ["007", "008", "009"]
    assert ds.features.tolist() == [[0.5, 1], [1.5, 2], [2.5, 3]]
    assert ds.labels.tolist() == [1, -1, 0] and ds.n_classes == 2


def test_npz(tmp_path):
    p = tmp_path / "d.npz"
    np.savez(p, id=np.array(["a", "b", "c"]), features=np.eye(3), label=np.array([2.0, np.nan, 0.0]))
    ds = load_file(p)
    assert ds.features.tolist() == np.eye(3).tolist() and ds.labels.tolist() == [2, -1, 0]
    t = tmp_path / "t.npz"
    np.savez(t, id=np.array([1, 2]), text=np.array(["some text", "more"]), label=np.array([0, -1]))
    ds = load_file(t, n_classes=4)
    assert ds.kind == "text" and ds.features.tolist() == ["some text", "more"]
    assert ds.ids.tolist() == ["1", "2"] and ds.labels.tolist() == [0, -1] and ds.n_classes == 4


def test_file_errors(tmp_path):
    ok = dict(id=["a", "b"], x=[1.0, 2.0], label=[0, 1])
    with pytest.raises(DataError, match=r"no id column 'id'; columns found: \['key', 'x', 'label'\]"):
        load_file(write_parquet(tmp_path / "1.parquet", key=ok["id"], x=ok["x"], label=ok["label"]))
    with pytest.raises(DataError, match=r"occur more than once, e.g. \['a'\]"):
        load_file(write_parquet(tmp_path / "2.parquet", **{**ok, "id": ["a", "a"]}))
    with pytest.raises(DataError, match=r"NaN or inf features \(first: id 'b', columns \['x'\]\)"):
        load_file(write_parquet(tmp_path / "3.parquet", **{**ok, "x": [1.0, float("nan")]}))
    with pytest.raises(DataError, match=r"label 5 at id 'b' is out of range \[0, 2\]"):
        load_file(write_parquet(tmp_path / "4.parquet", **{**ok, "label": [0, 5]}), n_classes=3)
    with pytest.raises(DataError, match=r"unknown file type '\.json'.*\.parquet, \.csv or \.npz"):
        (tmp_path / "5.json").write_text("{}")
        load_file(tmp_path / "5.json")
    with pytest.raises(DataError, match=r"non-numeric feature columns \['colour \(string\)'\].*feature_columns"):
        load_file(write_parquet(tmp_path / "6.parquet", **ok, colour=["red", "blue"]))
    ragged = pa.array([[1.0], [1.0, 2.0]], type=pa.list_(pa.float32()))
    with pytest.raises(DataError, match="ragged: id 'a' has 1 values but id 'b' has 2"):
        load_file(write_parquet(tmp_path / "7.parquet", **ok, emb=ragged))
    with pytest.raises(DataError, match="not an integer"):
        load_file(write_parquet(tmp_path / "8.parquet", **{**ok, "label": [0.0, 0.5]}))


@pytest.mark.parametrize("suffix", ["parquet", "csv", "npz"])
def test_iter_file_batches_in_order(tmp_path, suffix):
    n = 53
    ids = [f"id{i}" for i in range(n)]
    x = np.arange(2 * n, dtype=np.float32).reshape(n, 2)
    labels = np.where(np.arange(n) % 3 == 0, -1, np.arange(n) % 2)
    p = tmp_path / f"pool.{suffix}"
    if suffix == "parquet":
        write_parquet(p, id=ids, a=x[:, 0], b=x[:, 1], label=labels)
    elif suffix == "csv":
        p.write_text("id,a,b,label\n" + "".join(f"{i},{r[0]},{r[1]},{y}\n" for i, r, y in zip(ids, x, labels)))
    else:
        np.savez(p, id=np.array(ids), features=x, label=labels)
    batches = list(iter_file_batches(p, batch_rows=10))
    assert [len(b[0]) for b in batches] == [10, 10, 10, 10, 10, 3]
    assert np.concatenate([b[0] for b in batches]).tolist() == ids
    assert np.array_equal(np.concatenate([b[1] for b in batches]), x)
    assert np.array_equal(np.concatenate([b[1] for b in batches]), load_file(p).features)


def test_iter_file_batches_text(tmp_path):
    p = write_parquet(tmp_path / "t.parquet", id=["a", "b", "c"], text=["x y", "z", "w"], label=[None] * 3)
    batches = list(iter_file_batches(p, batch_rows=2, n_classes=2))
    assert [b[1].tolist() for b in batches] == [["x y", "z"], ["w"]]
