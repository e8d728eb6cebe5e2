"""Chunk-level I/O of a staged split: whole-chunk writes, their SHA-256 log, and which
chunks of an interrupted split are intact (see ``embedkit.store.writer``)."""

from __future__ import annotations

import hashlib
import json
import os
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import StoreError

# produce(keep_from) -> (start, batches): consecutive (B, dim) batches from row ``start``
# (<= keep_from, so that a producer can restart at one of its own batch boundaries).
Producer = Callable[[int], tuple[int, Iterable[np.ndarray]]]


def chunk_digest(values: np.ndarray) -> str:
    """SHA-256 of a chunk's values (independent of how zarr pads the last chunk on disk)."""
    return hashlib.sha256(np.ascontiguousarray(values).data).hexdigest()  # no copy


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


# blocks of whole chunks queued for the writer thread while the caller computes the next
# ones (memory: this many blocks more); 0 writes in the caller's thread
WRITE_AHEAD = 2
# whole chunks go to zarr in blocks of about this many bytes: zarr writes the chunks of one
# call concurrently, and its per-call latency is paid once per block
WRITE_BYTES = 8 << 20
WRITE_CONFIG = {"write_empty_chunks": True}
# threads hashing a block's chunks beside zarr's write of it
HASH_THREADS = min(4, os.cpu_count() or 1)


def write_chunks(
    group, produce, chunks: tuple[int, int], log_file: Path, where: str
) -> dict[int, str]:
    """Write chunks ``[first, stop)`` of ``group`` from ``produce``; log and return their
    digests. Rows past ``stop`` are not computed.

    Whole chunks are gathered into blocks of about ``WRITE_BYTES``; a writer thread stores
    and logs each block (in order), its chunks hashed on ``HASH_THREADS`` threads meanwhile,
    while the producer computes the next (zarr's I/O and hashlib release the GIL); at most
    ``WRITE_AHEAD`` blocks wait for it. A chunk is logged only once it is written; an
    interruption first writes the whole chunks already computed, and the threads are joined
    on the way out, so every whole chunk computed before an interruption is on disk and
    logged, as when each chunk was written at once.
    """
    first, stop = chunks
    # zarr's default skips chunks equal to the fill value, at the price of comparing every
    # chunk with a fill array before writing it; beside an H100 that cut extraction to
    # ~21k img/s (ResNet-50, 28 px) against ~51k without it. Embeddings are almost never all
    # zeros, and a chunk of zeros written as such reads back the same.
    embeddings = group["embeddings"].with_config(WRITE_CONFIG)
    projections = group.get("projections", None)
    if projections is not None:
        projections = projections.with_config(WRITE_CONFIG)
    (n, dim), rows = embeddings.shape, embeddings.chunks[0]
    width = dim + (projections.shape[1] if projections is not None else 0)
    keep_from, end = first * rows, min(stop * rows, n)
    start, batches = produce(keep_from) if callable(produce) else (0, produce)
    if start > keep_from:
        raise StoreError(f"producer began at row {start}, after row {keep_from}")
    skip, position, digests = keep_from - start, keep_from, {}
    per_block = max(1, WRITE_BYTES // (rows * width * embeddings.dtype.itemsize))
    buffer = np.empty((rows * per_block, width), dtype=embeddings.dtype)
    filled = 0

    def store(position: int, values: np.ndarray) -> list[tuple[int, str]]:
        # the block's chunks are hashed on a small pool while zarr writes them (both only
        # read the block; hashlib releases the GIL); a chunk is logged once it is written
        offsets = range(0, len(values), rows)
        hashes = [hasher.submit(chunk_digest, values[o : o + rows]) for o in offsets]
        embeddings[position : position + len(values)] = values[:, :dim]  # whole chunks
        if projections is not None:
            projections[position : position + len(values)] = values[:, dim:]
        done = []
        for offset, digest in zip(offsets, hashes, strict=True):
            chunk = (position + offset) // rows
            done.append((chunk, digest.result()))
            progress.write(json.dumps({"chunk": chunk, "sha256": done[-1][1]}) + "\n")
        progress.flush()
        return done

    pending: deque[Future] = deque()
    failed = False  # the writer raised: nothing more is given to it

    def collect(keep: int) -> None:
        nonlocal failed
        while len(pending) > keep:
            try:
                digests.update(pending.popleft().result())
            except BaseException:
                failed = True
                raise  # a writer's error surfaces here, in the caller's thread

    def flush(count: int) -> None:
        nonlocal buffer, position, filled, failed
        if WRITE_AHEAD:
            pending.append(writer.submit(store, position, buffer[:count]))
            fresh = np.empty_like(buffer)  # the block is the writer's now
            fresh[: filled - count] = buffer[count:filled]
            buffer = fresh
            collect(WRITE_AHEAD)
        else:
            try:
                digests.update(store(position, buffer[:count]))
            except BaseException:
                failed = True
                raise
            buffer[: filled - count] = buffer[count:filled]
        position, filled = position + count, filled - count

    with (  # left in reverse order: the writer is joined before the pool it hashes on
        open(log_file, "a") as progress,
        ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="embedkit-hash") as hasher,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-write") as writer,
    ):
        try:
            for batch in batches:
                if not np.isfinite(batch).all():
                    raise NonFiniteError(
                        f"NaN or inf embeddings in {where}: the encoder's weights are broken; "
                        f"nothing of this split was kept"
                    )
                if skip:
                    dropped = min(skip, len(batch))
                    batch, skip = batch[dropped:], skip - dropped
                while len(batch) and position + filled < end:
                    take = min(len(batch), len(buffer) - filled, end - position - filled)
                    buffer[filled : filled + take] = batch[:take]
                    batch, filled = batch[take:], filled + take
                    if filled == len(buffer) or position + filled == end:
                        flush(filled)
                if position >= end:
                    break  # the next rank's rows are not this rank's to compute
        except NonFiniteError:
            raise  # nothing of the split is kept
        except BaseException:
            if filled >= rows and not failed:  # keep the whole chunks computed, for --resume
                flush(filled // rows * rows)
            raise
        collect(0)
    if position != end:
        raise StoreError(
            f"{where}: {position} embeddings written, {end} expected; run again with "
            f"--resume to continue"
        )
    return digests


class NonFiniteError(StoreError):
    """An encoder produced NaN or inf embeddings."""
