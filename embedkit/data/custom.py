"""The user's own datasets: image folders, CSV manifests and npz files in a data root.

Beside MedMNIST's files, a data root holds datasets of the user's own, found by name:

- ``NAME/``: a folder in torchvision's ImageFolder layout per split
  (``NAME/train/CLASS/*.png``, ``NAME/val/...``, ``NAME/test/...``; any of the three may be
  missing), or class folders directly under ``NAME/`` for a dataset without splits;
- ``NAME.csv``: a manifest with a ``path`` column (relative to the manifest's folder), a
  ``split`` column (optional) and the labels: one ``label`` column (class names or indices),
  a ``labels`` column of ``;``-separated class names, or one 0/1 column per label
  (multi-label);
- ``NAME.npz``: MedMNIST's layout (``{split}_images``, ``{split}_labels``) under any name
  that is not MedMNIST's, with only the splits it holds (a test-only external set).

An optional sidecar ``NAME.toml`` beside it says what cannot be read from the files::

    task = "multi-class"            # binary, multi-label, ordinal; inferred when absent
    class_names = ["normal", "tumour"]
    modality = "histology"          # the grid tells multi-modality sets by it
    channels = 3                    # 1 (grey) or 3 (RGB); inferred from the images
    resize = "stretch"              # or "crop": a centre square, then resized
    skip_unreadable = false         # true: corrupt images are skipped and recorded
    description = "..."
    [split]                         # for a dataset without splits (default: all is test)
    val = 0.1
    test = 0.2
    seed = 0

A dataset without splits is one ``test`` split (an external evaluation set) unless the
sidecar's ``[split]`` divides it (stratified by class, seeded) or names the one split it is
(``only = "train"``).
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np

from ..errors import InvalidDataError
from . import npz
from .registry import DATASETS, SIZES, SPLITS, DatasetInfo
from .root import candidate_files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp")
KINDS = ("folder", "manifest", "npz")
RESIZE_MODES = ("stretch", "crop")
TASKS = ("multi-class", "binary", "multi-label", "ordinal")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_SIDECAR_KEYS = {
    "task",
    "class_names",
    "modality",
    "channels",
    "resize",
    "skip_unreadable",
    "description",
    "split",
}


@dataclass(frozen=True)
class UserDataset:
    """A dataset of the user's own, as found in a data root.

    Attributes:
        info: the registry-style description (``family == "user"``).
        kind: ``folder``, ``manifest`` or ``npz``.
        path: the folder, manifest or npz file.
        files: per split, the image files (folders and manifests; empty for npz).
        labels: per split, int64 ``(N, L)`` labels in the order of ``files``.
        resize: ``stretch`` or ``crop`` (how a non-square image becomes square).
        skip_unreadable: skip (and record) images that cannot be decoded.
        sidecar: the sidecar file, if any.
    """

    info: DatasetInfo
    kind: str
    path: Path
    files: Mapping[str, tuple[Path, ...]] = field(default_factory=dict)
    labels: Mapping[str, np.ndarray] = field(default_factory=dict)
    resize: str = "stretch"
    skip_unreadable: bool = False
    sidecar: Path | None = None


def is_registered_file(stem: str) -> bool:
    """Whether an npz stem is a registered dataset's file name (``pathmnist``,
    ``pathmnist_64``, ``demo-med_28``): those are MedMNIST's or the demo family's."""
    return any(f"{stem}.npz" in candidate_files(name, size) for name in DATASETS for size in SIZES)


def _sources(root: Path, name: str) -> list[tuple[str, Path]]:
    found = []
    if (root / name).is_dir():
        found.append(("folder", root / name))
    if (root / f"{name}.csv").is_file():
        found.append(("manifest", root / f"{name}.csv"))
    if (root / f"{name}.npz").is_file() and not is_registered_file(name):
        found.append(("npz", root / f"{name}.npz"))
    return found


def user_dataset_names(root: Path) -> list[str]:
    """The names of the user's datasets in ``root`` (folders, manifests, npz files that are
    not MedMNIST's; a sidecar alone is not a dataset)."""
    if not root.is_dir():
        return []
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            names.add(entry.name)
        elif entry.suffix == ".csv" or (
            entry.suffix == ".npz" and not is_registered_file(entry.stem)
        ):
            names.add(entry.stem)
    return sorted(n for n in names if n not in DATASETS)


def check_no_clash(root: Path, name: str) -> None:
    """Refuse a folder or manifest of the user's named like a registered dataset."""
    clash = [p for kind, p in _sources(root, name) if kind != "npz"]
    if clash:
        raise InvalidDataError(
            f"{clash[0]} is named like the registered dataset {name}: rename it (its name is "
            f"how commands find it)"
        )


def find_user_dataset(name: str, root: Path) -> UserDataset | None:
    """The user's dataset ``name`` in ``root``, or None when the root holds none."""
    if name in DATASETS:
        return None
    sources = _sources(root, name)
    if not sources:
        return None
    if not USER_NAME.match(name):
        raise InvalidDataError(
            f"{sources[0][1]}: a dataset name may hold letters, digits, '_', '-' and '.' "
            f"only (it is used in --dataset lists and 'a+b' specs): rename it"
        )
    if len(sources) > 1:
        raise InvalidDataError(
            f"{root} holds {' and '.join(str(p.name) for _, p in sources)}: two datasets "
            f"named {name}; rename or remove one"
        )
    kind, path = sources[0]
    sidecar = root / f"{name}.toml"
    return _cached(name, kind, str(path), str(sidecar), _signature(kind, path, sidecar))


def _signature(kind: str, path: Path, sidecar: Path) -> tuple:
    """What changes when the dataset changes: the modification times of the source (every
    folder of a folder dataset: adding or removing a file changes its folder's) and the
    sidecar."""
    stats = [(str(sidecar), sidecar.stat().st_mtime_ns if sidecar.is_file() else 0)]
    if kind == "folder":
        for folder, _, _ in os.walk(path):
            stats.append((folder, os.stat(folder).st_mtime_ns))
    else:
        stat = path.stat()
        stats.append((str(path), stat.st_mtime_ns, stat.st_size))
    return tuple(stats)


@functools.lru_cache(maxsize=64)
def _cached(name: str, kind: str, path: str, sidecar: str, signature: tuple) -> UserDataset:
    del signature  # part of the cache key only
    sidecar_path = Path(sidecar)
    options = _read_sidecar(sidecar_path) if sidecar_path.is_file() else {}
    path_ = Path(path)
    if kind == "npz":
        return _from_npz(name, path_, options, sidecar_path)
    reader = _folder_listing if kind == "folder" else _manifest_listing
    listing = reader(path_, options)
    return _from_listing(name, kind, path_, options, sidecar_path, *listing)


# --- the sidecar ----------------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        options = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidDataError(f"{path} is not a readable TOML file: {exc}") from None
    unknown = sorted(set(options) - _SIDECAR_KEYS)
    if unknown:
        raise InvalidDataError(
            f"{path}: unknown key {', '.join(unknown)}; known: {', '.join(sorted(_SIDECAR_KEYS))}"
        )
    checks = {
        "task": lambda v: v in TASKS,
        "class_names": lambda v: (
            isinstance(v, list)
            and len(v) > 0
            and all(isinstance(c, str) for c in v)
            and len(set(v)) == len(v)
        ),
        "modality": lambda v: isinstance(v, str),
        "description": lambda v: isinstance(v, str),
        "channels": lambda v: v in (1, 3),
        "resize": lambda v: v in RESIZE_MODES,
        "skip_unreadable": lambda v: isinstance(v, bool),
        "split": lambda v: isinstance(v, dict),
    }
    expected = {
        "task": " or ".join(TASKS),
        "class_names": "a list of distinct names",
        "modality": "a string",
        "description": "a string",
        "channels": "1 or 3",
        "resize": " or ".join(RESIZE_MODES),
        "skip_unreadable": "true or false",
        "split": "a table (val, test, seed or only)",
    }
    for key, value in options.items():
        if not checks[key](value):
            raise InvalidDataError(f"{path}: {key} = {value!r}; expected {expected[key]}")
    split = options.get("split", {})
    unknown = sorted(set(split) - {"val", "test", "seed", "only"})
    if unknown:
        raise InvalidDataError(f"{path}: [split] has unknown key {', '.join(unknown)}")
    if "only" in split and (split["only"] not in SPLITS or len(split) > 1):
        raise InvalidDataError(
            f"{path}: [split] only = {split['only']!r} names one of {', '.join(SPLITS)}, alone"
        )
    fractions = [split.get(k, 0) for k in ("val", "test")]
    if any(not isinstance(f, (int, float)) or not 0 <= f < 1 for f in fractions) or (
        sum(fractions) >= 1
    ):
        raise InvalidDataError(
            f"{path}: [split] val and test are fractions in [0, 1) that leave some for train"
        )
    if not isinstance(split.get("seed", 0), int):
        raise InvalidDataError(f"{path}: [split] seed must be an integer")
    return options


# --- listings: (files, labels per split), class names, multi-label -------------------------


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() and not p.name.startswith(".")
    )


def _folder_listing(path: Path, options: dict[str, Any]):
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


def _manifest_listing(path: Path, options: dict[str, Any]):
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


def _divide(listing: dict, options: dict[str, Any], multi_label: bool, where: Path) -> dict:
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


def _from_listing(name, kind, path, options, sidecar, listing, class_names, multi_label):
    listing = _divide(listing, options, multi_label, path)
    _check_train_covers_test(listing, class_names, multi_label, path)
    if "channels" in options:
        channels = options["channels"]
    else:  # the first image of each class of each split
        firsts = {}
        for files, labels in listing.values():
            for f, label in zip(files, labels[:, 0], strict=True):
                firsts.setdefault((id(files), int(label)), f)
        channels = _channels_of(firsts.values())
    info = _info(name, kind, path, options, class_names, multi_label, channels, listing)
    return UserDataset(
        info,
        kind,
        path,
        MappingProxyType({s: tuple(f) for s, (f, _) in listing.items()}),
        MappingProxyType({s: labels for s, (_, labels) in listing.items()}),
        options.get("resize", "stretch"),
        options.get("skip_unreadable", False),
        sidecar if sidecar.is_file() else None,
    )


def _channels_of(files) -> int:
    """1 when the sampled images are all grey (any bit depth), else 3."""
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as image:
                if image.mode not in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F", "P"):
                    return 3
                if image.mode == "P" and image.convert("RGB").getextrema() != (
                    image.convert("L").convert("RGB").getextrema()
                ):
                    return 3
        except OSError:
            continue  # decoding reports it, once the split is loaded
    return 1


def _check_train_covers_test(listing, class_names, multi_label: bool, where: Path) -> None:
    if multi_label or "train" not in listing:
        return
    train = set(listing["train"][1][:, 0].tolist())
    for split in ("val", "test"):
        if split in listing:
            extra = sorted(set(listing[split][1][:, 0].tolist()) - train)
            if extra:
                names = ", ".join(class_names[i] for i in extra)
                raise InvalidDataError(
                    f"{where}: class {names} is in {split} but not in train, so no probe can "
                    f"learn it: add training images of it or remove it from {split}"
                )


def _info(name, kind, path, options, class_names, multi_label, channels, sizes) -> DatasetInfo:
    if multi_label:
        task = "multi-label"
    else:
        task = options.get("task") or ("binary" if len(class_names) == 2 else "multi-class")
    if options.get("task", task) != task:
        raise InvalidDataError(f"{path}: the sidecar says task = {options['task']!r}: {task}")
    if task == "binary" and len(class_names) != 2:
        raise InvalidDataError(f"{path}: a binary task needs 2 classes, not {len(class_names)}")
    return DatasetInfo(
        name=name,
        task=task,
        n_channels=channels,
        class_names=tuple(class_names),
        n_samples=MappingProxyType(
            {s: len(sizes[s][0]) if kind != "npz" else sizes[s] for s in SPLITS if s in sizes}
        ),
        family="user",
        description=options.get("description", f"{kind} {path}"),
        modality=options.get("modality", name),
        source=str(path),
    )


def _from_npz(name: str, path: Path, options: dict[str, Any], sidecar: Path) -> UserDataset:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = {m.removesuffix(".npy") for m in archive.namelist()}
    except (OSError, zipfile.BadZipFile) as exc:
        raise InvalidDataError(f"{path} is not an npz archive: {exc}") from None
    splits = [s for s in SPLITS if f"{s}_images" in members]
    if not splits:
        raise InvalidDataError(
            f"{path} holds none of {', '.join(f'{s}_images' for s in SPLITS)}: an npz "
            f"dataset has MedMNIST's layout ({{split}}_images, {{split}}_labels)"
        )
    sizes, labels, channels = {}, {}, set()
    for split in splits:
        if f"{split}_labels" not in members:
            raise InvalidDataError(f"{path} has {split}_images but no {split}_labels")
        images = npz.read_member(path, f"{split}_images")
        split_labels = np.asarray(npz.read_member(path, f"{split}_labels"))
        if (
            images.dtype != np.uint8
            or images.ndim not in (3, 4)
            or (images.ndim == 4 and images.shape[3] not in (1, 3))
        ):
            raise InvalidDataError(
                f"{path}: {split}_images has shape {images.shape} and dtype {images.dtype}; "
                f"expected uint8 (N, H, W) or (N, H, W, 1 or 3)"
            )
        if len(split_labels) != len(images):
            raise InvalidDataError(
                f"{path}: {split}_labels has {len(split_labels)} rows for {len(images)} images"
            )
        sizes[split] = len(images)
        labels[split] = split_labels.reshape(len(split_labels), -1)
        channels.add(1 if images.ndim == 3 else images.shape[3])
    widths = {v.shape[1] for v in labels.values()}
    if len(widths) > 1:
        raise InvalidDataError(f"{path}: the splits' labels have different widths {widths}")
    multi_label = widths.pop() > 1 or options.get("task") == "multi-label"
    if multi_label:
        count = next(iter(labels.values())).shape[1]
    else:
        count = max(int(v.max()) for v in labels.values() if v.size) + 1
    class_names = tuple(options.get("class_names", [str(i) for i in range(count)]))
    if len(class_names) < count or (multi_label and len(class_names) != count):
        raise InvalidDataError(
            f"{path}: labels go up to {count - 1} but the sidecar names {len(class_names)} "
            f"class(es)"
        )
    listing = {s: ([None] * sizes[s], labels[s].astype(np.int64)) for s in splits}
    _check_train_covers_test(listing, class_names, multi_label, path)
    info = _info(
        name,
        "npz",
        path,
        options,
        class_names,
        multi_label,
        options.get("channels", max(channels)),
        sizes,
    )
    return UserDataset(
        info,
        "npz",
        path,
        resize=options.get("resize", "stretch"),
        sidecar=sidecar if sidecar.is_file() else None,
    )
