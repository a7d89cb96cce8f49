"""Data: a `Dataset` (ids, inputs, labels with -1 for unlabeled rows), the papers' split into
A / V / U / test, loaders for the bundled real data sets, and readers for the user's own files.

Loaders read only files already on disk (see `scripts/install-data.sh`); none of them ever
downloads. Every row carries a string id, because teacher outputs are stored and joined by id.
"""

from __future__ import annotations

import contextlib
import gzip
import itertools
import os
import random
import zipfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import DataError

KINDS = ("tabular", "image", "text")

FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]

# The 17 topic files of Debian's `fortunes` that make a topic-classification task (see data.md).
FORTUNE_TOPICS = ("computers", "politics", "science", "men-women", "linux", "startrek", "drugs",
                  "law", "education", "food", "sports", "medicine", "love", "kids", "work", "art",
                  "songs-poems")

MLBENCH_DATA = Path("usr/lib/R/site-library/mlbench/data")
MODELDATA_DATA = Path("usr/lib/R/site-library/modeldata/data")
FINE_FOODS_CLASSES = ["great", "other"]
INSTALL_HINT = "run `bash scripts/install-data.sh`"


# --------------------------------------------------------------------------------------------
# Dataset and splits
# --------------------------------------------------------------------------------------------

@dataclass
class Dataset:
    """Rows with string ids; `labels == -1` marks rows whose label is unknown (the pool)."""

    name: str
    ids: np.ndarray
    features: np.ndarray
    labels: np.ndarray
    n_classes: int
    kind: str
    image_shape: tuple | None = None
    class_names: list[str] | None = None
    is_test: np.ndarray | None = None
    # True when class_names were sorted from string labels, i.e. nobody stated the order: a
    # teacher trained elsewhere may number its outputs differently (see pipeline.check_class_order)
    class_order_inferred: bool = False

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index) -> "Dataset":
        """The rows at `index` (integer indices or a boolean mask), everything else unchanged."""
        index = np.asarray(index)
        return replace(self, ids=self.ids[index], features=self.features[index],
                       labels=self.labels[index],
                       is_test=None if self.is_test is None else self.is_test[index])

    def with_class_order(self, names) -> "Dataset":
        """The same rows with classes renumbered to follow `names` (the same names, another order)."""
        names = [str(n).strip() for n in names]
        if self.class_names is None:
            if len(names) != self.n_classes:
                raise DataError(f"data set {self.name!r}: data.classes names {len(names)} classes but the labels "
                                f"hold {self.n_classes} (0..{self.n_classes - 1}); give one name per class.")
            return replace(self, class_names=names, class_order_inferred=False)
        have = [str(n) for n in self.class_names]
        if sorted(have) != sorted(names):
            missing, extra = sorted(set(have) - set(names)), sorted(set(names) - set(have))
            raise DataError(f"data set {self.name!r}: data.classes must hold exactly its classes {have}; "
                            f"missing {missing}, unknown {extra}. Fix the names in data.classes.")
        new_of_old = np.array([names.index(n) for n in have] + [-1], np.int64)  # -1 stays -1
        return replace(self, labels=new_of_old[self.labels], class_names=names, class_order_inferred=False)

    def validate(self) -> "Dataset":
        """Check the invariants every later stage relies on; return self so loaders can chain."""
        where = f"data set {self.name!r}"
        if self.kind not in KINDS:
            raise DataError(f"{where}: kind {self.kind!r} is not one of {KINDS}.")
        if not isinstance(self.n_classes, (int, np.integer)) or self.n_classes < 1:
            raise DataError(f"{where}: n_classes must be a positive integer, got {self.n_classes!r}.")
        n = len(self.ids)
        if np.ndim(self.ids) != 1:
            raise DataError(f"{where}: ids must be 1-d, got shape {np.shape(self.ids)}.")
        lengths = {"features": len(self.features), "labels": len(self.labels)}
        if self.is_test is not None:
            lengths["is_test"] = len(self.is_test)
        wrong = {k: v for k, v in lengths.items() if v != n}
        if wrong:
            raise DataError(f"{where}: {n} ids but lengths {wrong}; every array needs one entry per row.")
        _check_unique_ids(self.ids, where)
        if self.labels.dtype != np.int64:
            raise DataError(f"{where}: labels must be int64, got {self.labels.dtype}.")
        bad = (self.labels < -1) | (self.labels >= self.n_classes)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"{where}: {int(bad.sum())} label(s) outside [-1, {self.n_classes - 1}] (first: id "
                f"{self.ids[i]!r} has label {self.labels[i]}). Encode classes as 0..n_classes-1 and "
                "unlabeled rows as -1, or raise n_classes.")
        if self.class_names is not None and len(self.class_names) != self.n_classes:
            raise DataError(f"{where}: {len(self.class_names)} class names for {self.n_classes} classes.")
        if self.is_test is not None and self.is_test.dtype != bool:
            raise DataError(f"{where}: is_test must be a boolean mask, got {self.is_test.dtype}.")
        if self.kind == "text":
            if self.features.ndim != 1:
                raise DataError(f"{where}: text features must be a 1-d array of str, "
                                f"got shape {self.features.shape}.")
        else:
            self._validate_numeric(where)
        return self

    def _validate_numeric(self, where: str) -> None:
        if self.features.ndim != 2 or self.features.dtype != np.float32:
            raise DataError(f"{where}: features must be float32 of shape (n, d), "
                            f"got {self.features.dtype} {self.features.shape}.")
        if self.image_shape is not None and int(np.prod(self.image_shape)) != self.features.shape[1]:
            raise DataError(f"{where}: image_shape {self.image_shape} does not match "
                            f"{self.features.shape[1]} features per row.")
        finite = np.isfinite(self.features).all(axis=1)
        if not finite.all():
            i = int(np.flatnonzero(~finite)[0])
            raise DataError(
                f"{where}: {int((~finite).sum())} row(s) have NaN or inf features (first: id "
                f"{self.ids[i]!r}). Impute or drop those rows before loading.")


def _check_unique_ids(ids: np.ndarray, where: str) -> None:
    values, counts = np.unique(np.asarray(ids, dtype=str), return_counts=True)
    if (counts > 1).any():
        dup = values[counts > 1]
        raise DataError(f"{where}: {len(dup)} id(s) occur more than once, e.g. {dup[:5].tolist()}. "
                        "Ids must be unique because teacher outputs are stored by id; "
                        "deduplicate the rows or build ids that include a row number.")


@dataclass
class Splits:
    """Row indices of the four disjoint parts of the papers' protocol."""

    labeled: np.ndarray  # A: teacher and student see the true labels
    val: np.ndarray      # V: labeled, never seen by the teacher; reliability fits
    pool: np.ndarray     # U: labels hidden, the student sees only teacher outputs
    test: np.ndarray     # held out for evaluation

    def sizes(self) -> dict:
        return {"labeled": len(self.labeled), "val": len(self.val),
                "pool": len(self.pool), "test": len(self.test)}


def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise DataError(f"{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def make_splits(ds: Dataset, *, n_labeled: int, n_val: int, n_test: int | None = None,
                n_pool: int | None = None, seed: int = 0) -> Splits:
    """Split `ds` into A (n_labeled), V (n_val), U (the rest, or n_pool of it) and test.

    Test: the rows marked `ds.is_test` when set (n_test, if given, subsamples them), otherwise
    n_test labeled rows (default 20% of the labeled rows). Test is drawn first, then A, then V,
    each stratified by label where sklearn can, and A and V hold every class when they have room
    for one per class. Unlabeled rows only ever go to the pool. All indices are sorted.
    """
    n_labeled = _count("n_labeled", n_labeled, 1)
    n_val = _count("n_val", n_val, 1)
    rng = np.random.default_rng(_count("seed", seed, 0))
    labels = np.asarray(ds.labels)
    has_label = labels >= 0
    is_test = np.zeros(len(ds), bool) if ds.is_test is None else np.asarray(ds.is_test, bool)
    labeled_rows = np.flatnonzero(has_label & ~is_test)
    if ds.is_test is not None:
        test = np.flatnonzero(has_label & is_test)
        if n_test is not None:
            n_test = _count("n_test", n_test, 1)
            if n_test > len(test):
                raise DataError(f"n_test={n_test} but {ds.name!r} has only {len(test)} labeled rows "
                                "in its official test split; lower n_test or leave it unset.")
            test, _ = _draw(test, labels, n_test, rng)
    else:
        n_test = max(1, round(0.2 * len(labeled_rows))) if n_test is None else _count("n_test", n_test, 1)
        # Keep one row per class out of the test draw so that A can hold every class.
        keep = np.array([rng.choice(labeled_rows[labels[labeled_rows] == c])
                         for c in np.unique(labels[labeled_rows])], dtype=np.int64)
        rest = np.setdiff1d(labeled_rows, keep)
        if n_test > len(rest):
            raise DataError(f"n_test={n_test} leaves too little for A and V: {ds.name!r} has only "
                            f"{len(labeled_rows)} labeled rows; lower n_test.")
        test, rest = _draw(rest, labels, n_test, rng)
        labeled_rows = np.union1d(rest, keep)
    if n_labeled + n_val > len(labeled_rows):
        raise DataError(
            f"n_labeled={n_labeled} + n_val={n_val} needs {n_labeled + n_val} labeled rows but "
            f"{ds.name!r} has only {len(labeled_rows)} outside the test set "
            f"({int(has_label.sum())} labeled in all, {len(test)} in test); lower n_labeled, n_val or n_test.")
    a, rest = _draw(labeled_rows, labels, n_labeled, rng)
    v, rest = _draw(rest, labels, n_val, rng)
    pool = np.union1d(rest, np.flatnonzero(~has_label))
    if len(pool) == 0:
        raise DataError(
            f"no rows are left for the unlabeled pool of {ds.name!r}: A, V and test take all "
            f"{len(ds)} rows. Lower n_labeled, n_val or n_test, or add unlabeled rows (label -1).")
    if n_pool is not None:
        n_pool = _count("n_pool", n_pool, 1)
        if n_pool > len(pool):
            raise DataError(f"n_pool={n_pool} but only {len(pool)} rows are left for the pool of "
                            f"{ds.name!r}; lower n_pool or leave it unset to use them all.")
        pool = np.sort(rng.choice(pool, size=n_pool, replace=False))
    return Splits(labeled=a, val=v, pool=pool.astype(np.int64), test=np.sort(test).astype(np.int64))


def _draw(candidates: np.ndarray, labels: np.ndarray, k: int, rng: np.random.Generator):
    """Pick k of `candidates`, stratified by label when sklearn can, covering every class when k allows."""
    from sklearn.model_selection import train_test_split

    if k >= len(candidates):
        return np.sort(candidates), candidates[:0]
    y = labels[candidates]
    classes, counts = np.unique(y, return_counts=True)
    can_stratify = counts.min() >= 2 and min(k, len(candidates) - k) >= len(classes)
    chosen, rest = train_test_split(candidates, train_size=k, random_state=int(rng.integers(2**31 - 1)),
                                    stratify=y if can_stratify else None)
    if k >= len(classes):
        chosen, rest = _cover_classes(chosen, rest, labels, rng)
    return np.sort(chosen).astype(np.int64), np.sort(rest).astype(np.int64)


def _cover_classes(chosen, rest, labels, rng):
    """Swap rows so that `chosen` holds every class found in chosen ∪ rest (needs len(chosen) >= #classes)."""
    chosen, rest = chosen.copy(), rest.copy()
    for c in np.setdiff1d(labels[rest], labels[chosen]):
        classes, counts = np.unique(labels[chosen], return_counts=True)
        out = rng.choice(np.flatnonzero(labels[chosen] == classes[counts.argmax()]))
        inn = rng.choice(np.flatnonzero(labels[rest] == c))
        chosen[out], rest[inn] = rest[inn], chosen[out]
    return chosen, rest


# --------------------------------------------------------------------------------------------
# Bundled real data sets (offline only)
# --------------------------------------------------------------------------------------------

def _ids(prefix: str, n: int) -> np.ndarray:
    return np.array([f"{prefix}/{i}" for i in range(n)], dtype=object)


def load_digits() -> Dataset:
    """scikit-learn's 8x8 digits (1,797 rows): small enough for CI."""
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    return Dataset("digits", _ids("digits", len(d.target)), (d.data / 16.0).astype(np.float32),
                   d.target.astype(np.int64), 10, "image", image_shape=(1, 8, 8),
                   class_names=[str(i) for i in range(10)]).validate()


def _read_idx(path: Path, magic: int, offset: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path} is not an IDX file (magic {found}, expected {magic}); "
                        "reinstall it with `apt-get install --reinstall dataset-fashion-mnist`.")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def load_fashion_mnist(root="/usr/share/datasets/fashion-mnist") -> Dataset:
    """Fashion-MNIST from Debian's `dataset-fashion-mnist`: 60k train + 10k test (is_test) rows."""
    root = Path(root)
    parts = {"train": 60000, "t10k": 10000}
    files = [root / f"{p}-{kind}-ubyte.gz" for p in parts for kind in ("images-idx3", "labels-idx1")]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DataError(f"Fashion-MNIST not found: missing {missing}. Install it with "
                        f"`apt-get install dataset-fashion-mnist` (or {INSTALL_HINT}), or pass root=.")
    images, labels = [], []
    for part in parts:
        images.append(_read_idx(root / f"{part}-images-idx3-ubyte.gz", 2051, 16).reshape(-1, 784))
        labels.append(_read_idx(root / f"{part}-labels-idx1-ubyte.gz", 2049, 8))
        if len(images[-1]) != len(labels[-1]):
            raise DataError(f"Fashion-MNIST {part}: {len(images[-1])} images but {len(labels[-1])} "
                            "labels; reinstall `dataset-fashion-mnist`.")
    ids = np.concatenate([_ids(p, len(y)) for p, y in zip(parts, labels)])
    features = np.concatenate(images).astype(np.float32) / np.float32(255.0)
    is_test = np.concatenate([np.zeros(len(labels[0]), bool), np.ones(len(labels[1]), bool)])
    return Dataset("fashion-mnist", ids, features, np.concatenate(labels).astype(np.int64), 10,
                   "image", image_shape=(1, 28, 28), class_names=list(FASHION_MNIST_CLASSES),
                   is_test=is_test).validate()


def data_dir() -> Path:
    """Where `scripts/install-data.sh` puts data that has no system-wide package."""
    return Path(os.environ.get("MENTOR_DATA_DIR") or Path.home() / ".cache" / "mentor")


def _r_package_candidates(path, package: str, data: Path, file: str) -> list[Path]:
    """Where an unpacked R package's data file is looked for, in order: an explicit path (a file, or
    a folder holding it directly, as an unpacked .deb or as <package>/ of one), else the data dirs
    and then a system-wide install."""
    if path is not None:
        path = Path(path)
        if path.is_dir():
            return [path / file, path / data / file, path / package / data / file]
        return [path]
    roots = [Path(os.environ["MENTOR_DATA_DIR"])] if os.environ.get("MENTOR_DATA_DIR") else []
    roots.append(Path.home() / ".cache" / "mentor")
    return [r / package / data / file for r in roots] + [Path("/") / data / file]


def letter_recognition_candidates(path=None) -> list[Path]:
    """Where LetterRecognition.rda is looked for, in order (an explicit path is the only candidate)."""
    return _r_package_candidates(path, "mlbench", MLBENCH_DATA, "LetterRecognition.rda")


def load_letter_recognition(path=None) -> Dataset:
    """UCI letter recognition (20,000 x 16, 26 classes) from the r-cran-mlbench .deb, unscaled."""
    candidates = letter_recognition_candidates(path)
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise DataError(
            f"LetterRecognition.rda not found (looked in {[str(p) for p in candidates]}). "
            f"{INSTALL_HINT}, or by hand: `apt-get download r-cran-mlbench && dpkg -x "
            f"r-cran-mlbench_*.deb {data_dir() / 'mlbench'}` (do not apt-get install it: it pulls in R).")
    try:
        import rdata
    except ImportError as e:
        raise DataError("reading LetterRecognition.rda needs the `rdata` package: "
                        "`pip install rdata` (or `pip install mentor[data]`).") from e
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Unknown encoding. Assumed ASCII." is harmless here
        df = rdata.read_rda(str(found))["LetterRecognition"]
    target = df["lettr"].astype("category")
    features = df.drop(columns="lettr").to_numpy(dtype=np.float32)
    return Dataset("letter", _ids("letter", len(df)), features,
                   target.cat.codes.to_numpy().astype(np.int64), len(target.cat.categories),
                   "tabular", class_names=[str(c) for c in target.cat.categories]).validate()


def fine_foods_candidates(path=None) -> list[Path]:
    """Where modeldata's Rdata.rdx is looked for, in order (its Rdata.rdb must lie beside it)."""
    return _r_package_candidates(path, "modeldata", MODELDATA_DATA, "Rdata.rdx")


def _r_unserialize(raw: bytes):
    import rdata

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "assumed RDS", "tbl_df read as data.frame": harmless here
        return rdata.conversion.convert(rdata.parser.parse_data(raw, expand_altrep=True))


def _r_lazyload_chunk(chunk: bytes, compressed: int) -> bytes:
    """One object's bytes in an R lazy-load .rdb: 4-byte big-endian length, [type byte], payload."""
    import bz2
    import lzma
    import zlib

    size = int.from_bytes(chunk[:4], "big")
    kind, body = (chunk[4:5], chunk[5:]) if compressed in (2, 3) else (b"1", chunk[4:])
    if kind == b"Z":  # R writes raw LZMA2 with preset 9 + extreme, no container
        filters = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]
        raw = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=filters)
    elif kind == b"2":
        raw = bz2.decompress(body)
    elif kind == b"1":
        raw = zlib.decompress(body)
    elif kind == b"0":
        raw = body
    else:
        raise DataError(f"unknown compression type {kind!r} in an R lazy-load database; "
                        "reinstall the package it came from.")
    if len(raw) != size:
        raise DataError(f"an R lazy-load object unpacked to {len(raw)} bytes, its header says {size}; "
                        "the .rdb is damaged: reinstall the package it came from.")
    return raw


def read_r_lazyload(rdx: Path, names) -> dict:
    """Objects `names` from an R package's lazy-load database (data/Rdata.rdx + Rdata.rdb).

    `rdata.read_rda` reads .rda files but not this format: the .rdx is a gzipped serialised list
    whose `variables` give each object's (offset, length) in the .rdb.
    """
    index = _r_unserialize(gzip.decompress(rdx.read_bytes()))
    compressed = int(np.ravel(index.get("compressed", [1]))[0])
    missing = [n for n in names if n not in index["variables"]]
    if missing:
        raise DataError(f"{rdx} holds no objects {missing}; reinstall the package it came from.")
    out = {}
    with open(rdx.with_suffix(".rdb"), "rb") as f:
        for name in names:
            offset, length = (int(v) for v in np.ravel(index["variables"][name]))
            f.seek(offset)
            out[name] = _r_unserialize(_r_lazyload_chunk(f.read(length), compressed))
    return out


def _fine_foods_table(rdx: Path):
    """The two splits as one Arrow table (split, product, review, score), cached as Parquet.

    Parsing the R database takes seconds; the cache is keyed by the .rdx's hash (which holds every
    object's offset and length) so a reinstalled package is read again, and written atomically.
    """
    import hashlib

    import pyarrow as pa
    import pyarrow.parquet as pq

    key = hashlib.sha256(rdx.read_bytes()).hexdigest().encode()
    cache = data_dir() / "modeldata" / "fine-foods.parquet"
    try:
        table = pq.read_table(cache)
        if (table.schema.metadata or {}).get(b"mentor.source") == key:
            return table
    except (OSError, pa.ArrowException):
        pass  # no cache yet, or an unreadable one: parse again and rewrite it
    try:
        import rdata  # noqa: F401
    except ImportError as e:
        raise DataError("reading the fine-food reviews needs the `rdata` package: "
                        "`pip install rdata` (or `pip install mentor[data]`).") from e
    frames = read_r_lazyload(rdx, ["training_data", "testing_data"])
    columns = {"split": [], "product": [], "review": [], "score": []}
    for split, name in (("train", "training_data"), ("test", "testing_data")):
        df = frames[name]
        columns["split"] += [split] * len(df)
        for c in ("product", "review", "score"):
            columns[c] += df[c].astype(str).tolist()
    table = pa.table(columns).replace_schema_metadata({b"mentor.source": key})
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, cache)
    except OSError as e:
        warnings.warn(f"could not cache the fine-food reviews at {cache} ({e}); they will be parsed "
                      "again next time. Set MENTOR_DATA_DIR to a writable folder.", stacklevel=3)
    return table


def load_fine_foods(path=None) -> Dataset:
    """Amazon fine-food reviews from r-cran-modeldata: 4,000 train + 1,000 test (is_test) texts.

    Binary sentiment: class 0 "great" (about 65%), class 1 "other". Ids are "train/i" and "test/i",
    the row's position in modeldata's `training_data` / `testing_data`.
    """
    candidates = fine_foods_candidates(path)
    found = next((p for p in candidates if p.is_file() and p.with_suffix(".rdb").is_file()), None)
    if found is None:
        raise DataError(
            f"modeldata's Rdata.rdx/.rdb not found (looked for {[str(p) for p in candidates]}). "
            f"{INSTALL_HINT}, or by hand: `apt-get download r-cran-modeldata && dpkg -x "
            f"r-cran-modeldata_*.deb {data_dir() / 'modeldata'}` (do not apt-get install it: it pulls in R).")
    table = _fine_foods_table(found).to_pydict()
    scores = table["score"]
    unknown = sorted(set(scores) - set(FINE_FOODS_CLASSES))
    if unknown:
        raise DataError(f"fine-food scores {unknown} are not {FINE_FOODS_CLASSES}; "
                        "reinstall r-cran-modeldata.")
    split = np.array(table["split"], dtype=object)
    n_train = int((split == "train").sum())
    ids = np.concatenate([_ids("train", n_train), _ids("test", len(split) - n_train)])
    labels = np.array([FINE_FOODS_CLASSES.index(s) for s in scores], dtype=np.int64)
    return Dataset("fine-foods", ids, np.array(table["review"], dtype=object), labels, 2, "text",
                   class_names=list(FINE_FOODS_CLASSES), is_test=split == "test").validate()


def _fortune_records(path: Path) -> list[str]:
    records, lines = [], []
    for line in path.read_text(encoding="latin-1").splitlines():
        if line.rstrip() == "%":
            records.append("\n".join(lines))
            lines = []
        else:
            lines.append(line)
    records.append("\n".join(lines))
    return records


def load_fortunes(topics=None, root="/usr/share/games/fortunes", min_words=4, max_words=120) -> Dataset:
    """Short texts labeled by topic file of Debian's `fortunes` (17 topics, ~6.2k texts by default).

    Ids are "topic/record-number-in-file". A text that occurs twice (also under two topics) is kept
    once: its first occurrence in `topics` order, then file order.
    """
    root = Path(root)
    topics = list(FORTUNE_TOPICS if topics is None else topics)
    if not topics:
        raise DataError("topics is empty; pass at least one fortunes topic, or None for the default 17.")
    if not root.is_dir():
        raise DataError(f"fortunes not found at {root}. Install them with `apt-get install fortunes` "
                        f"(or {INSTALL_HINT}), or pass root=.")
    missing = [t for t in topics if not (root / t).is_file()]
    if missing:
        have = sorted(p.name for p in root.iterdir() if p.is_file() and not p.suffix)
        raise DataError(f"fortunes topics {missing} not found in {root}; available: {have}. "
                        "Fix the topic names or install `apt-get install fortunes`.")
    ids, texts, labels, seen = [], [], [], set()
    for label, topic in enumerate(topics):
        for i, record in enumerate(_fortune_records(root / topic)):
            text = record.strip()
            key = " ".join(text.split())
            if not key or key in seen or not min_words <= len(text.split()) <= max_words:
                continue
            seen.add(key)
            ids.append(f"{topic}/{i}")
            texts.append(text)
            labels.append(label)
    if not texts:
        raise DataError(f"no fortunes of {min_words}-{max_words} words in topics {topics}; "
                        "widen min_words/max_words.")
    return Dataset("fortunes", np.array(ids, dtype=object), np.array(texts, dtype=object),
                   np.array(labels, dtype=np.int64), len(topics), "text",
                   class_names=topics).validate()


@contextlib.contextmanager
def _global_rng_restored():
    """mnist1d seeds Python's and NumPy's global generators; put them back afterwards."""
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def load_mnist1d(n: int = 10000, seed: int = 0) -> Dataset:
    """MNIST-1D (40-d, 10 classes), generated offline by the `mnist1d` package.

    The package's own train/test cut is undone: its two parts are concatenated into one set of
    n rows (no is_test), so `make_splits` draws the test set like for any other data set.
    """
    n = _count("n", n, 10)
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as e:
        raise DataError("MNIST-1D needs the `mnist1d` package: `pip install mnist1d` "
                        "(or `pip install mentor[data]`).") from e
    args = get_dataset_args()
    args.num_samples = -(-n // 10) * 10  # the package makes num_samples // 10 rows per class
    args.seed = int(_count("seed", seed, 0))
    with _global_rng_restored():
        d = make_dataset(args)  # never get_dataset: that one downloads
    x = np.concatenate([d["x"], d["x_test"]])[:n].astype(np.float32)
    y = np.concatenate([d["y"], d["y_test"]])[:n].astype(np.int64)
    return Dataset("mnist1d", _ids("mnist1d", n), x, y, 10, "tabular",
                   class_names=[str(i) for i in range(10)]).validate()


LOADERS = {
    "digits": load_digits,
    "fashion-mnist": load_fashion_mnist,
    "letter": load_letter_recognition,
    "fortunes": load_fortunes,
    "mnist1d": load_mnist1d,
    "fine-foods": load_fine_foods,
}
ALIASES = {"letter-recognition": "letter", "fashion": "fashion-mnist", "mnist-1d": "mnist1d",
           "fine-food-reviews": "fine-foods"}


def load_dataset(name: str, **kwargs) -> Dataset:
    """Load a bundled data set by name; kwargs go to its loader (e.g. n= for mnist1d)."""
    key = str(name).strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in LOADERS:
        raise DataError(f"unknown data set {name!r}; choose one of {sorted(LOADERS)}, "
                        "or read your own file with load_file(path).")
    return LOADERS[key](**kwargs)


# --------------------------------------------------------------------------------------------
# The user's own files: Parquet, CSV, NPZ
# --------------------------------------------------------------------------------------------

def _read_table(path: Path, id_column: str):
    """Any supported file as a pyarrow Table (ids kept as strings in CSV)."""
    import pyarrow as pa

    suffix = path.suffix.lower()
    if not path.is_file():
        raise DataError(f"{path} does not exist; check the path.")
    if suffix not in (".parquet", ".csv", ".npz"):
        raise DataError(f"{path}: unknown file type {suffix!r}; save the data as .parquet, .csv or .npz.")
    if path.stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes); write the {suffix[1:]} file again (was it copied or saved "
                        "completely?).")
    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq
            return pq.read_table(path)
        if suffix == ".csv":
            import pyarrow.csv as pcsv
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types={id_column: pa.string()}))
        return _npz_table(path)
    except (pa.ArrowException, OSError, EOFError, zipfile.BadZipFile) as e:  # truncated or not this format
        if isinstance(e, OSError) and e.errno is not None:
            raise  # a real I/O problem (permissions, disk): reported as such by the CLI
        raise DataError(f"{path} cannot be read as {suffix[1:]}: {e}. Is the file complete and of that type? "
                        "Write it again, or give it the extension of its real format.") from None


def _npz_table(path: Path):
    import pyarrow as pa

    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except ValueError as e:
        raise DataError(f"{path}: holds object arrays, which are not loaded (pickle is unsafe). Save "
                        "strings as fixed-width unicode: np.asarray(texts, dtype=str).") from e
    columns = {}
    for key, a in arrays.items():
        if a.ndim == 2:
            columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(a.reshape(-1)), a.shape[1])
        elif a.ndim == 1:
            columns[key] = pa.array(a.tolist() if a.dtype.kind == "U" else a)
        else:
            raise DataError(f"{path}: array {key!r} has shape {a.shape}; store features as (n, d), "
                            "flattening images.")
    lengths = {k: len(v) for k, v in columns.items()}
    if len(set(lengths.values())) > 1:
        raise DataError(f"{path}: arrays have different lengths {lengths}; each needs one entry per row.")
    return pa.table(columns)


def _column_kind(dtype) -> str:
    import pyarrow as pa

    t = pa.types
    if t.is_integer(dtype) or t.is_floating(dtype) or t.is_boolean(dtype) or t.is_decimal(dtype):
        return "numeric"
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_fixed_size_list(dtype):
        return "vector" if _column_kind(dtype.value_type) == "numeric" else "other"
    if t.is_string(dtype) or t.is_large_string(dtype):
        return "text"
    if t.is_dictionary(dtype):
        return _column_kind(dtype.value_type)
    return "other"


def _plan_inputs(table, where, id_column, label_column, text_column, feature_columns):
    """Decide which columns are the inputs: (kind "tabular" or "text", column names)."""
    kinds = {f.name: _column_kind(f.type) for f in table.schema}
    if feature_columns is not None:
        feature_columns = [feature_columns] if isinstance(feature_columns, str) else list(feature_columns)
        absent = [c for c in feature_columns if c not in kinds]
        if absent:
            raise DataError(f"{where}: feature columns {absent} not found; columns are {list(kinds)}.")
        bad = [f"{c} ({table.schema.field(c).type})" for c in feature_columns
               if kinds[c] not in ("numeric", "vector")]
        if bad:
            raise DataError(f"{where}: feature columns must be numeric, got {bad}. Convert them to "
                            "numbers, drop them from feature_columns, or use text_column for text.")
        return "tabular", feature_columns
    others = [c for c in kinds if c not in (id_column, label_column)]
    vectors = [c for c in others if kinds[c] == "vector"]
    if len(vectors) > 1:
        raise DataError(f"{where}: several vector columns {vectors}; pass feature_columns=[...] "
                        "to say which to use.")
    if vectors:
        return "tabular", vectors
    if text_column in others and kinds[text_column] == "text":
        return "text", [text_column]
    if not others:
        raise DataError(f"{where}: no input columns besides {id_column!r} and {label_column!r}; "
                        f"columns are {list(kinds)}. Add features or a {text_column!r} column.")
    bad = [f"{c} ({table.schema.field(c).type})" for c in others if kinds[c] != "numeric"]
    if bad:
        raise DataError(f"{where}: non-numeric feature columns {bad}. Pass feature_columns=[...] to "
                        "choose numeric ones, text_column= if one holds text, or convert them to numbers.")
    return "tabular", others


def _vector_matrix(column, where: str, name: str, ids) -> np.ndarray:
    import pyarrow as pa
    import pyarrow.compute as pc

    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        i = int(np.flatnonzero(arr.is_null().to_numpy(zero_copy_only=False))[0])
        raise DataError(f"{where}: column {name!r} is null at id {ids[i]!r}; give every row a vector.")
    lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
    if len(lengths) and (lengths != lengths[0]).any():
        i = int(np.flatnonzero(lengths != lengths[0])[0])
        raise DataError(f"{where}: column {name!r} is ragged: id {ids[0]!r} has {lengths[0]} values but "
                        f"id {ids[i]!r} has {lengths[i]}. Pad or truncate all vectors to one length.")
    d = int(lengths[0]) if len(lengths) else getattr(arr.type, "list_size", 0)
    values = arr.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return values.reshape(len(arr), d)


def _inputs(table, plan, where: str, ids: np.ndarray) -> np.ndarray:
    """The planned input columns as float32 (n, d) features or a 1-d object array of texts."""
    kind, names = plan
    if kind == "text":
        texts = table.column(names[0]).to_numpy(zero_copy_only=False).astype(object)
        empty = np.array([t is None for t in texts], bool)
        if empty.any():
            raise DataError(f"{where}: {int(empty.sum())} null text(s) in {names[0]!r} (first: id "
                            f"{ids[np.flatnonzero(empty)[0]]!r}); fill or drop those rows.")
        return texts
    parts = []
    for c in names:
        col = table.column(c)
        if _column_kind(col.type) == "vector":
            parts.append(_vector_matrix(col, where, c, ids))
        else:
            parts.append(col.to_numpy(zero_copy_only=False).astype(np.float32).reshape(-1, 1))
    features = np.hstack(parts) if parts else np.zeros((len(ids), 0), np.float32)
    bad = ~np.isfinite(features).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        cols = [n for n, p in zip(names, parts) if not np.isfinite(p[i]).all()]
        raise DataError(f"{where}: {int(bad.sum())} row(s) have missing, NaN or inf features (first: id "
                        f"{ids[i]!r}, columns {cols}). Impute or drop those rows before loading.")
    return features


def _file_ids(table, where: str, id_column: str) -> np.ndarray:
    if id_column not in table.column_names:
        raise DataError(f"{where}: no id column {id_column!r}; columns found: {table.column_names}. "
                        "Pass id_column= or add a column of unique ids (a row number will do).")
    raw = table.column(id_column).to_numpy(zero_copy_only=False)
    missing = np.array([v is None or (isinstance(v, float) and np.isnan(v)) for v in raw], bool)
    if missing.any():
        raise DataError(f"{where}: {int(missing.sum())} row(s) have no id (first at row "
                        f"{int(np.flatnonzero(missing)[0])}); every row needs a unique id.")
    return np.array([str(v) for v in raw], dtype=object)


def _encode_labels(table, where: str, label_column: str, n_classes, ids, classes=None):
    """(labels int64 with -1 for empty, n_classes, class_names or None). `classes` fixes the
    order (string labels are looked up in it, integer labels are its positions); without it
    string labels are numbered alphabetically."""
    import pyarrow as pa

    if label_column not in table.column_names:
        if n_classes is None:
            raise DataError(f"{where}: no label column {label_column!r}; columns found: "
                            f"{table.column_names}. Pass label_column=, or n_classes= for a file "
                            "with no labels at all.")
        return np.full(table.num_rows, -1, np.int64), _count("n_classes", n_classes, 1), None
    col = table.column(label_column)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    kind = _column_kind(col.type)
    if kind == "text":
        raw = col.to_numpy(zero_copy_only=False)
        empty = np.array([v is None or not v.strip() for v in raw], bool)
        if classes is not None:
            names = [str(c).strip() for c in classes]
            unknown = sorted({v.strip() for v in raw[~empty]} - set(names))
            if unknown:
                raise DataError(f"{where}: labels {unknown[:10]} are not in data.classes {names[:20]}. Add them to "
                                "data.classes (in the teacher's order) or fix the labels.")
            index = {c: i for i, c in enumerate(names)}
            labels = np.array([-1 if e else index[v.strip()] for v, e in zip(raw, empty)], np.int64)
            return labels, len(names), names
        names = sorted({v.strip() for v in raw[~empty]})
        if n_classes is not None and n_classes != len(names):
            raise DataError(f"{where}: string labels give {len(names)} classes {names[:10]} but "
                            f"n_classes={n_classes}. Leave n_classes unset, or use integer labels "
                            "0..n_classes-1 when some classes have no labeled row.")
        index = {c: i for i, c in enumerate(names)}
        labels = np.array([-1 if e else index[v.strip()] for v, e in zip(raw, empty)], np.int64)
        return labels, max(len(names), 1), names or None
    if kind != "numeric":
        raise DataError(f"{where}: label column {label_column!r} has type {col.type}; use integers "
                        "0..n_classes-1 or class-name strings, empty for unlabeled rows.")
    raw = col.to_numpy(zero_copy_only=False).astype(np.float64)
    empty = np.isnan(raw) | (raw == -1)
    if (raw[~empty] != np.round(raw[~empty])).any():
        i = int(np.flatnonzero(~empty & (raw != np.round(raw)))[0])
        raise DataError(f"{where}: label {raw[i]} at id {ids[i]!r} is not an integer; "
                        "labels must be class indices 0..n_classes-1.")
    labels = np.where(empty, -1, raw).astype(np.int64)
    if classes is not None:
        n_classes = len(classes)
    if n_classes is None:
        if (~empty).sum() == 0:
            raise DataError(f"{where}: every label is empty; pass n_classes= to load an unlabeled file.")
        n_classes = int(labels.max()) + 1
    n_classes = _count("n_classes", n_classes, 1)
    bad = (labels < -1) | (labels >= n_classes)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise DataError(f"{where}: label {labels[i]} at id {ids[i]!r} is out of range [0, {n_classes - 1}] "
                        f"({int(bad.sum())} such rows). Encode classes as 0..n_classes-1 (empty or -1 "
                        "for unlabeled) or raise n_classes.")
    return labels, n_classes, None if classes is None else [str(c).strip() for c in classes]


def load_file(path, *, id_column="id", label_column="label", text_column="text", feature_columns=None,
              n_classes=None, name=None, classes=None, split=None) -> Dataset:
    """Load the user's own data from Parquet, CSV or NPZ, or a Hugging Face dataset folder
    (`save_to_disk`; `split` picks splits of a DatasetDict, default all; ClassLabel names give
    the class order unless `classes` states another, matched by name).

    Inputs are, in order of preference: `feature_columns`; the one list/vector column (an NPZ
    "features" (n, d) array is one); the `text_column` (kind "text"); else every other column,
    all of which must be numeric. Empty labels (null, NaN, "", or -1) mark unlabeled rows.
    `classes` (names, in the order of the teacher's outputs) numbers the classes; without it
    string labels are numbered alphabetically and the Dataset says the order was inferred.
    """
    path = Path(path)
    table, classes = _read_any(path, id_column, label_column, split, classes)
    where = str(path)
    ids = _file_ids(table, where, id_column)
    _check_unique_ids(ids, where)
    labels, n_classes, class_names = _encode_labels(table, where, label_column, n_classes, ids, classes)
    plan = _plan_inputs(table, where, id_column, label_column, text_column, feature_columns)
    features = _inputs(table, plan, where, ids)
    return Dataset(name or path.stem, ids, features, labels, n_classes, plan[0], class_names=class_names,
                   class_order_inferred=classes is None and class_names is not None).validate()


def _read_any(path: Path, id_column: str, label_column: str, split, classes):
    """(table, classes): a file, or a Hugging Face dataset folder whose ClassLabel names become the
    class order when `classes` is not given."""
    from . import hf_datasets
    if hf_datasets.is_hf_dataset_dir(path):
        table, names = hf_datasets.read_table(path, label_column=label_column, split=split)
        return table, classes if classes is not None else names
    if split is not None:
        raise DataError(f"data.options.split is for Hugging Face dataset folders (save_to_disk, or data files "
                        f"that datasets.load_dataset reads), and {path} is not one; remove it.")
    if path.is_dir():
        raise DataError(f"{path} is a folder but not a Hugging Face dataset: no "
                        f"{' or '.join(hf_datasets.MARKERS)} (save_to_disk) and no data files "
                        f"({', '.join(hf_datasets.DATA_SUFFIXES)}) for datasets.load_dataset; point data.path at a "
                        ".parquet, .csv or .npz file, or at such a folder.")
    return _read_table(path, id_column), classes


def input_columns(path, *, id_column="id", label_column="label", text_column="text", feature_columns=None,
                  split=None, **_ignored) -> tuple[str, list[str]]:
    """Which columns of a user's file `load_file` takes as inputs: ("tabular" or "text", names).
    Parquet is read for its schema only; a model folder records them so new data is read the same way."""
    path = Path(path)
    if path.suffix.lower() == ".parquet" and path.is_file() and path.stat().st_size:
        import pyarrow.parquet as pq
        try:
            table = pq.read_schema(path).empty_table()
        except Exception:  # not Parquet after all: _read_table says so with its fix
            table = _read_table(path, id_column)
    else:
        table, _ = _read_any(path, id_column, label_column, split, None)
    return _plan_inputs(table, str(path), id_column, label_column, text_column, feature_columns)


def iter_file_batches(path, batch_rows=65536, *, id_column="id", label_column="label", text_column="text",
                      feature_columns=None, split=None, **_ignored) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (ids, inputs) batches in file order, so a pool larger than RAM can be labeled.

    Parquet is streamed record batch by record batch, a Hugging Face dataset folder batch by batch
    from its memory-mapped Arrow files; CSV and NPZ are read whole, then sliced. Inputs are chosen as in `load_file` (whose other keyword arguments are accepted and ignored);
    ids are checked for duplicates within each batch only.
    """
    import pyarrow as pa

    batch_rows = _count("batch_rows", batch_rows, 1)
    path = Path(path)
    where = str(path)
    from . import hf_datasets
    if hf_datasets.is_hf_dataset_dir(path):  # memory-mapped Arrow files, read batch by batch
        batches = hf_datasets.iter_tables(path, batch_rows, label_column=label_column, split=split)
        first = next(batches, None)
        if first is None:
            return
        plan = _plan_inputs(first, where, id_column, label_column, text_column, feature_columns)
        batches = itertools.chain([first], batches)
    elif path.suffix.lower() == ".parquet" and path.is_file():
        import pyarrow.parquet as pq
        parquet = pq.ParquetFile(path)
        schema_only = parquet.schema_arrow.empty_table()
        plan = _plan_inputs(schema_only, where, id_column, label_column, text_column, feature_columns)
        columns = [id_column, *plan[1]] if id_column in schema_only.column_names else None
        batches = (pa.Table.from_batches([b]) for b in parquet.iter_batches(batch_size=batch_rows,
                                                                             columns=columns))
    else:
        table = _read_table(path, id_column)
        plan = _plan_inputs(table, where, id_column, label_column, text_column, feature_columns)
        batches = (table.slice(i, batch_rows) for i in range(0, table.num_rows, batch_rows))
    for batch in batches:
        ids = _file_ids(batch, where, id_column)
        _check_unique_ids(ids, where)
        yield ids, _inputs(batch, plan, where, ids)
