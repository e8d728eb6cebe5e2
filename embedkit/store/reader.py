"""The embedding store: one zarr v3 hierarchy per encoder, read by every evaluation.

Layout::

    STORE.zarr/                      attrs: format, encoder (identity and weights sha256),
                                     created, embedkit_version
      {dataset}/                     attrs: task, class_names, n_channels, family
        {split}/                     attrs: complete, n, dim, size, data_file (path, md5,
                                     origin), normalisation, created
          embeddings   (N, D) float32, uncompressed, chunks of >= 1 MB
          labels       (N, L) int64
          indices      (N,)   int64: the row of each sample in the dataset file's split

A split is written under ``{dataset}/.{split}.partial`` and renamed to ``{split}`` only once
complete, so a reader never sees half of one. ``EmbeddingStore`` is the only code that reads
zarr; evaluations and notebooks go through it.
"""

from __future__ import annotations

import difflib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import zarr

from ..catalog import TASKS
from ..errors import StoreError
from .chunks import chunk_digest

FORMAT_VERSION = 1


@dataclass(frozen=True)
class EmbeddingSplit:
    """The cached embeddings of one dataset split.

    Attributes:
        dataset, split: where they come from.
        embeddings: float array ``(N, D)``.
        labels: int64 array ``(N, L)``.
        indices: row of each sample in the dataset file's split.
        attrs: the split's provenance.
    """

    dataset: str
    split: str
    embeddings: np.ndarray
    labels: np.ndarray
    indices: np.ndarray
    attrs: dict[str, Any]


class EmbeddingStore:
    """Read access to an embedding store.

    Args:
        path: the store folder (``*.zarr``).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if not self.path.exists():
            raise StoreError(f"store {self.path} does not exist: create it with `embedkit embed`")
        if not (self.path / "zarr.json").is_file():
            raise StoreError(f"{self.path} is not an embedding store (no zarr.json)")
        try:
            self._root = zarr.open_group(str(self.path), mode="r", zarr_format=3)
            attrs = dict(self._root.attrs)
        except Exception as exc:  # zarr raises several kinds for a damaged zarr.json
            raise StoreError(
                f"{self.path}/zarr.json is damaged ({type(exc).__name__}): the store cannot be "
                f"read; embed it again into a new --store"
            ) from None
        if "encoder" not in attrs:
            raise StoreError(f"{self.path} is a zarr group but not an embedkit store")
        encoder = attrs["encoder"]
        if not isinstance(encoder, dict) or not isinstance(encoder.get("name"), str):
            shown = _printable(repr(encoder))[:80]
            raise StoreError(
                f"{self.path}: the store's encoder record is damaged ({shown}): embed it "
                f"again into a new --store"
            )

    def __repr__(self) -> str:
        return f"EmbeddingStore({str(self.path)!r}, encoder={self.encoder_name!r})"

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self._root.attrs)

    @property
    def encoder(self) -> dict[str, Any]:
        """The encoder's identity: name, method, backbone, init, weights sha256, ..."""
        return dict(self._root.attrs["encoder"])

    @property
    def encoder_name(self) -> str:
        """The encoder's name, control characters escaped (it reaches terminals and pages)."""
        return _printable(self.encoder["name"])

    def datasets(self) -> list[str]:
        """Datasets with at least one complete split, sorted."""
        return sorted(name for name in child_groups(self.path) if self.splits(name))

    def splits(self, dataset: str) -> list[str]:
        """Complete splits of a dataset, in train/val/test order."""
        found = [
            s for s in child_groups(self.path / dataset) if _is_complete(self.path / dataset / s)
        ]
        order = {"train": 0, "val": 1, "test": 2}
        return sorted(found, key=lambda s: (order.get(s, 3), s))

    def has_split(self, dataset: str, split: str, head: bool = False) -> bool:
        """Whether the split is complete (with projection-head outputs, for ``head``)."""
        if split not in self.splits(dataset):
            return False
        return not head or bool(self.split_attrs(dataset, split).get("head_dim"))

    def dataset_attrs(self, dataset: str) -> dict[str, Any]:
        """Task, class names and channels of a stored dataset (checked: see
        ``dataset_attr_problems``)."""
        self._require(dataset)
        attrs = dict(self._root[dataset].attrs)
        problems = dataset_attr_problems(attrs)
        if problems:
            raise StoreError(
                f"{dataset} in store {self.path} has damaged attributes ({problems[0]}): see "
                f"`embedkit store verify --store {self.path}` and embed it again"
            )
        return attrs

    def split_attrs(self, dataset: str, split: str) -> dict[str, Any]:
        """Provenance of one split (n, dim, size, data file, ...) without reading arrays."""
        self._require(dataset, split)
        return dict(self._root[f"{dataset}/{split}"].attrs)

    def _require(self, dataset: str, split: str | None = None) -> None:
        available = self.datasets()
        if dataset not in available:
            close = difflib.get_close_matches(dataset, available, n=1, cutoff=0.75)
            if close:
                raise StoreError(
                    f"dataset '{dataset}' is not in store {self.path}: did you mean "
                    f"{close[0]}? (it has {', '.join(available)})"
                )
            raise StoreError(
                f"dataset '{dataset}' is not in store {self.path} (it has "
                f"{', '.join(available) or 'no complete dataset'}): embed it with "
                f"`embedkit embed --dataset {dataset}`"
            )
        if split is not None and split not in self.splits(dataset):
            raise StoreError(
                f"split '{split}' of {dataset} is not in store {self.path} (it "
                f"has {', '.join(self.splits(dataset))})"
            )

    def get(self, dataset: str, split: str, head: bool = False) -> EmbeddingSplit:
        """Embeddings, labels and indices of one split, as numpy arrays.

        Args:
            head: return the projection-head outputs (``embed --with-head``) instead of the
                backbone features.
        """
        self._require(dataset, split)
        group = self._root[f"{dataset}/{split}"]
        if head and "projections" not in group:
            raise StoreError(
                f"{dataset}/{split} in store {self.path} has no projection-head outputs: "
                f"embed it with `embedkit embed --run RUN --with-head`"
            )
        attrs = dict(group.attrs)
        try:
            embeddings, labels, indices, finite = _read_checked(group, attrs, head)
        except DamagedSplitError as exc:
            raise DamagedSplitError(
                f"{dataset}/{split} in store {self.path} is damaged ({exc}): see `embedkit "
                f"store verify --store {self.path}`, then re-embed it with `embedkit embed "
                f"--store {self.path} --dataset {dataset} --splits {split} --overwrite` and "
                f"the same encoder"
            ) from None
        self._check_source(dataset, split, attrs)
        if not finite:
            raise StoreError(
                f"{dataset}/{split} in store {self.path} holds NaN or inf embeddings: "
                f"re-embed it with `embedkit embed --overwrite`"
            )
        return EmbeddingSplit(dataset, split, embeddings, labels, indices, attrs)

    def _check_source(self, dataset: str, split: str, attrs: dict[str, Any]) -> None:
        """Every split of a dataset comes from one data file (md5 in the attributes)."""
        md5 = attrs.get("data_file", {}).get("md5")
        for other in self.splits(dataset):
            other_md5 = self.split_attrs(dataset, other).get("data_file", {}).get("md5")
            if other != split and other_md5 != md5:
                raise StoreError(
                    f"the splits of {dataset} in store {self.path} record different data "
                    f"files ({split}: md5 {str(md5)[:12]}, {other}: md5 {str(other_md5)[:12]}): "
                    f"one is damaged or came from another copy of the dataset; see `embedkit "
                    f"store verify --store {self.path}` and re-embed the wrong one with "
                    f"`embedkit embed --dataset {dataset} --splits SPLIT --overwrite`"
                )

    def catalog(self) -> pl.DataFrame:
        """One row per complete split: sizes and provenance."""
        rows = []
        for dataset in self.datasets():
            for split in self.splits(dataset):
                attrs = self._root[f"{dataset}/{split}"].attrs
                rows.append(
                    {
                        "store": str(self.path),
                        "encoder": self.encoder_name,
                        "dataset": dataset,
                        "split": split,
                        "n": attrs["n"],
                        "dim": attrs["dim"],
                        "size": attrs["size"],
                        "origin": attrs["data_file"]["origin"],
                        "md5": attrs["data_file"]["md5"],
                        "created": attrs["created"],
                    }
                )
        return pl.DataFrame(rows)


class DamagedSplitError(StoreError):
    """A stored split does not match what was recorded when it was written."""


def _read_checked(group, attrs: dict[str, Any], head: bool):
    """Embeddings (or projections), labels and indices of a split, each checked against the
    split's attributes as it is read: arrays present, shapes, every chunk's SHA-256 (the
    digest covers a chunk's embeddings and projections together) and, where recorded, the
    labels' and indices' SHA-256. A deleted chunk file reads back as zeros and fails its
    digest; a truncated one fails to decode. The fourth value says whether every returned
    value is finite (checked chunk by chunk beside the digests)."""
    missing = [a for a in ("embeddings", "labels", "indices") if a not in group]
    if missing:
        raise DamagedSplitError(f"array {', '.join(missing)} missing")
    n, dim, head_dim = attrs.get("n"), attrs.get("dim"), attrs.get("head_dim", 0)
    arrays = {"embeddings": group["embeddings"]}
    if "projections" in group:
        arrays["projections"] = group["projections"]
    shapes = {"embeddings": (n, dim), "projections": (n, head_dim)}
    for name, array in arrays.items():
        if array.shape != shapes[name]:
            raise DamagedSplitError(
                f"{name} have shape {array.shape}, the attributes say {shapes[name]}"
            )
    labels, indices = group["labels"], group["indices"]
    if labels.ndim != 2 or labels.shape[0] != n or indices.shape != (n,):
        raise DamagedSplitError(f"labels {labels.shape} and indices {indices.shape} for {n} rows")
    try:
        values = {name: array[:] for name, array in arrays.items()}
        labels, indices = labels[:], indices[:]
    except Exception as exc:  # zarr's codec errors for a truncated or garbled chunk file
        raise DamagedSplitError(f"a chunk file is unreadable: {type(exc).__name__}") from None
    digests, rows = attrs.get("chunk_sha256"), attrs.get("rows_per_chunk")
    if digests is None or not rows or len(digests) != -(-n // rows):
        raise DamagedSplitError("its chunk checksums are missing or of the wrong count")

    returned = "projections" if head else "embeddings"

    def check_chunk(i: int) -> tuple[str, bool]:
        part = {name: v[i * rows : (i + 1) * rows] for name, v in values.items()}
        finite = bool(np.isfinite(part[returned]).all())
        together = list(part.values())
        return chunk_digest(together[0] if len(together) == 1 else np.hstack(together)), finite

    # SHA-256 and numpy's loops release the GIL: chunks are checked on several cores, and
    # the finiteness test runs per chunk instead of a serial pass with an (N, D) bool array
    finite = True
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1), "embedkit-verify") as pool:
        found = pool.map(check_chunk, range(len(digests)))
        for i, (digest, (computed, chunk_finite)) in enumerate(zip(digests, found, strict=True)):
            if computed != digest:
                raise DamagedSplitError(
                    f"chunk {i} differs from its checksum recorded at write time"
                )
            finite = finite and chunk_finite
    for name, array in (("labels", labels), ("indices", indices)):
        recorded = attrs.get(f"{name}_sha256")  # absent in splits written before it was kept
        if recorded is not None and chunk_digest(array) != recorded:
            raise DamagedSplitError(f"{name} differ from their checksum recorded at write time")
    return values[returned], labels, indices, finite


def child_groups(path: Path) -> list[str]:
    if not path.is_dir():
        return []
    return [
        p.name
        for p in path.iterdir()
        if p.is_dir() and not p.name.startswith(".") and (p / "zarr.json").is_file()
    ]


def dataset_attr_problems(attrs: dict[str, Any]) -> list[str]:
    """What is wrong with a dataset's recorded task and class names (empty when sound)."""
    task, names = attrs.get("task"), attrs.get("class_names")
    if task not in TASKS:
        return [f"task {_printable(repr(task))} is none of {', '.join(TASKS)}"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        return [f"class_names {_printable(repr(names))[:60]} is not a list of names"]
    if task == "binary" and len(names) != 2:
        return [f"a binary task with {len(names)} class names"]
    return []


def _printable(text: str) -> str:
    """``text`` with control characters escaped as Python would write them."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _is_complete(path: Path) -> bool:
    import json

    try:
        meta = json.loads((path / "zarr.json").read_text())
    except (OSError, ValueError):
        return False
    return meta.get("node_type") == "group" and meta.get("attributes", {}).get("complete") is True


def open_stores(paths: list[str | os.PathLike]) -> list[EmbeddingStore]:
    """Open several stores (an evaluation's ``--store`` options)."""
    if not paths:
        raise StoreError("no store given: pass --store PATH (made by `embedkit embed`)")
    return [EmbeddingStore(p) for p in paths]


def chunk_rows(dim: int, itemsize: int = 4, min_bytes: int = 1 << 20) -> int:
    """Rows per chunk so that each chunk of a ``(N, dim)`` array holds at least ``min_bytes``."""
    return max(1, -(-min_bytes // (dim * itemsize)))
