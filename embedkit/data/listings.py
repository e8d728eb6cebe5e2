"""How an image folder or a CSV manifest of the user's lists its images and labels.

Each reader returns ``(listing, class_names, multi_label)``: ``listing`` maps a split (or
None, for a dataset without splits) to its image files and int64 ``(N, L)`` labels, in a
fixed order (ImageFolder's: class, then file name; a manifest's: its rows). ``divide``
makes an unsplit listing into the sidecar's splits. ``embedkit.data.custom`` builds the
dataset from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidDataError
from .registry import SPLITS

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def folder_listing(path: Path, options: dict[str, Any]):
    """ImageFolder: ``path/SPLIT/CLASS/*`` or, without split folders, ``path/CLASS/*``."""
    split_folders = [s for s in SPLITS if (path / s).is_dir()]
    layout = {s: path / s for s in split_folders} if split_folders else {None: path}
    per_split: dict[str | None, list[tuple[Path, str]]] = {}
    for split, folder in layout.items():
        classes = sorted(
            p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")
        )
        loose = [p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise InvalidDataError(
                f"{loose[0]} lies outside a class folder: an image folder holds "
                f"{'SPLIT/' if split else ''}CLASS/image files (torchvision's ImageFolder)"
            )
        per_split[split] = [(f, c) for c in classes for f in _images_in(folder / c)]
        if not per_split[split]:
            where = folder if classes else f"{folder} (no class folders)"
            raise InvalidDataError(
                f"{where} holds no images ({', '.join(IMAGE_SUFFIXES)}): a dataset folder "
                f"holds {'SPLIT/' if split else ''}CLASS/image files"
            )
    names = sorted({c for pairs in per_split.values() for _, c in pairs})
    class_names = _class_names(options, names, path)
    index = {c: i for i, c in enumerate(class_names)}
    listing = {
        s: ([f for f, _ in pairs], np.array([[index[c]] for _, c in pairs], np.int64))
        for s, pairs in per_split.items()
    }
    return listing, class_names, False


def _class_names(options: dict[str, Any], found: list[str], where: Path) -> tuple[str, ...]:
    """The sidecar's class names (which must cover those found), else the sorted ones."""
    if "class_names" not in options:
        return tuple(found)
    given = tuple(options["class_names"])
    unknown = [c for c in found if c not in given]
    if unknown:
        raise InvalidDataError(
            f"{where}: class {', '.join(map(repr, unknown))} is not in the sidecar's "
            f"class_names ({', '.join(given)})"
        )
    return given


def manifest_listing(path: Path, options: dict[str, Any]):
    import polars as pl

    try:
        table = pl.read_csv(path, infer_schema_length=0)  # every column as text
    except (OSError, pl.exceptions.PolarsError) as exc:
        raise InvalidDataError(f"{path} is not a readable CSV file: {exc}") from None
    if "path" not in table.columns:
        raise InvalidDataError(
            f"{path} has no 'path' column (columns: {', '.join(table.columns)}): a manifest "
            f"has path, label and (optionally) split columns"
        )
    if table.height == 0:
        raise InvalidDataError(f"{path} lists no images")
    label_columns = [c for c in table.columns if c not in ("path", "split")]
    if not label_columns:
        raise InvalidDataError(
            f"{path} has no label column: add 'label' (a class per image), 'labels' "
            f"(';'-separated classes) or one 0/1 column per label"
        )
    table = table.with_columns(pl.col(c).fill_null("").str.strip_chars() for c in table.columns)
    base = path.parent
    files = [Path(p) if Path(p).is_absolute() else base / p for p in table["path"].to_list()]
    blank = [i for i, p in enumerate(table["path"].to_list()) if not p]
    if blank:
        raise InvalidDataError(f"{path}: row {blank[0] + 2} has an empty path")
    missing = [f for f in files if not f.is_file()]
    if missing:
        raise InvalidDataError(
            f"{path}: {len(missing)} listed image(s) not found, the first {missing[0]}"
        )
    labels, class_names, multi_label = _manifest_labels(table, label_columns, options, path)
    if "split" in table.columns:
        splits = table["split"].to_list()
        bad = sorted({s for s in splits if s not in SPLITS})
        if bad:
            raise InvalidDataError(
                f"{path}: split {', '.join(map(repr, bad))} is not one of {', '.join(SPLITS)}"
            )
    else:
        splits = [None] * len(files)
    listing = {}
    for split in dict.fromkeys(splits):
        rows = [i for i, s in enumerate(splits) if s == split]
        listing[split] = ([files[i] for i in rows], labels[rows])
    return listing, class_names, multi_label


def _manifest_labels(table, columns: list[str], options: dict[str, Any], path: Path):
    if columns == ["label"]:
        values = table["label"].to_list()
        if "" in values:
            raise InvalidDataError(f"{path}: row {values.index('') + 2} has no label")
        if all(v.isdigit() for v in values) and "class_names" not in options:
            indices = np.array([[int(v)] for v in values], np.int64)
            count = int(indices.max()) + 1
            return indices, tuple(str(i) for i in range(count)), False
        class_names = _class_names(options, sorted(set(values)), path)
        index = {c: i for i, c in enumerate(class_names)}
        if all(v.isdigit() for v in values) and not set(values) <= set(index):
            index = {str(i): i for i in range(len(class_names))}  # indices into class_names
            high = [v for v in values if int(v) >= len(class_names)]
            if high:
                raise InvalidDataError(
                    f"{path}: label {high[0]} is no index into the sidecar's "
                    f"{len(class_names)} class_names"
                )
        return np.array([[index[v]] for v in values], np.int64), class_names, False
    if columns == ["labels"]:
        sets = [[c.strip() for c in v.split(";") if c.strip()] for v in table["labels"]]
        class_names = _class_names(options, sorted({c for s in sets for c in s}), path)
        index = {c: i for i, c in enumerate(class_names)}
        labels = np.zeros((len(sets), len(class_names)), np.int64)
        for row, names in enumerate(sets):
            labels[row, [index[c] for c in names]] = 1
        return labels, class_names, True
    if "label" in columns or "labels" in columns:
        raise InvalidDataError(
            f"{path}: columns {', '.join(columns)} besides path and split: give one 'label' "
            f"column, one 'labels' column, or only 0/1 columns, one per label"
        )
    values = table.select(columns).to_numpy()
    bad = ~np.isin(values, ["0", "1"])
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise InvalidDataError(
            f"{path}: row {row + 2}, column {columns[col]} holds {values[row, col]!r}: label "
            f"columns of a multi-label manifest hold 0 or 1"
        )
    if "class_names" in options and tuple(options["class_names"]) != tuple(columns):
        raise InvalidDataError(f"{path}: the sidecar's class_names differ from the label columns")
    return (values == "1").astype(np.int64), tuple(columns), True


def divide(listing: dict, options: dict[str, Any], multi_label: bool, where: Path) -> dict:
    """An unsplit listing made into the sidecar's splits (stratified, seeded)."""
    if set(listing) != {None}:
        if "split" in options:
            raise InvalidDataError(f"{where} has its own splits: remove [split] from its sidecar")
        return listing
    files, labels = listing[None]
    split = options.get("split", {})
    if "val" not in split and "test" not in split:
        return {split.get("only", "test"): (files, labels)}
    rng = np.random.default_rng(split.get("seed", 0))
    assignment = np.empty(len(files), dtype=object)
    groups = (
        [np.arange(len(files))]
        if multi_label
        else [np.flatnonzero(labels[:, 0] == c) for c in np.unique(labels[:, 0])]
    )
    for members in groups:
        members = rng.permutation(members)
        n_test = round(len(members) * split.get("test", 0))
        n_val = round(len(members) * split.get("val", 0))
        assignment[members[:n_test]] = "test"
        assignment[members[n_test : n_test + n_val]] = "val"
        assignment[members[n_test + n_val :]] = "train"
    return {
        s: ([files[i] for i in np.flatnonzero(assignment == s)], labels[assignment == s])
        for s in SPLITS
        if (assignment == s).any()
    }
