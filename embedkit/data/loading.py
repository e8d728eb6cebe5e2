"""Loading dataset splits from a data root as uint8 arrays.

A split is one ``(N, H, W, C)`` uint8 array plus its labels; nothing is decoded per sample.
Files that differ from MedMNIST's official release load with a ``NonOfficialDataWarning``.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataNotFoundError, InvalidDataError, NonOfficialDataWarning
from . import npz
from .custom import UserDataset
from .images import cache_key, cached, content_digest, decode_files, resize_array
from .names import find_dataset, get_info
from .registry import SPLITS, DatasetInfo, check_size, components
from .root import ENV_DATA_ROOT, candidate_files, data_root
from .sampler import label_fraction_indices

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DataFile:
    """Where a split came from, for provenance.

    Attributes:
        path: the npz file read (a user's folder or manifest).
        md5: its checksum (for a user's folder or manifest, a SHA-256 of the names and
            bytes of all its images, every split).
        origin: ``official`` (MedMNIST's checksum), ``non-official`` (another copy),
            ``generated`` (embedkit's demo family) or ``user`` (the user's own dataset).
        skipped: images that could not be decoded and were skipped (the dataset's sidecar
            says ``skip_unreadable = true``), relative to ``path``.
    """

    path: str
    md5: str
    origin: str
    skipped: tuple[str, ...] = ()


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

    def subset(self, rows: np.ndarray) -> SplitData:
        """The samples at ``rows`` (sorted indices), in memory, with their provenance."""
        return dataclasses.replace(
            self,
            images=np.asarray(self.images[rows]),
            labels=self.labels[rows],
            indices=self.indices[rows],
            domains=self.domains[rows],
        )

    def pretraining_rows(self, fraction: float, seed: int) -> np.ndarray:
        """A seeded ``fraction`` of the samples for pretraining on less unlabelled data,
        stratified over (domain, class) so that every domain and class keeps its share
        (over domains alone for multi-label data); ``label_fraction_indices``'s protocol."""
        n = len(self)
        if fraction >= 1.0:
            return np.arange(n)
        labels = self.labels.reshape(n, -1)
        key = self.domains.astype(np.int64)
        if labels.shape[1] == 1:
            key = key * (int(labels.max(initial=0)) + 1) + labels[:, 0]
        return label_fraction_indices(key, fraction, seed)


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
    check_size(size)
    root_path = data_root(root)
    parts = []
    for name in components(dataset):
        user = find_dataset(name, root_path)
        if user is not None:
            parts.append(_user_split(user, split, size))
            continue
        info = get_info(name)
        path = find_file(info, size, root_path, download)
        data_file = describe_file(info, size, path)
        images, labels = _read_split(info, split, size, path, data_file.origin)
        parts.append((info, data_file, images, labels, np.arange(len(images))))
    if len(parts) == 1:
        info, data_file, images, labels, indices = parts[0]
        return SplitData(
            dataset,
            split,
            images,
            labels,
            indices,
            np.zeros(len(images), np.int64),
            (info.name,),
            (data_file,),
        )
    return _concatenate(dataset, split, parts)


def _digest(files: tuple[Path, ...], base: Path) -> str:
    """``content_digest`` of a split, remembered while no file changes (a split's load
    digests every split of its dataset, for the dataset's provenance)."""
    stats = tuple((f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    return _remembered_digest(files, base, stats)


@functools.lru_cache(maxsize=32)
def _remembered_digest(files: tuple[Path, ...], base: Path, stats: tuple) -> str:
    del stats  # part of the cache key only
    return content_digest(files, base)


def _user_split(user: UserDataset, split: str, size: int):
    """``(info, data_file, images, labels, indices)`` of one split of a user's dataset."""
    info, path = user.info, user.path
    if split not in info.splits:
        raise DataNotFoundError(
            f"{path} holds no {split} split (it holds {', '.join(info.splits)}): add one, or "
            f"use {info.name} where its splits suffice (a test split: as an OOD set)"
        )
    channels = info.n_channels
    if user.kind == "npz":
        md5 = npz.file_md5(path)
        try:
            images = npz.read_member(path, f"{split}_images")
            labels = npz.read_member(path, f"{split}_labels")
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            raise InvalidDataError(f"{path} is damaged: {_reason(exc)}") from None
        labels = _check_labels(np.asarray(labels), info, split, path)
        if images.ndim == 3:
            images = images[..., None]
        if images.shape[1:] != (size, size, channels):
            key = cache_key(
                digest=md5, split=split, size=size, channels=channels, resize=user.resize
            )
            source = images

            def fill(out: np.ndarray) -> list[int]:
                resize_array(source, size, channels, user.resize, out)
                return []

            images, _ = cached(key, (len(source), size, size, channels), fill)
        data_file = DataFile(str(path), md5, "user")
        return info, data_file, images, labels, np.arange(len(images))
    base = path if user.kind == "folder" else path.parent
    files = user.files[split]
    digests = [_digest(user.files[s], base) for s in info.splits]
    dataset_digest = hashlib.sha256("".join(digests).encode()).hexdigest()
    split_digest = digests[info.splits.index(split)]
    key = cache_key(
        digest=split_digest,
        size=size,
        channels=channels,
        resize=user.resize,
        skip_unreadable=user.skip_unreadable,
    )
    hint = (
        ""
        if user.skip_unreadable
        else (f", or set skip_unreadable = true in {path.parent / (info.name + '.toml')}")
    )
    images, skipped = cached(
        key,
        (len(files), size, size, channels),
        lambda out: decode_files(
            files,
            size,
            channels,
            user.resize,
            user.skip_unreadable,
            f"{info.name}/{split}",
            hint,
            out,
        )[1],
    )
    kept = np.setdiff1d(np.arange(len(files)), np.asarray(skipped, np.int64))
    names = tuple(_relative(files[i], base) for i in skipped)
    data_file = DataFile(str(path), dataset_digest, "user", names)
    return info, data_file, images, user.labels[split][kept], kept


def _relative(path: Path, base: Path) -> str:
    try:
        return path.relative_to(base).as_posix()
    except ValueError:
        return str(path)


def _concatenate(dataset: str, split: str, parts: list) -> SplitData:
    infos = [p[0] for p in parts]
    if any(info.multi_label for info in infos):
        raise InvalidDataError(f"{dataset}: multi-label datasets cannot be combined with '+'")
    channels = max(info.n_channels for info in infos)
    shared_labels = len({info.class_names for info in infos}) == 1
    offsets = np.cumsum([0] + [info.n_classes for info in infos[:-1]])
    images, labels, indices, domains = [], [], [], []
    for domain, ((_, _, part_images, part_labels, part_indices), offset) in enumerate(
        zip(parts, offsets, strict=True)
    ):
        if part_images.shape[-1] != channels:
            part_images = np.repeat(part_images, channels, axis=-1)
        images.append(np.asarray(part_images))
        labels.append(part_labels + (0 if shared_labels else offset))
        indices.append(part_indices)
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
