"""Rank-sharded extraction: two processes on the gloo backend write one store together."""

import os
import subprocess
import sys

import pytest

from embedkit.distributed import Shard
from embedkit.embed import EmbedConfig, embed
from embedkit.store import EmbeddingStore, verify_store


@pytest.mark.parametrize("world", [1, 2, 3, 5])
@pytest.mark.parametrize("n_chunks", [0, 1, 2, 7, 10])
def test_shard_ranges_cover_every_chunk_once_and_in_order(world, n_chunks):
    ranges = [Shard(rank, world).range(n_chunks) for rank in range(world)]
    covered = [c for start, stop in ranges for c in range(start, stop)]
    assert covered == list(range(n_chunks))
    sizes = [stop - start for start, stop in ranges]
    assert max(sizes) - min(sizes) <= 1  # balanced


@pytest.mark.slow
def test_two_ranks_write_the_same_store_as_one(tmp_path, data_root):
    config = EmbedConfig(dataset="demo-med", data_root=str(data_root), device="cpu")
    single = embed(config, tmp_path / "one.zarr", progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc-per-node",
        "2",
        "--master-port",
        str(29500 + os.getpid() % 1000),
        "-m",
        "embedkit.cli.main",
        "embed",
        "--store",
        str(tmp_path / "two.zarr"),
        "--dataset",
        "demo-med",
        "--data-root",
        str(data_root),
        "--device",
        "cpu",
        "--no-progress",
    ]
    result = subprocess.run(
        command, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.count("| train ") == 1  # rank 0 prints the catalog, rank 1 does not
    sharded = EmbeddingStore(tmp_path / "two.zarr")
    for split in ("train", "val", "test"):
        a, b = single.get("demo-med", split), sharded.get("demo-med", split)
        assert a.embeddings.tobytes() == b.embeddings.tobytes()
        assert (a.labels == b.labels).all() and (a.indices == b.indices).all()
        assert a.attrs["chunk_sha256"] == b.attrs["chunk_sha256"]
    assert sharded.get("demo-med", "train").attrs["rows_per_chunk"] < 1200  # really 2+ chunks
    report = verify_store(tmp_path / "two.zarr")
    assert len(report) == 3 and report["problems"].to_list() == ["", "", ""]
    assert not any(p.name.startswith("progress") for p in (tmp_path / "two.zarr").rglob("*"))


def _losses_on_rank(rank: int, world: int, port: int, queue) -> None:
    import torch
    import torch.distributed as dist
    from lightly.loss import BarlowTwinsLoss, NTXentLoss, VICRegLoss

    from embedkit.losses.gram import GramBarlowTwinsLoss, GramVICRegLoss
    from embedkit.losses.ntxent import SyncFreeNTXentLoss
    from embedkit.methods.mocov3 import contrastive_loss

    def mocov3_by_direction(a, b):  # queries a, keys b: the first 12 rows view 0
        return contrastive_loss(a[:12], b[12:], 0.2) + contrastive_loss(a[12:], b[:12], 0.2)

    def mocov3_stacked(a, b):
        return contrastive_loss(torch.stack([a[:12], a[12:]]), torch.stack([b[12:], b[:12]]), 0.2)

    dist.init_process_group("gloo", f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    generator = torch.Generator().manual_seed(0)
    z_a = torch.randn(2 * 24, 200, dtype=torch.float64, generator=generator)
    z_b = 0.7 * z_a + 0.3 * torch.randn(2 * 24, 200, dtype=torch.float64, generator=generator)
    mine = slice(24 * rank, 24 * (rank + 1))
    out = {}
    for name, reference, ours in (
        (
            "barlowtwins",
            BarlowTwinsLoss(gather_distributed=True),
            GramBarlowTwinsLoss(gather_distributed=True),
        ),
        ("vicreg", VICRegLoss(gather_distributed=True), GramVICRegLoss(gather_distributed=True)),
        (
            "ntxent",
            NTXentLoss(0.2, gather_distributed=True),
            SyncFreeNTXentLoss(0.2, gather_distributed=True),
        ),
        ("mocov3", mocov3_by_direction, mocov3_stacked),  # keys gathered across ranks
    ):
        for label, loss in (("reference", reference), ("ours", ours)):
            a, b = z_a[mine].clone().requires_grad_(), z_b[mine].clone().requires_grad_()
            value = loss(a, b)
            grads = torch.autograd.grad(value, (a, b))
            out[name, label] = (value.item(), grads[0].tolist(), grads[1].tolist())
    queue.put((rank, out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_rewritten_losses_equal_lightlys_across_two_processes():
    """Under two gloo processes (each rank its half of the batch) the losses give lightly's
    values and gradients on every rank."""
    import socket

    import numpy as np
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    context = mp.get_context("spawn")
    queue = context.Queue()
    workers = [
        context.Process(target=_losses_on_rank, args=(rank, 2, port, queue)) for rank in (0, 1)
    ]
    for worker in workers:
        worker.start()
    results = dict(queue.get(timeout=120) for _ in workers)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    for rank in (0, 1):
        for name in ("barlowtwins", "vicreg", "ntxent", "mocov3"):
            expected, got = results[rank][name, "reference"], results[rank][name, "ours"]
            for e, g in zip(expected, got, strict=True):
                np.testing.assert_allclose(g, e, rtol=1e-9, atol=1e-14)
