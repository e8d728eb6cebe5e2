"""Writing embedding stores: whole chunks, one split at a time, visible only when complete.

A split is staged under ``{dataset}/.{split}.partial`` and renamed to ``{split}`` after its
last chunk and its ``complete`` attribute are written, so a reader (``EmbeddingStore``)
never sees part of one. Each finished chunk's SHA-256 is appended to the staging folder's
``progress.jsonl``; ``resume`` re-checks those chunks and continues after the last intact
one, and the checksums end up in the split's attributes, with those of the labels and
indices, for ``embedkit store verify`` and for every read (``EmbeddingStore.get``).
A store belongs to one encoder (by weights checksum) and takes one writer at a time
(``.lock``).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from ..distributed import Shard
from ..errors import ConfigError, StoreError
from ..lock import LOCK, FolderLock
from ..utils import check_writable, os_error_message, stamp
from .chunks import (
    WRITE_CONFIG,
    NonFiniteError,
    Producer,
    chunk_digest,
    intact_chunks,
    write_chunks,
)
from .reader import FORMAT_VERSION, EmbeddingStore, chunk_rows

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
PROGRESS = "progress.jsonl"


def check_store_path(path: Path) -> None:
    """Refuse a store path that is a file or a folder of something else (before writing)."""
    if path.exists() and not path.is_dir():
        raise StoreError(
            f"--store {path} is a file, not a store folder: remove it or choose another path"
        )
    try:
        check_writable(path, "store")
    except ConfigError as exc:
        raise StoreError(str(exc)) from None
    if path.is_dir() and not (path / "zarr.json").is_file():
        others = [c.name for c in path.iterdir() if c.name != LOCK]
        if others:
            raise StoreError(
                f"{path} exists and is not an embedding store (it holds {others[0]}): "
                f"choose another --store"
            )


class StoreWriter:
    """Opens (or creates) the store of one encoder for writing; use it as a context manager.

    Args:
        path: the store folder.
        encoder: the encoder's identity; ``weights_sha256`` decides whether an existing
            store is the same encoder's.
        overwrite: replace a store made by another encoder.
        shard: this process's rank when several write one store (rank 0 checks, locks and
            creates it; the others open it once that is done).
    """

    def __init__(
        self,
        path: str | Path,
        encoder: dict[str, Any],
        overwrite: bool = False,
        shard: Shard = Shard(),
    ) -> None:
        self.path, self.shard = Path(path), shard
        self._lock = FolderLock(self.path, "store", StoreError)
        shard.on_main(lambda: self._open(encoder, overwrite))
        if not shard.is_main:
            self.root = zarr.open_group(str(self.path), mode="r+", zarr_format=3)

    def _open(self, encoder: dict[str, Any], overwrite: bool) -> None:
        path = self.path
        check_store_path(path)
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(os_error_message(exc, f"cannot create store {path}")) from exc
        self._lock.acquire()
        try:
            if (path / "zarr.json").is_file():
                existing = EmbeddingStore(path).encoder
                if existing["weights_sha256"] != encoder["weights_sha256"]:
                    if not overwrite:
                        raise StoreError(
                            f"store {path} was made by encoder {existing['name']} (weights "
                            f"{existing['weights_sha256'][:12]}): choose another --store, or "
                            f"pass --overwrite to replace it"
                        )
                    for child in path.iterdir():
                        if child.name != LOCK:
                            shutil.rmtree(child) if child.is_dir() else child.unlink()
            self.root = zarr.open_group(str(path), mode="a", zarr_format=3)
            if "encoder" not in self.root.attrs:
                self.root.attrs.update({"format": FORMAT_VERSION, "encoder": encoder, **stamp()})
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release the lock."""
        self._lock.release()

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def has_split(self, dataset: str, split: str, head: bool = False) -> bool:
        """Whether the split is complete (with projection-head outputs, for ``head``)."""
        return EmbeddingStore(self.path).has_split(dataset, split, head)

    def _stage(self, dataset, split, identity, labels, indices, dataset_attrs, resume):
        """Create (or, resuming, check) the staging group; return its intact chunks."""
        self.root.require_group(dataset).attrs.update(dataset_attrs)
        name, staging = f"{dataset}/.{split}.partial", self.path / dataset / f".{split}.partial"
        intact = {}
        if resume and name in self.root:
            intact = intact_chunks(staging, identity, self.root[name])
            log.info("%s/%s: resuming with %d intact chunks", dataset, split, len(intact))
        if not intact:
            if name in self.root:
                del self.root[name]
            group = self.root.require_group(name)
            group.attrs["staging"] = identity
            n, dim, rows = identity["n"], identity["dim"], identity["rows_per_chunk"]
            group.create_array(
                "embeddings",
                shape=(n, dim),
                chunks=(rows, dim),
                dtype=identity["dtype"],
                compressors=None,
            )
            if identity["head_dim"]:
                group.create_array(
                    "projections",
                    shape=(n, identity["head_dim"]),
                    chunks=(rows, identity["head_dim"]),
                    dtype=identity["dtype"],
                    compressors=None,
                )
            for name, values in (("labels", labels), ("indices", indices)):
                group.create_array(
                    name, data=values, chunks=values.shape, compressors=None, config=WRITE_CONFIG
                )
        for old in staging.glob("progress.*.jsonl"):  # other ranks' logs: merged below
            old.unlink()
        (staging / PROGRESS).write_text(
            "".join(json.dumps({"chunk": c, "sha256": d}) + "\n" for c, d in sorted(intact.items()))
        )
        return intact

    def write_split(
        self,
        dataset: str,
        split: str,
        produce: Producer | Iterable[np.ndarray],
        n: int,
        dim: int,
        labels: np.ndarray,
        indices: np.ndarray,
        attrs: dict[str, Any],
        dataset_attrs: dict[str, Any],
        dtype: str = "float32",
        resume: bool = False,
        head_dim: int = 0,
    ) -> None:
        """Write one split of ``n`` rows of ``dim`` embeddings.

        With ``head_dim``, each produced row holds ``dim`` backbone features followed by
        ``head_dim`` projection-head outputs, stored as ``embeddings`` and ``projections``.

        ``produce`` is a ``Producer`` (needed to resume and to shard) or simply an iterable
        of batches from row 0. With ``resume``, a staged split of the same shape, dtype and
        source keeps its intact chunks and continues after them; otherwise staging starts
        over. NaN or inf in a batch aborts the split and keeps nothing of it. Under several
        ranks, every rank calls this with its own producer and writes its contiguous range of
        whole chunks; rank 0 stages, checks and publishes the split.
        """
        if dtype not in DTYPES:
            raise StoreError(f"unsupported embedding dtype '{dtype}': use {' or '.join(DTYPES)}")
        rows = min(chunk_rows(dim, np.dtype(dtype).itemsize), max(n, 1))
        identity = {
            "n": n,
            "dim": dim,
            "dtype": dtype,
            "rows_per_chunk": rows,
            "source": attrs.get("data_file", {}).get("md5", ""),
            "head_dim": head_dim,
        }
        shard = self.shard
        intact = shard.on_main(
            lambda: self._stage(dataset, split, identity, labels, indices, dataset_attrs, resume)
        )
        staging_name = f"{dataset}/.{split}.partial"
        staging = self.path / dataset / f".{split}.partial"
        n_chunks = -(-n // rows)
        first, stop = shard.range(n_chunks)
        mine = {}
        while first < stop and first in intact:
            mine[first] = intact[first]
            first += 1
        error = None
        if first < stop:
            log_file = staging / (PROGRESS if shard.is_main else f"progress.{shard.rank}.jsonl")
            try:
                mine.update(
                    write_chunks(
                        self.root[staging_name],
                        produce,
                        (first, stop),
                        log_file,
                        f"{dataset}/{split}",
                    )
                )
            except StoreError as exc:
                error = exc
        try:
            shard.check_all(error)
        except NonFiniteError:
            if shard.is_main:
                del self.root[staging_name]
            raise
        digests: dict[int, str] = {}
        for part in shard.gather(mine):
            digests.update(part)
        if shard.is_main:
            self._publish(dataset, split, identity, digests, attrs)
        shard.gather(None)  # the split is visible to every rank once this returns

    def _publish(self, dataset, split, identity, digests: dict[int, str], attrs) -> None:
        """Record the split's attributes and rename it into view (rank 0)."""
        n_chunks = -(-identity["n"] // identity["rows_per_chunk"])
        if sorted(digests) != list(range(n_chunks)):
            raise StoreError(
                f"{dataset}/{split}: {len(digests)} of {n_chunks} chunks written; run again "
                f"with --resume to continue"
            )
        staging = self.path / dataset / f".{split}.partial"
        group = self.root[f"{dataset}/.{split}.partial"]
        group.attrs.update(
            {
                "complete": True,
                "n": identity["n"],
                "dim": identity["dim"],
                "dtype": identity["dtype"],
                "rows_per_chunk": identity["rows_per_chunk"],
                "head_dim": identity["head_dim"],
                "chunk_sha256": [digests[c] for c in range(n_chunks)],
                # labels and indices as they lie on disk: read back, then hashed
                "labels_sha256": chunk_digest(group["labels"][:]),
                "indices_sha256": chunk_digest(group["indices"][:]),
                **attrs,
                **stamp(),
            }
        )
        for log_file in staging.glob("progress*.jsonl"):
            log_file.unlink()
        target = self.path / dataset / split
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
