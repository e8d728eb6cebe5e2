"""Loading dataset splits from a data root as uint8 arrays.

A split is one ``(N, H, W, C)`` uint8 array plus its labels; nothing is decoded per sample.
Files that differ from MedMNIST's official release load with a ``NonOfficialDataWarning``.
"""

from __future__ import annotations

import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, InvalidDataError, NonOfficialDataWarning
from . import npz
from .registry import SPLITS, DatasetInfo, check_size, components, get_info

log = logging.getLogger(__name__)

ENV_DATA_ROOT = "EMBEDKIT_DATA"


@dataclass(frozen=True)
class DataFile:
    """Where a split came from, for provenance.

    Attributes:
        path: the npz file read.
        md5: its checksum.
        origin: ``official`` (MedMNIST's checksum), ``non-official`` (another copy) or
            ``generated`` (embedkit's demo family).
    """

    path: str
    md5: str
    origin: str


@dataclass(frozen=True)
class SplitData:
    """One split of one dataset entry, ready for batched tensor transforms.

    Attributes:
        dataset: the entry (``pathmnist`` or a multi-domain ``a+b``).
        split: ``train``, ``val`` or ``test``.
        images: uint8 array ``(N, H, W, C)``, possibly memory-mapped.
        labels: int64 array ``(N, L)``: L = 1 except for multi-label datasets.
        indices: position of each sample in its source file's split.
        domains: index into ``sources`` of each sample's dataset.
        sources: the datasets the entry is made of.
        files: one ``DataFile`` per source.
    """

    dataset: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    domains: np.ndarray
    sources: tuple[str, ...]
    files: tuple[DataFile, ...]

    def __len__(self) -> int:
        return len(self.images)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$EMBEDKIT_DATA``, else ``~/.medmnist``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_DATA_ROOT):
        return Path(os.environ[ENV_DATA_ROOT]).expanduser()
    return Path.home() / ".medmnist"


def candidate_files(name: str, size: int) -> list[str]:
    """File names tried for a dataset at a size (MedMNIST names the 28 px file without suffix)."""
    return [f"{name}.npz", f"{name}_28.npz"] if size == 28 else [f"{name}_{size}.npz"]


def find_file(info: DatasetInfo, size: int, root: Path, download: bool = False) -> Path:
    """Locate (or download, or for the demo family generate) the npz of a dataset."""
    check_size(size)
    for candidate in candidate_files(info.name, size):
        if (root / candidate).is_file():
            return root / candidate
    if info.family == "demo":
        from .demo import write_demo

        return write_demo(info.name, size, root)
    if download:
        return _download(info, size, root)
    tried = " or ".join(candidate_files(info.name, size))
    raise DataNotFoundError(
        f"{tried} not found in {root}: run `embedkit download --dataset {info.name} --size "
        f"{size}` (or fetch {info.urls[size]} into that folder, or pass --download), or point "
        f"--data-root / ${ENV_DATA_ROOT} at the folder that has it"
    )


def _download(info: DatasetInfo, size: int, root: Path) -> Path:
    import medmnist

    root.mkdir(parents=True, exist_ok=True)
    cls = getattr(medmnist, medmnist.INFO[info.name]["python_class"])
    try:
        cls(split="test", download=True, size=size, root=str(root))
    except Exception as exc:  # medmnist raises RuntimeError with a multi-line text
        raise DataNotFoundError(
            f"download of {info.name} ({size} px) from {info.urls[size]} failed; "
            f"fetch it by hand into {root}"
        ) from exc
    return find_file(info, size, root)


def describe_file(info: DatasetInfo, size: int, path: Path) -> DataFile:
    """Checksum a file and compare it with the official release, warning if it differs."""
    md5 = npz.file_md5(path)
    if info.family == "demo":
        return DataFile(str(path), md5, "generated")
    if md5 == info.md5[size]:
        return DataFile(str(path), md5, "official")
    warnings.warn(
        f"{path} is not MedMNIST's official {info.name} file at {size} px "
        f"(md5 {md5}, official {info.md5[size]}): loading it as a non-official copy",
        NonOfficialDataWarning,
        stacklevel=3,
    )
    return DataFile(str(path), md5, "non-official")


def _read_split(info: DatasetInfo, split: str, size: int, path: Path, origin: str):
    try:
        images = npz.read_member(path, f"{split}_images")
        labels = npz.read_member(path, f"{split}_labels")
    except KeyError as exc:
        raise InvalidDataError(
            f"{path} has no array {exc.args[0]}: it is not a MedMNIST-format file "
            f"(expected {', '.join(f'{s}_images, {s}_labels' for s in SPLITS)})"
        ) from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise InvalidDataError(
            f"{path} is damaged (truncated, or not an npz archive: {_reason(exc)}): "
            f"{_refetch(info, size)}"
        ) from None
    expected_ndim = 3 if info.n_channels == 1 else 4
    shape_ok = images.ndim == expected_ndim and images.shape[1:3] == (size, size)
    if images.ndim == 4:
        shape_ok = shape_ok and images.shape[3] == info.n_channels
    if images.dtype != np.uint8 or not shape_ok or len(labels) != len(images):
        raise InvalidDataError(
            f"{path}: {split}_images has shape {images.shape} and dtype {images.dtype}, "
            f"{split}_labels {len(labels)} rows; expected uint8 images of {size}x{size} "
            f"with {info.n_channels} channel(s) and one label row per image"
        )
    if origin == "official" and len(images) != info.n_samples[split]:
        raise InvalidDataError(
            f"{path}: {split} has {len(images)} images, not "
            f"{info.n_samples[split]}: the file is damaged, fetch it again"
        )
    if origin == "non-official" and len(images) != info.n_samples[split]:
        log.warning(
            "%s: %s has %d images (official release: %d)",
            path,
            split,
            len(images),
            info.n_samples[split],
        )
    if images.ndim == 3:
        images = images[..., None]
    return images, _check_labels(np.asarray(labels), info, split, path)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip().rstrip(".") or type(exc).__name__
    return text[:1].lower() + text[1:]


def _refetch(info: DatasetInfo, size: int) -> str:
    if info.family == "demo":
        return "delete it and embedkit generates it again"
    return f"delete it and fetch it again from {info.urls[size]}"


def _check_labels(labels: np.ndarray, info: DatasetInfo, split: str, path: Path) -> np.ndarray:
    """The labels as int64 ``(N, L)``, refused unless every one is a class of the dataset
    (0/1 per label for multi-label data): bad labels would embed silently and break the
    evaluations much later."""
    labels = labels.reshape(len(labels), -1)
    width = info.n_classes if info.multi_label else 1
    what = f"{path}: {split}_labels"
    if labels.shape[1] != width:
        raise InvalidDataError(
            f"{what} has {labels.shape[1]} column(s), not {width}: the file is not "
            f"{info.name}'s, or it is damaged"
        )
    if labels.dtype.kind == "f":
        bad = ~np.isfinite(labels)
        if bad.any():
            raise InvalidDataError(
                f"{what} holds {int(bad.sum())} NaN or infinite value(s) (first at row "
                f"{int(np.argwhere(bad)[0][0])}): the file is damaged, fetch it again"
            )
        if (labels != np.round(labels)).any():
            raise InvalidDataError(f"{what} holds fractional values: class indices expected")
    elif labels.dtype.kind not in "iub":
        raise InvalidDataError(f"{what} has dtype {labels.dtype}: integer class indices expected")
    high = 1 if info.multi_label else info.n_classes - 1
    outside = (labels < 0) | (labels > high)
    if outside.any():
        row = int(np.argwhere(outside)[0][0])
        raise InvalidDataError(
            f"{what} holds {int(outside.sum())} value(s) outside 0..{high} (row {row}: "
            f"{labels[row].tolist()}); {info.name} has {info.n_classes} "
            f"{'labels' if info.multi_label else 'classes'}: the file is damaged or not "
            f"{info.name}'s"
        )
    return labels.astype(np.int64)


def load_split(
    dataset: str,
    split: str,
    size: int = 28,
    root: str | os.PathLike | None = None,
    download: bool = False,
) -> SplitData:
    """Load one split of a dataset entry as uint8 images and int64 labels.

    Args:
        dataset: a registered name or a multi-domain spec ``a+b+c``. The parts of a
            multi-domain entry are concatenated; they share labels when their class names
            are equal (organamnist+organcmnist+organsmnist), otherwise labels are offset
            so that each (domain, class) pair is its own class.
        split: ``train``, ``val`` or ``test``.
        size: image size in pixels: 28, 64, 128 or 224.
        root: data root (see ``data_root``).
        download: fetch missing MedMNIST files with medmnist's downloader.
    """
    if split not in SPLITS:
        raise InvalidDataError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    root_path = data_root(root)
    parts = []
    for name in components(dataset):
        info = get_info(name)
        path = find_file(info, size, root_path, download)
        data_file = describe_file(info, size, path)
        images, labels = _read_split(info, split, size, path, data_file.origin)
        parts.append((info, data_file, images, labels))
    if len(parts) == 1:
        info, data_file, images, labels = parts[0]
        n = len(images)
        return SplitData(
            dataset,
            split,
            images,
            labels,
            np.arange(n),
            np.zeros(n, np.int64),
            (info.name,),
            (data_file,),
        )
    return _concatenate(dataset, split, parts)


def _concatenate(dataset: str, split: str, parts: list) -> SplitData:
    infos = [p[0] for p in parts]
    if any(info.multi_label for info in infos):
        raise InvalidDataError(f"{dataset}: multi-label datasets cannot be combined with '+'")
    channels = max(info.n_channels for info in infos)
    shared_labels = len({info.class_names for info in infos}) == 1
    offsets = np.cumsum([0] + [info.n_classes for info in infos[:-1]])
    images, labels, indices, domains = [], [], [], []
    for domain, ((_, _, part_images, part_labels), offset) in enumerate(
        zip(parts, offsets, strict=True)
    ):
        if part_images.shape[-1] != channels:
            part_images = np.repeat(part_images, channels, axis=-1)
        images.append(np.asarray(part_images))
        labels.append(part_labels + (0 if shared_labels else offset))
        indices.append(np.arange(len(part_images)))
        domains.append(np.full(len(part_images), domain))
    return SplitData(
        dataset,
        split,
        np.concatenate(images),
        np.concatenate(labels),
        np.concatenate(indices),
        np.concatenate(domains),
        tuple(info.name for info in infos),
        tuple(p[1] for p in parts),
    )


def dataset_classes(dataset: str) -> tuple[str, ...]:
    """Class names of an entry; ``domain/class`` where a multi-domain entry offsets labels."""
    infos = [get_info(name) for name in components(dataset)]
    if len({info.class_names for info in infos}) == 1:
        return infos[0].class_names
    return tuple(f"{info.name}/{c}" for info in infos for c in info.class_names)


def dataset_task(dataset: str) -> str:
    """The task of an entry; a multi-domain entry with offset labels is multi-class."""
    infos = [get_info(name) for name in components(dataset)]
    if len({info.class_names for info in infos}) > 1:
        return "multi-class"
    return infos[0].task
