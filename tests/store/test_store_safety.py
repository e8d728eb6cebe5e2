"""Store safety: kill and resume, locks, chunk checksums, verify and ls."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.embed import EmbedConfig, embed
from embedkit.errors import StoreError
from embedkit.store import LOCK, EmbeddingStore, StoreWriter, list_stores, verify_store

IDENTITY = {
    "name": "t/x",
    "method": "none",
    "backbone": "x",
    "init": "random",
    "weights_sha256": "5" * 64,
}


def _write(writer, dataset, split, x, **kwargs):
    n, dim = x.shape
    writer.write_split(
        dataset,
        split,
        kwargs.pop("produce", [x]),
        n,
        dim,
        np.zeros((n, 1), np.int64),
        np.arange(n),
        attrs={},
        dataset_attrs={"task": "multi-class", "class_names": ["a"]},
        **kwargs,
    )


def _embed_args(data_root, store):
    return [
        "embed",
        "--store",
        str(store),
        "--dataset",
        "demo",
        "--batch-size",
        "16",
        "--device",
        "cpu",
        "--data-root",
        str(data_root),
        "--no-progress",
    ]


@pytest.mark.slow
def test_kill_at_a_random_point_then_resume_is_bit_identical(tmp_path, data_root):
    config = EmbedConfig(dataset="demo", batch_size=16, device="cpu", data_root=str(data_root))
    reference = embed(config, tmp_path / "ref.zarr", progress=False)
    store = tmp_path / "killed.zarr"
    command = [
        sys.executable,
        "-c",
        "from embedkit.cli.main import main; main()",
        *_embed_args(data_root, store),
    ]
    delay = random.Random(os.getpid()).uniform(0.0, 2.5)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not (store / "demo-med").is_dir() and time.monotonic() < deadline:
        time.sleep(0.02)  # writing has begun (~7,700 images follow): kill at a random moment
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the embed finished before it could be killed"
    assert EmbeddingStore(store).splits("demo-texture") == []  # something is left to resume
    result = CliRunner().invoke(app, [*_embed_args(data_root, store), "--resume"])
    assert result.exit_code == 0, result.output
    resumed = EmbeddingStore(store)
    for dataset in ("demo-med", "demo-natural", "demo-texture"):
        for split in ("train", "val", "test"):
            a, b = reference.get(dataset, split), resumed.get(dataset, split)
            where = f"{dataset}/{split}, killed {delay:.1f} s into writing"
            assert a.embeddings.tobytes() == b.embeddings.tobytes(), where
            np.testing.assert_array_equal(a.labels, b.labels)
    assert verify_store(store)["status"].to_list() == ["ok"] * 9
    assert not (store / LOCK).exists()


def test_resume_redoes_a_truncated_chunk(tmp_path):
    x = np.random.default_rng(0).normal(size=(3000, 256)).astype(np.float32)  # 1024-row chunks
    calls = []

    def crashing(keep_from):
        calls.append(keep_from)

        def batches():
            for start in range(keep_from, 3000, 500):
                if len(calls) == 1 and start >= 2500:
                    raise KeyboardInterrupt  # dies after two whole chunks were written
                yield x[start : start + 500]

        return keep_from, batches()

    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer, pytest.raises(KeyboardInterrupt):
        _write(writer, "d", "train", x, produce=crashing)
    staging = tmp_path / "s.zarr" / "d" / ".train.partial"
    assert len((staging / "progress.jsonl").read_text().splitlines()) == 2
    chunk = staging / "embeddings" / "c" / "1" / "0"
    chunk.write_bytes(chunk.read_bytes()[:1000])  # a torn write of the second chunk
    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer:
        _write(writer, "d", "train", x, produce=crashing, resume=True)
    assert calls == [0, 1024]  # resumed after the one intact chunk
    stored = EmbeddingStore(tmp_path / "s.zarr").get("d", "train")
    assert stored.embeddings.tobytes() == x.tobytes()
    assert len(stored.attrs["chunk_sha256"]) == 3


def test_second_writer_is_refused_and_stale_lock_is_taken_over(tmp_path):
    busy = f"being written by process {os.getpid()}"
    with StoreWriter(tmp_path / "s.zarr", IDENTITY), pytest.raises(StoreError, match=busy):
        StoreWriter(tmp_path / "s.zarr", IDENTITY)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / "s.zarr" / LOCK).write_text(
        json.dumps({"pid": dead.pid, "host": os.uname().nodename})
    )
    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer:
        _write(writer, "d", "test", np.ones((10, 4), np.float32))
    assert not (tmp_path / "s.zarr" / LOCK).exists()


def test_float16_store(tmp_path):
    x = np.random.default_rng(1).normal(size=(100, 64)).astype(np.float32)
    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer:
        _write(writer, "d", "val", x, dtype="float16")
    stored = EmbeddingStore(tmp_path / "s.zarr").get("d", "val")
    assert stored.embeddings.dtype == np.float16
    np.testing.assert_array_equal(stored.embeddings, x.astype(np.float16))
    assert verify_store(tmp_path / "s.zarr")["status"].to_list() == ["ok"]


def test_verify_finds_corruption_and_ls_lists(tmp_path):
    x = np.random.default_rng(2).normal(size=(3000, 256)).astype(np.float32)
    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer:
        _write(writer, "d", "train", x)
        _write(writer, "d", "test", x[:100])
    assert verify_store(tmp_path / "s.zarr")["status"].to_list() == ["ok", "ok"]
    listing = list_stores([tmp_path])
    assert listing.select("dataset", "split", "n").rows() == [
        ("d", "train", 3000),
        ("d", "test", 100),
    ]
    array = zarr.open_array(str(tmp_path / "s.zarr" / "d" / "train" / "embeddings"), mode="r+")
    array[1500, 3] = 7.0  # silent bit rot in chunk 1
    chunk = tmp_path / "s.zarr" / "d" / "test" / "embeddings" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])  # truncated
    table = verify_store(tmp_path / "s.zarr")
    problems = dict(zip(table["split"], table["problems"], strict=True))
    assert problems["train"] == "chunk 1 differs from the checksum recorded at write time"
    assert "chunk 0 unreadable" in problems["test"]
    result = CliRunner().invoke(app, ["store", "verify", "--store", str(tmp_path / "s.zarr")])
    assert result.exit_code == 1 and "2 problem row(s)" in result.output


def _chunk_files(store):
    folder = store / "d" / "train" / "embeddings" / "c"
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(("ahead", "block"), [(0, 1), (2, 1), (2, 3), (1, 100)])
def test_the_writer_thread_and_blocks_write_the_same_bytes(tmp_path, monkeypatch, ahead, block):
    """Chunks written in the caller's thread one by one, or by the writer thread in blocks of
    several chunks: the same chunk files and checksums (2900 rows of 256-d: 1024-row chunks,
    the last one partial; batches of 300 straddle chunk and block boundaries)."""
    from embedkit.store import chunks

    x = np.random.default_rng(1).normal(size=(2900, 256)).astype(np.float32)
    batches = [x[i : i + 300] for i in range(0, 2900, 300)]
    with StoreWriter(tmp_path / "ref.zarr", IDENTITY) as writer:
        _write(writer, "d", "train", x, produce=[x])
    monkeypatch.setattr(chunks, "WRITE_AHEAD", ahead)
    monkeypatch.setattr(chunks, "WRITE_BYTES", block * 1024 * 256 * 4)
    with StoreWriter(tmp_path / "s.zarr", IDENTITY) as writer:
        _write(writer, "d", "train", x, produce=batches)
    assert _chunk_files(tmp_path / "s.zarr") == _chunk_files(tmp_path / "ref.zarr")
    ours = EmbeddingStore(tmp_path / "s.zarr").get("d", "train").attrs["chunk_sha256"]
    assert ours == EmbeddingStore(tmp_path / "ref.zarr").get("d", "train").attrs["chunk_sha256"]


def test_an_interruption_writes_the_whole_chunks_already_computed(tmp_path, monkeypatch):
    """With blocks of 8 chunks, an interruption after 2.4 chunks' rows still writes and logs
    the 2 whole chunks (resume starts after them); a failing writer's error reaches the
    caller and nothing is published."""
    from embedkit.store import chunks

    monkeypatch.setattr(chunks, "WRITE_BYTES", 8 * 1024 * 256 * 4)
    x = np.random.default_rng(2).normal(size=(5000, 256)).astype(np.float32)

    def interrupted():
        yield x[:2500]
        raise KeyboardInterrupt

    class Unhurried(ThreadPoolExecutor):  # hashes start late: the writer is still busy
        def submit(self, fn, *args, **kwargs):  # when the interruption leaves write_chunks
            if self._thread_name_prefix == "embedkit-hash":
                time.sleep(0.3)
            return super().submit(fn, *args, **kwargs)

    for name, executor in (("s", ThreadPoolExecutor), ("u", Unhurried)):
        monkeypatch.setattr(chunks, "ThreadPoolExecutor", executor)
        store = tmp_path / f"{name}.zarr"
        with StoreWriter(store, IDENTITY) as writer, pytest.raises(KeyboardInterrupt):
            _write(writer, "d", "train", x, produce=interrupted())
        log = (store / "d" / ".train.partial" / "progress.jsonl").read_text()
        assert [json.loads(line)["chunk"] for line in log.splitlines()] == [0, 1], name
    monkeypatch.setattr(chunks, "ThreadPoolExecutor", ThreadPoolExecutor)

    def broken_digest(values):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(chunks, "chunk_digest", broken_digest)
    with StoreWriter(tmp_path / "t.zarr", IDENTITY) as writer, pytest.raises(OSError):
        _write(writer, "d", "train", x, produce=[x[:2500], x[2500:]])
    assert not (tmp_path / "t.zarr" / "d" / "train").exists()  # nothing published
