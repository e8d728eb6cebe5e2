"""Writing embedding stores: whole chunks, one split at a time, visible only when complete.

A split is staged under ``{dataset}/.{split}.partial`` and renamed to ``{split}`` after its
last chunk and its ``complete`` attribute are written, so a reader (``EmbeddingStore``)
never sees part of one. Each finished chunk's SHA-256 is appended to the staging folder's
``progress.jsonl``; ``resume`` re-checks those chunks and continues after the last intact
one, and the checksums end up in the split's attributes for ``embedkit store verify``.
A store belongs to one encoder (by weights checksum) and takes one writer at a time
(``.lock``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from .errors import StoreError
from .store import FORMAT_VERSION, EmbeddingStore, chunk_rows
from .utils import stamp

log = logging.getLogger(__name__)

DTYPES = ("float32", "float16")
LOCK = ".lock"
PROGRESS = "progress.jsonl"

# produce(keep_from) -> (start, batches): consecutive (B, dim) batches from row ``start``
# (<= keep_from, so that a producer can restart at one of its own batch boundaries).
Producer = Callable[[int], tuple[int, Iterable[np.ndarray]]]


def chunk_digest(values: np.ndarray) -> str:
    """SHA-256 of a chunk's values (independent of how zarr pads the last chunk on disk)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class StoreWriter:
    """Opens (or creates) the store of one encoder for writing; use it as a context manager.

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
        if path.exists() and any(path.iterdir()) and not (path / "zarr.json").is_file():
            raise StoreError(f"{path} exists and is not an embedding store: choose another --store")
        self.path, self._locked = path, False
        path.mkdir(parents=True, exist_ok=True)
        self._lock()
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

    def _lock(self) -> None:
        lock = self.path / LOCK
        record = {"pid": os.getpid(), "host": socket.gethostname(), **stamp()}
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    holder = json.loads(lock.read_text())
                except (OSError, ValueError):
                    holder = {}
                same_host = holder.get("host") == record["host"]
                if same_host and not _pid_alive(int(holder.get("pid", 0))):
                    log.warning(
                        "removing the stale lock of process %s on %s", holder.get("pid"), self.path
                    )
                    lock.unlink(missing_ok=True)
                    continue
                raise StoreError(
                    f"store {self.path} is being written by process {holder.get('pid')} on "
                    f"{holder.get('host')} since {holder.get('created')}: wait for it, or delete "
                    f"{lock} if that process is gone"
                ) from None
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._locked = True
            return
        raise StoreError(f"could not take the lock {lock}: delete it and try again")

    def close(self) -> None:
        """Release the lock."""
        if self._locked:
            (self.path / LOCK).unlink(missing_ok=True)
            self._locked = False

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def has_split(self, dataset: str, split: str) -> bool:
        return split in EmbeddingStore(self.path).splits(dataset)

    def _resume_point(self, staging: Path, identity: dict[str, Any], group) -> tuple[int, list]:
        """Number of intact chunks in a staged split, and their digests."""
        try:
            saved = json.loads((staging / "zarr.json").read_text())["attributes"]["staging"]
            lines = (staging / PROGRESS).read_text().splitlines()
        except (OSError, ValueError, KeyError):
            return 0, []
        if saved != identity:
            return 0, []
        embeddings, rows, digests = group["embeddings"], identity["rows_per_chunk"], []
        for i, line in enumerate(lines):
            try:
                record = json.loads(line)
                values = embeddings[i * rows : (i + 1) * rows]
            except Exception:  # a torn line or a truncated chunk file ends the intact prefix
                break
            if record.get("chunk") != i or record.get("sha256") != chunk_digest(values):
                break
            digests.append(record["sha256"])
        return len(digests), digests

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
    ) -> None:
        """Write one split of ``n`` rows of ``dim`` embeddings.

        ``produce`` is a ``Producer`` (needed to resume) or simply an iterable of batches
        from row 0. With ``resume``, a staged split of the same shape, dtype and source
        continues after its last intact chunk; otherwise staging starts over. NaN or inf in
        a batch aborts the split and keeps nothing of it.
        """
        if dtype not in DTYPES:
            raise StoreError(f"unsupported embedding dtype '{dtype}': use {' or '.join(DTYPES)}")
        self.root.require_group(dataset).attrs.update(dataset_attrs)
        staging_name = f"{dataset}/.{split}.partial"
        staging = self.path / dataset / f".{split}.partial"
        rows = min(chunk_rows(dim, np.dtype(dtype).itemsize), max(n, 1))
        identity = {
            "n": n,
            "dim": dim,
            "dtype": dtype,
            "rows_per_chunk": rows,
            "source": attrs.get("data_file", {}).get("md5", ""),
        }
        done, digests = 0, []
        if resume and staging_name in self.root:
            done, digests = self._resume_point(staging, identity, self.root[staging_name])
            log.info("%s/%s: resuming after %d intact chunks", dataset, split, done)
        if done == 0:
            if staging_name in self.root:
                del self.root[staging_name]
            group = self.root.require_group(staging_name)
            group.attrs["staging"] = identity
            group.create_array(
                "embeddings", shape=(n, dim), chunks=(rows, dim), dtype=dtype, compressors=None
            )
            group.create_array("labels", data=labels, chunks=labels.shape, compressors=None)
            group.create_array("indices", data=indices, chunks=indices.shape, compressors=None)
        group = self.root[staging_name]
        embeddings = group["embeddings"]
        with open(staging / PROGRESS, "w") as progress:  # rewrite the intact prefix, then append
            progress.writelines(
                json.dumps({"chunk": i, "sha256": d}) + "\n" for i, d in enumerate(digests)
            )
            progress.flush()
            keep_from = done * rows
            start, batches = produce(keep_from) if callable(produce) else (0, produce)
            if start > keep_from:
                raise StoreError(f"producer began at row {start}, after row {keep_from}")
            skip, position = keep_from - start, keep_from
            buffer = np.empty((rows, dim), dtype=dtype)
            filled = 0
            for batch in batches:
                if not np.isfinite(batch).all():
                    progress.close()
                    del self.root[staging_name]
                    raise StoreError(
                        f"NaN or inf embeddings in {dataset}/{split}: the encoder's weights are "
                        f"broken; nothing of this split was kept"
                    )
                if skip:
                    dropped = min(skip, len(batch))
                    batch, skip = batch[dropped:], skip - dropped
                while len(batch):
                    take = min(len(batch), rows - filled)
                    buffer[filled : filled + take] = batch[:take]
                    batch, filled = batch[take:], filled + take
                    if filled == rows or position + filled == n:
                        values = buffer[:filled]
                        embeddings[position : position + filled] = values  # one whole chunk
                        digest = chunk_digest(values)
                        progress.write(json.dumps({"chunk": len(digests), "sha256": digest}) + "\n")
                        progress.flush()
                        digests.append(digest)
                        position, filled = position + filled, 0
        if position != n:
            raise StoreError(
                f"{dataset}/{split}: {position} embeddings written, {n} expected; "
                f"run again with --resume to continue"
            )
        group.attrs.update(
            {
                "complete": True,
                "n": n,
                "dim": dim,
                "dtype": dtype,
                "rows_per_chunk": rows,
                "chunk_sha256": digests,
                **attrs,
                **stamp(),
            }
        )
        (staging / PROGRESS).unlink()
        target = self.path / dataset / split
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
