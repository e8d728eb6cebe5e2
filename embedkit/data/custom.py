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

from ..catalog import TASKS
from ..errors import InvalidDataError
from . import npz
from .listings import IMAGE_SUFFIXES, divide, folder_listing, manifest_listing
from .registry import DATASETS, SIZES, SPLITS, DatasetInfo
from .root import candidate_files

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

KINDS = ("folder", "manifest", "npz")
RESIZE_MODES = ("stretch", "crop")
USER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")


def _distinct_names(value: Any) -> bool:
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(isinstance(c, str) for c in value)
        and len(set(value)) == len(value)
    )


# each sidecar key: (the check of its value, what the error says is expected)
_SIDECAR = {
    "task": (lambda v: v in TASKS, " or ".join(TASKS)),
    "class_names": (_distinct_names, "a list of distinct names"),
    "modality": (lambda v: isinstance(v, str), "a string"),
    "description": (lambda v: isinstance(v, str), "a string"),
    "channels": (lambda v: v in (1, 3), "1 or 3"),
    "resize": (lambda v: v in RESIZE_MODES, " or ".join(RESIZE_MODES)),
    "skip_unreadable": (lambda v: isinstance(v, bool), "true or false"),
    "split": (lambda v: isinstance(v, dict), "a table (val, test, seed or only)"),
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
    """The names of the user's datasets in ``root`` (folders holding images, manifests, npz
    files that are not MedMNIST's; a sidecar alone is not a dataset, nor is a folder without
    a single image, such as another data root)."""
    if not root.is_dir():
        return []
    names = set()
    for entry in root.iterdir():
        if entry.name.startswith((".", "_")):
            continue
        if entry.is_dir():
            if any(p.suffix.lower() in IMAGE_SUFFIXES for p in entry.rglob("*")):
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
    reader = folder_listing if kind == "folder" else manifest_listing
    listing = reader(path_, options)
    return _from_listing(name, kind, path_, options, sidecar_path, *listing)


# --- the sidecar ----------------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict[str, Any]:
    try:
        options = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise InvalidDataError(f"{path} is not a readable TOML file: {exc}") from None
    unknown = sorted(set(options) - set(_SIDECAR))
    if unknown:
        raise InvalidDataError(
            f"{path}: unknown key {', '.join(unknown)}; known: {', '.join(sorted(_SIDECAR))}"
        )
    for key, value in options.items():
        check, expected = _SIDECAR[key]
        if not check(value):
            raise InvalidDataError(f"{path}: {key} = {value!r}; expected {expected}")
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


def _from_listing(name, kind, path, options, sidecar, listing, class_names, multi_label):
    listing = divide(listing, options, multi_label, path)
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
