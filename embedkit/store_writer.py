"""Writing embedding stores: whole chunks, one split at a time, visible only when complete.

A split is staged under ``{dataset}/.{split}.partial`` and renamed to ``{split}`` after its
last chunk and its ``complete`` attribute are written, so a reader (``EmbeddingStore``)
never sees part of one. A store belongs to one encoder (by weights checksum).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .store import FORMAT_VERSION, EmbeddingStore, chunk_rows
from .utils import stamp


class StoreWriter:
    """Opens (or creates) the store of one encoder for writing.

    Args:
        path: the store folder.
        encoder: the encoder's identity; ``weights_sha256`` decides whether an existing
            store is the same encoder's.
        overwrite: replace a store made by another encoder.
    """

    def __init__(self, path: str | Path, encoder: dict[str, Any], overwrite: bool = False) -> None:
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise StoreError(
                f"store path {path} is a file: choose a folder name such as "
                f"{path.with_suffix('.zarr')}"
            )
        if path.exists() and (path / "zarr.json").is_file():
            existing = EmbeddingStore(path).encoder
            if existing["weights_sha256"] != encoder["weights_sha256"]:
                if not overwrite:
                    raise StoreError(
                        f"store {path} was made by encoder {existing['name']} (weights "
                        f"{existing['weights_sha256'][:12]}): choose another --store, or pass "
                        f"--overwrite to replace it"
                    )
                shutil.rmtree(path)
        elif path.exists() and any(path.iterdir()):
            raise StoreError(f"{path} exists and is not an embedding store: choose another --store")
        self.path = path
        self.root = zarr.open_group(str(path), mode="a", zarr_format=3)
        if "encoder" not in self.root.attrs:
            self.root.attrs.update({"format": FORMAT_VERSION, "encoder": encoder, **stamp()})

    def has_split(self, dataset: str, split: str) -> bool:
        return split in EmbeddingStore(self.path).splits(dataset)

    def write_split(
        self,
        dataset: str,
        split: str,
        batches: Iterable[np.ndarray],
        n: int,
        dim: int,
        labels: np.ndarray,
        indices: np.ndarray,
        attrs: dict[str, Any],
        dataset_attrs: dict[str, Any],
    ) -> None:
        """Write one split from consecutive ``(B, dim)`` batches that add up to ``n`` rows.

        NaN or inf in a batch aborts the split (nothing of it is kept).
        """
        self.root.require_group(dataset).attrs.update(dataset_attrs)
        staging = f"{dataset}/.{split}.partial"
        if staging in self.root:
            del self.root[staging]
        group = self.root.require_group(staging)
        rows = min(chunk_rows(dim), max(n, 1))
        embeddings = group.create_array(
            "embeddings", shape=(n, dim), chunks=(rows, dim), dtype="float32", compressors=None
        )
        group.create_array("labels", data=labels, chunks=labels.shape, compressors=None)
        group.create_array("indices", data=indices, chunks=indices.shape, compressors=None)
        buffer = np.empty((rows, dim), dtype=np.float32)
        filled, written = 0, 0
        for batch in batches:
            if not np.isfinite(batch).all():
                del self.root[staging]
                raise StoreError(
                    f"NaN or inf embeddings in {dataset}/{split}: the encoder's weights are "
                    f"broken; nothing of this split was kept"
                )
            while len(batch):
                take = min(len(batch), rows - filled)
                buffer[filled : filled + take] = batch[:take]
                batch, filled = batch[take:], filled + take
                if filled == rows or written + filled == n:
                    embeddings[written : written + filled] = buffer[:filled]  # whole chunks
                    written, filled = written + filled, 0
        if written != n:
            del self.root[staging]
            raise StoreError(f"{dataset}/{split}: {written} embeddings written, {n} expected")
        group.attrs.update({"complete": True, "n": n, "dim": dim, **attrs, **stamp()})
        target = self.path / dataset / split
        if target.exists():
            shutil.rmtree(target)
        (self.path / dataset / f".{split}.partial").rename(target)
