import json
from dataclasses import replace

import numpy as np
import pytest
import torch
import zarr

from embedkit.backbones import create_encoder
from embedkit.data import load_split
from embedkit.embed import EmbedConfig, embed, encode
from embedkit.errors import RunError, StoreError
from embedkit.primitives.inference import StagingRing, prefetched_batches
from embedkit.store import EmbeddingStore, chunk_rows


def test_store_round_trip(demo_store, data_root):
    assert demo_store.datasets() == ["demo-med", "demo-natural", "demo-texture"]
    assert demo_store.splits("demo-med") == ["train", "val", "test"]
    split = demo_store.get("demo-med", "val")
    source = load_split("demo-med", "val", 28, data_root)
    np.testing.assert_array_equal(split.labels, source.labels)
    np.testing.assert_array_equal(split.indices, np.arange(300))
    torch.manual_seed(0)  # the store's encoder: random init with seed 0
    encoder = create_encoder("resnet18")
    direct = np.concatenate([f for _, f in encode(encoder, source.images, 64, torch.device("cpu"))])
    np.testing.assert_allclose(split.embeddings, direct, rtol=1e-4, atol=1e-5)
    assert split.embeddings.dtype == np.float32 and split.embeddings.shape == (300, 512)
    assert split.attrs["data_file"]["md5"] == source.files[0].md5
    assert split.attrs["size"] == 28 and split.attrs["normalisation"]["mean"][0] == 0.485
    encoder_attrs = demo_store.encoder
    assert encoder_attrs["name"] == "random/resnet18" and len(encoder_attrs["weights_sha256"]) == 64
    assert demo_store.dataset_attrs("demo-med")["class_names"] == [
        "immunohistochemistry",
        "retina",
        "cell",
    ]
    catalog = demo_store.catalog()
    assert catalog.height == 9 and set(catalog["n"].to_list()) == {300, 500, 600, 1000, 1200, 2000}


class _Copied:
    """Stands in for the CUDA event released with a batch: records when the ring waits on
    it, and what the batch's buffer still holds at that moment."""

    def __init__(self, ring: StagingRing, index: int, waits: list) -> None:
        self.ring, self.index, self.waits = ring, index, waits

    def synchronize(self) -> None:
        buffer = self.ring.buffers[self.index % len(self.ring.buffers)]
        self.waits.append((self.index, buffer.numpy().copy()))


def test_a_staging_buffer_is_read_into_again_only_after_its_release():
    images = np.arange(20 * 2 * 2 * 3, dtype=np.uint8).reshape(20, 2, 2, 3)
    ring = StagingRing((3, 2, 2, 3), torch.uint8, count=3, pin=False)
    waits, seen, pointers = [], [], []
    for i, (start, batch) in enumerate(prefetched_batches(images, 3, ring)):
        assert start == 3 * i
        np.testing.assert_array_equal(batch.numpy(), images[start : start + 3])
        seen.append(batch.numpy().copy())
        pointers.append(batch.data_ptr())
        ring.release(i, _Copied(ring, i, waits))
    np.testing.assert_array_equal(np.concatenate(seen), images)  # 7 batches, the last of 2
    assert len(set(pointers)) == 3 and pointers[:3] == pointers[3:6]
    # batches 3-6 reuse the buffers of batches 0-3, each after waiting on that batch's
    # release, while the buffer still held that batch
    assert [index for index, _ in waits] == [0, 1, 2, 3]
    for index, held in waits:
        np.testing.assert_array_equal(held, images[3 * index : 3 * index + 3])


def test_chunks_hold_at_least_a_megabyte(demo_store):
    array = zarr.open_array(
        str(demo_store.path / "demo-natural" / "train" / "embeddings"), mode="r"
    )
    assert array.chunks == (512, 512) and array.chunks[0] * 512 * 4 >= 1 << 20
    assert chunk_rows(2048) == 128 and chunk_rows(384) == 683
    assert array.compressors == ()


def test_chunks_are_written_without_comparing_them_to_the_fill_value(tmp_path, monkeypatch):
    """Every chunk is stored as it comes: none is compared with the fill value first (a pass
    over each chunk that held extraction beside an H100 to less than half its speed), and a
    chunk of zeros is written and reads back and verifies like any other."""
    from zarr.core.buffer.core import NDBuffer

    from embedkit.store import StoreWriter, verify_store

    compared = []
    all_equal = NDBuffer.all_equal
    monkeypatch.setattr(
        NDBuffer, "all_equal", lambda self, *a, **k: compared.append(1) or all_equal(self, *a, **k)
    )
    n, dim, head = 500, 2048, 64  # chunks of 128 rows: the first two are zeros
    rows = np.zeros((n, dim + head), np.float32)
    rows[300:] = np.random.default_rng(0).standard_normal((n - 300, dim + head))
    with StoreWriter(tmp_path / "s.zarr", {"name": "t", "weights_sha256": "0" * 64}) as writer:
        writer.write_split(
            "d", "test", (rows[i : i + 64] for i in range(0, n, 64)), n, dim,
            np.zeros((n, 1), np.int64), np.arange(n), {},
            {"task": "multi-class", "class_names": ["a"]}, head_dim=head,
        )  # fmt: skip
    assert compared == []
    chunk = chunk_rows(dim)  # the projections share the embeddings' rows per chunk
    for name in ("embeddings", "projections"):
        files = sorted((tmp_path / "s.zarr" / "d" / "test" / name / "c").iterdir())
        assert [f.name for f in files] == ["0", "1", "2", "3"]
    store = EmbeddingStore(tmp_path / "s.zarr")
    split = store.get("d", "test")
    np.testing.assert_array_equal(split.embeddings, rows[:, :dim])
    assert chunk == 128 and not split.embeddings[: 2 * chunk].any()
    assert verify_store(store.path)["problems"].to_list() == [""]


def test_partial_split_is_invisible(demo_store, tmp_path):
    import shutil

    copy = tmp_path / "copy.zarr"
    shutil.copytree(demo_store.path, copy)
    (copy / "demo-med" / "test").rename(copy / "demo-med" / ".test.partial")
    store = EmbeddingStore(copy)
    assert store.splits("demo-med") == ["train", "val"]
    with pytest.raises(StoreError, match="split 'test' of demo-med is not in store"):
        store.get("demo-med", "test")
    meta = json.loads((copy / "demo-med" / "val" / "zarr.json").read_text())
    meta["attributes"]["complete"] = False
    (copy / "demo-med" / "val" / "zarr.json").write_text(json.dumps(meta))
    assert EmbeddingStore(copy).splits("demo-med") == ["train"]


def test_an_inf_behind_a_matching_checksum_is_refused(demo_store, tmp_path):
    """Reads test finiteness chunk by chunk beside the checksums: a value that is not
    finite in a middle chunk, with the checksums recorded over it, is still found."""
    import shutil

    from embedkit.store import verify_store
    from embedkit.store.chunks import chunk_digest, read_chunk

    copy = tmp_path / "copy.zarr"
    shutil.copytree(demo_store.path, copy)
    split = copy / "demo-med" / "train"
    group = zarr.open_group(str(split), mode="r+")
    rows = group.attrs["rows_per_chunk"]
    assert group["embeddings"].shape[0] > 2 * rows  # chunk 1 is neither the first nor the last
    group["embeddings"][rows + 3, 7] = -np.inf
    meta = json.loads((split / "zarr.json").read_text())
    meta["attributes"]["chunk_sha256"][1] = chunk_digest(read_chunk(group, 1, rows))
    (split / "zarr.json").write_text(json.dumps(meta))
    store = EmbeddingStore(copy)
    with pytest.raises(StoreError, match="demo-med/train in store .* holds NaN or inf embeddings"):
        store.get("demo-med", "train")
    assert np.isfinite(store.get("demo-med", "test").embeddings).all()
    problems = verify_store(copy).filter(dataset="demo-med", split="train")["problems"]
    assert problems.to_list() == ["NaN or inf embeddings"]


def test_another_encoder_is_refused(demo_store, tiny_run, data_root):
    config = EmbedConfig(
        dataset="demo-texture",
        splits=("test",),
        run=str(tiny_run),
        device="cpu",
        data_root=str(data_root),
    )
    with pytest.raises(StoreError, match="made by encoder random/resnet18"):
        embed(config, demo_store.path, progress=False)


def test_store_errors(tmp_path, data_root, demo_store):
    with pytest.raises(StoreError, match="does not exist"):
        EmbeddingStore(tmp_path / "missing.zarr")
    (tmp_path / "file.zarr").write_text("x")
    config = EmbedConfig(
        dataset="demo-texture", splits=("test",), device="cpu", data_root=str(data_root)
    )
    with pytest.raises(StoreError, match="is a file"):
        embed(config, tmp_path / "file.zarr", progress=False)
    with pytest.raises(StoreError, match="'pathmnist' is not in store"):
        demo_store.get("pathmnist", "test")
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "run.json").write_text(json.dumps({"status": "running"}))
    (unfinished / "config.json").write_text(json.dumps({"pretrain": {}}))
    with pytest.raises(RunError, match="not finished"):
        embed(replace(config, run=str(unfinished)), tmp_path / "s.zarr")
    with pytest.raises(RunError, match="not a pretraining run folder"):
        embed(replace(config, run=str(tmp_path)), tmp_path / "s.zarr")
    assert not (tmp_path / "s.zarr").exists()


def test_run_encoder_store(tiny_run, data_root, tmp_path):
    config = EmbedConfig(
        dataset="demo-texture",
        splits=("val",),
        run=str(tiny_run),
        device="cpu",
        data_root=str(data_root),
    )
    store = embed(config, tmp_path / "simclr.zarr", progress=False)
    assert store.encoder["name"] == "simclr/resnet18"
    assert store.encoder["pretrain_dataset"] == "demo-texture"
    run_state = json.loads((tiny_run / "run.json").read_text())
    assert store.encoder["weights_sha256"] == run_state["encoder_sha256"]
    before = store.get("demo-texture", "val").attrs["created"]
    embed(config, tmp_path / "simclr.zarr", progress=False)  # complete splits are kept
    assert store.get("demo-texture", "val").attrs["created"] == before


def test_with_head_stores_the_projection_beside_the_features(tmp_path, tiny_run, data_root):
    from embedkit.augment import to_float
    from embedkit.data import load_split
    from embedkit.embed import EmbedConfig, embed
    from embedkit.errors import ConfigError, StoreError
    from embedkit.runs import load_head
    from embedkit.store import verify_store

    config = EmbedConfig(
        dataset="demo-texture",
        splits=("test",),
        run=str(tiny_run),
        with_head=True,
        device="cpu",
        data_root=str(data_root),
    )
    store = embed(config, tmp_path / "h.zarr", progress=False)
    features = store.get("demo-texture", "test")
    projections = store.get("demo-texture", "test", head=True)
    assert features.embeddings.shape[1] == 512 and projections.embeddings.shape == (
        len(features.embeddings),
        128,  # SimCLR's projection_dim
    )
    encoder = create_encoder("resnet18", str(tiny_run / "encoder.safetensors"), 28).eval()
    head = load_head(tiny_run, encoder)
    images = load_split("demo-texture", "test", 28, data_root).images[:8]
    with torch.no_grad():
        direct = encoder(to_float(torch.from_numpy(np.array(images))))
        np.testing.assert_allclose(features.embeddings[:8], direct.numpy(), atol=1e-4)
        np.testing.assert_allclose(projections.embeddings[:8], head(direct).numpy(), atol=1e-4)
    assert verify_store(tmp_path / "h.zarr")["problems"].to_list() == [""]
    from embedkit.store import list_stores

    assert list_stores([tmp_path / "h.zarr"])["head_dim"].to_list() == [128]
    chunk = tmp_path / "h.zarr" / "demo-texture" / "test" / "projections" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:-8] + bytes(8))  # rot in the head output only
    assert "checksum" in verify_store(tmp_path / "h.zarr")["problems"][0]
    with pytest.raises(ConfigError, match="--with-head needs --run"):
        embed(EmbedConfig(with_head=True), tmp_path / "x.zarr", progress=False)
    plain = embed(
        EmbedConfig(
            dataset="demo-texture", splits=("test",), device="cpu", data_root=str(data_root)
        ),
        tmp_path / "p.zarr",
        progress=False,
    )
    with pytest.raises(StoreError, match="no projection-head outputs"):
        plain.get("demo-texture", "test", head=True)
