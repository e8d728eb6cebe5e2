"""Chunk-level I/O of a staged split: whole-chunk writes, their SHA-256 log, and which
chunks of an interrupted split are intact (see ``embedkit.store.writer``)."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError

# produce(keep_from) -> (start, batches): consecutive (B, dim) batches from row ``start``
# (<= keep_from, so that a producer can restart at one of its own batch boundaries).
Producer = Callable[[int], tuple[int, Iterable[np.ndarray]]]


def chunk_digest(values: np.ndarray) -> str:
    """SHA-256 of a chunk's values (independent of how zarr pads the last chunk on disk)."""
    return hashlib.sha256(np.ascontiguousarray(values).tobytes()).hexdigest()


def read_chunk(group, chunk: int, rows: int) -> np.ndarray:
    """The values a chunk's digest covers: its embeddings, and projections when stored."""
    values = group["embeddings"][chunk * rows : (chunk + 1) * rows]
    if "projections" in group:
        values = np.hstack([values, group["projections"][chunk * rows : (chunk + 1) * rows]])
    return values


def intact_chunks(staging: Path, identity: dict[str, Any], group) -> dict[int, str]:
    """Chunks of a staged split whose recorded digest matches their values."""
    try:
        saved = json.loads((staging / "zarr.json").read_text())["attributes"]["staging"]
    except (OSError, ValueError, KeyError):
        return {}
    if saved != identity:
        return {}
    rows, intact = identity["rows_per_chunk"], {}
    for log_file in sorted(staging.glob("progress*.jsonl")):
        for line in log_file.read_text().splitlines():
            try:
                record = json.loads(line)
                chunk = int(record["chunk"])
                values = read_chunk(group, chunk, rows)
            except Exception:  # a torn line or a truncated chunk file: not intact
                continue
            if record.get("sha256") == chunk_digest(values):
                intact[chunk] = record["sha256"]
    return intact


def write_chunks(
    group, produce, chunks: tuple[int, int], log_file: Path, where: str
) -> dict[int, str]:
    """Write chunks ``[first, stop)`` of ``group`` from ``produce``; log and return their
    digests. Rows past ``stop`` are not computed."""
    first, stop = chunks
    embeddings = group["embeddings"]
    projections = group.get("projections", None)
    (n, dim), rows = embeddings.shape, embeddings.chunks[0]
    width = dim + (projections.shape[1] if projections is not None else 0)
    keep_from, end = first * rows, min(stop * rows, n)
    start, batches = produce(keep_from) if callable(produce) else (0, produce)
    if start > keep_from:
        raise StoreError(f"producer began at row {start}, after row {keep_from}")
    skip, position, digests = keep_from - start, keep_from, {}
    buffer = np.empty((rows, width), dtype=embeddings.dtype)
    filled = 0
    with open(log_file, "a") as progress:
        for batch in batches:
            if not np.isfinite(batch).all():
                raise NonFiniteError(
                    f"NaN or inf embeddings in {where}: the encoder's weights are broken; "
                    f"nothing of this split was kept"
                )
            if skip:
                dropped = min(skip, len(batch))
                batch, skip = batch[dropped:], skip - dropped
            while len(batch) and position < end:
                take = min(len(batch), rows - filled)
                buffer[filled : filled + take] = batch[:take]
                batch, filled = batch[take:], filled + take
                if filled == rows or position + filled == end:
                    values = buffer[:filled]
                    embeddings[position : position + filled] = values[:, :dim]  # whole chunk
                    if projections is not None:
                        projections[position : position + filled] = values[:, dim:]
                    chunk, digest = position // rows, chunk_digest(values)
                    progress.write(json.dumps({"chunk": chunk, "sha256": digest}) + "\n")
                    progress.flush()
                    digests[chunk] = digest
                    position, filled = position + filled, 0
            if position >= end:
                break  # the next rank's rows are not this rank's to compute
    if position != end:
        raise StoreError(
            f"{where}: {position} embeddings written, {end} expected; run again with "
            f"--resume to continue"
        )
    return digests


class NonFiniteError(StoreError):
    """An encoder produced NaN or inf embeddings."""
