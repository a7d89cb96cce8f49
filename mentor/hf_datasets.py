"""Hugging Face `datasets` folders as mentor data: `Dataset.save_to_disk` / `DatasetDict.save_to_disk`.

A saved dataset is Arrow files plus JSON; `datasets.load_from_disk` memory-maps them, so reading a
large one in batches (`iter_tables`) never holds it whole. `ClassLabel` columns carry their class
names: integer labels are turned into those names, so the class order is the dataset's own (or
the one `data.classes` states, matched by name) and never a silent renumbering.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from .errors import DataError

MARKERS = ("dataset_dict.json", "state.json")  # what save_to_disk writes for a DatasetDict / a Dataset


def is_hf_dataset_dir(path) -> bool:
    p = Path(path)
    return p.is_dir() and any((p / m).is_file() for m in MARKERS)


def _load(path: Path, split):
    try:
        import datasets
    except ImportError:
        raise DataError(f"{path} is a Hugging Face dataset folder; reading it needs the `datasets` package: "
                        "pip install 'mentor[data]' (or pip install datasets).") from None
    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable Hugging Face dataset folder ({type(e).__name__}: {e}); save it "
                        "again with Dataset.save_to_disk.") from None
    if isinstance(ds, datasets.DatasetDict):
        names = list(ds)
        chosen = names if split is None else ([split] if isinstance(split, str) else list(split))
        unknown = [s for s in chosen if s not in ds]
        if unknown or not chosen:
            raise DataError(f"{path}: no split(s) {unknown or chosen}; it has {names}. Set data.options.split to "
                            "one of them (or a list), or leave it unset to read all of them.")
        parts = [ds[s] for s in chosen]
        first = parts[0].features
        for s, p in zip(chosen[1:], parts[1:]):
            if p.features != first:
                raise DataError(f"{path}: splits {chosen[0]!r} and {s!r} have different columns or types; choose one "
                                "with data.options.split.")
        return parts
    if split is not None:
        raise DataError(f"{path} is a single Hugging Face Dataset with no splits; remove data.options.split.")
    return [ds]


def _class_names(features) -> dict[str, list[str]]:
    import datasets
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
    tables = [p.with_format("arrow")[:] for p in parts]  # in the dataset's order, select()/shuffle() applied
    table = pa.concat_tables(tables) if len(tables) > 1 else tables[0]
    return _with_label_names(table, label_column, names), names


def iter_tables(path, batch_rows: int, *, label_column: str = "label", split=None) -> Iterator:
    """The dataset as pyarrow Tables of at most `batch_rows` rows, read from the memory-mapped files."""
    for part in _load(Path(path), split):
        names = _class_names(part.features).get(label_column)
        for batch in part.with_format("arrow").iter(batch_size=batch_rows):
            yield _with_label_names(batch, label_column, names)
