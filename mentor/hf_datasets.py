"""Hugging Face `datasets` folders as mentor data: `Dataset.save_to_disk` / `DatasetDict.save_to_disk`
folders, and local data folders that `datasets.load_dataset(folder)` reads (Parquet, CSV, JSON
Lines files, e.g. `data/train-00000.parquet`, with an optional README.md whose `dataset_info`
declares the features, as on the Hub).

A saved dataset is Arrow files plus JSON; `datasets.load_from_disk` memory-maps them, so reading a
large one in batches (`iter_tables`) never holds it whole. A data folder is streamed
(`load_dataset(..., streaming=True)`): read file by file, batch by batch, with no Arrow cache
written to ~/.cache. `ClassLabel` columns carry their class
names: integer labels are turned into those names, so the class order is the dataset's own (or
the one `data.classes` states, matched by name) and never a silent renumbering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import DataError

MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes for a DatasetDict / a Dataset
DATA_SUFFIXES = (".parquet", ".csv", ".tsv", ".json", ".jsonl", ".arrow")  # what load_dataset(folder) reads


def is_saved_dataset_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in MARKERS)


def is_data_folder(path) -> bool:
    """A folder (not save_to_disk's) holding data files `datasets.load_dataset` can read, at most
    two levels down (`data/train-*.parquet`, `train/*.csv`)."""
    p = Path(path)
    if not p.is_dir() or is_saved_dataset_dir(p):
        return False
    return any(f.suffix.lower() in DATA_SUFFIXES and f.is_file() and not any(x.startswith(".") for x in f.parts[-3:])
               for pattern in ("*", "*/*", "*/*/*") for f in p.glob(pattern))


def is_hf_dataset_dir(path) -> bool:
    """Either kind of Hugging Face folder."""
    return is_saved_dataset_dir(path) or is_data_folder(path)


def _load(path: Path, split):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a Hugging Face dataset folder; reading it needs the `datasets` package: "
                        "pip install 'mentor[data]' (or pip install datasets).") from None
    if is_saved_dataset_dir(path):
        try:
            ds = datasets.load_from_disk(str(path))
        except (FileNotFoundError, ValueError, OSError) as e:
            raise DataError(f"{path}: not a readable Hugging Face dataset folder ({type(e).__name__}: {e}); save it "
                            "again with Dataset.save_to_disk.") from None
    else:
        try:
            ds = datasets.load_dataset(str(path), streaming=True)
        except Exception as e:  # noqa: BLE001 - datasets raises many kinds; each is the folder's problem
            raise DataError(f"{path}: `datasets.load_dataset` cannot read this folder ({type(e).__name__}: "
                            f"{str(e)[:300]}). Give it files of one format with the same columns (e.g. "
                            "data/train-*.parquet), or save the dataset with Dataset.save_to_disk.") from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        names = list(ds)
        chosen = names if split is None else ([split] if isinstance(split, str) else list(split))
        unknown = [s for s in chosen if s not in ds]
        if unknown or not chosen:
            raise DataError(f"{path}: no split(s) {unknown or chosen}; it has {names}. Set data.options.split to "
                            "one of them (or a list), or leave it unset to read all of them.")
        parts = [ds[s] for s in chosen]
        first = parts[0].features
        for s, p in zip(chosen[1:], parts[1:]):
            if first is not None and p.features is not None and p.features != first:
                raise DataError(f"{path}: splits {chosen[0]!r} and {s!r} have different columns or types; choose one "
                                "with data.options.split.")
        return parts
    if split is not None:
        raise DataError(f"{path} is a single Hugging Face Dataset with no splits; remove data.options.split.")
    return [ds]


def _class_names(features) -> dict[str, list[str]]:
    import datasets
    if features is None:  # a streamed folder without declared features: no ClassLabel to read
        return {}
    return {name: list(f.names) for name, f in features.items() if isinstance(f, datasets.ClassLabel)}


def _with_label_names(table, label_column: str, names: list[str] | None):
    """A ClassLabel column (integers, -1 for none) replaced by the class names (null for none)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if names is None or label_column not in table.column_names:
        return table
    codes = table.column(label_column).cast(pa.int64())
    valid = pc.greater_equal(codes, 0)
    safe = pc.if_else(valid, codes, 0)
    named = pc.if_else(valid, pc.take(pa.array(names, pa.string()), safe), pa.scalar(None, pa.string()))
    return table.set_column(table.column_names.index(label_column), label_column, named)


def read_table(path, *, label_column: str = "label", split=None):
    """The whole dataset (all chosen splits) as one pyarrow Table, ClassLabel labels as names,
    and the ClassLabel names of the label column (None when it is not a ClassLabel)."""
    import pyarrow as pa

    parts = _load(Path(path), split)
    names = _class_names(parts[0].features).get(label_column)
    if is_saved_dataset_dir(path):  # in the dataset's order, select()/shuffle() applied
        tables = [p.with_format("arrow")[:] for p in parts]
    else:
        tables = [t for p in parts for t in _stream(path, p, 65536)]
        if not tables:
            raise DataError(f"{path}: the data files hold no rows. Point data.path at a folder with data.")
        tables = _conform(tables)
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return _with_label_names(table, label_column, names), names


def _stream(path, part, batch_rows: int) -> Iterator:
    """Arrow tables of one part; a file that fails while streamed is a DataError naming the folder."""
    try:
        yield from part.with_format("arrow").iter(batch_size=batch_rows)
    except Exception as e:  # noqa: BLE001 - a bad file shows up only when it is read
        raise DataError(f"{path}: reading its data files failed ({type(e).__name__}: {str(e)[:300]}). Fix or "
                        "remove that file; every file needs the same columns.") from None


def _conform(tables: list) -> list:
    """Batches of a streamed folder with one schema (files may differ in nullability or string kinds)."""
    import pyarrow as pa
    try:
        schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
        return [t.cast(schema) if t.schema != schema else t for t in
                (t.select([n for n in schema.names if n in t.column_names]) for t in tables)]
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:
        raise DataError(f"the data files have columns that do not agree ({e}); give every file the same columns "
                        "and types.") from None


def iter_tables(path, batch_rows: int, *, label_column: str = "label", split=None) -> Iterator:
    """The dataset as pyarrow Tables of at most `batch_rows` rows, read from the memory-mapped files."""
    for part in _load(Path(path), split):
        names = _class_names(part.features).get(label_column)
        for batch in _stream(path, part, batch_rows):
            yield _with_label_names(batch, label_column, names)
