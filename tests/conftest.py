"""Shared fixtures: demo data in a temporary root, a tiny pretraining run, demo stores."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The suite runs on pytest-xdist workers (`-n auto` in pyproject.toml). Each worker gets an
# equal share of the cores for torch's intra-op threads: with two workers of two threads
# each on 2 cores the suite ran more than twice as slow as with one thread each (threads
# spinning on a busy core). Set here, before any test module imports torch, so that the
# processes tests start inherit it too.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    for _variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_variable, str(max(1, (os.cpu_count() or 1) // _WORKERS)))


def pytest_xdist_auto_num_workers(config) -> int:
    """`-n auto`: one worker per core, at most 4 (measured with 2). Each worker imports
    torch (~1 GB resident while a test trains) and builds the session fixtures again (demo
    data, a tiny run, a demo store, the quickstart), so more workers are not free."""
    return max(1, min(os.cpu_count() or 1, 4))


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory):
    """Keep checksum caches and default data roots of the tests out of the user's home."""
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    mp.delenv("EMBEDKIT_DATA", raising=False)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root where the demo family is generated from scratch at 28 px."""
    from embedkit.data import load_split

    root = tmp_path_factory.mktemp("data")
    for name in ("demo-med", "demo-natural", "demo-texture"):
        load_split(name, "train", 28, root)
    return root


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, data_root) -> Path:
    """A one-epoch SimCLR run on demo-texture (small batches: seconds on CPU)."""
    from embedkit.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        dataset="demo-texture",
        size=28,
        epochs=1,
        batch_size=64,
        device="cpu",
        data_root=str(data_root),
    )
    return pretrain(config, tmp_path_factory.mktemp("runs") / "simclr", progress=False)


@pytest.fixture(scope="session")
def demo_store(tmp_path_factory, data_root):
    """A store of the demo family (all splits) embedded by a random-init resnet18."""
    from embedkit.embed import EmbedConfig, embed

    config = EmbedConfig(
        dataset="demo", size=28, init="random", device="cpu", data_root=str(data_root)
    )
    return embed(config, tmp_path_factory.mktemp("stores") / "random.zarr", progress=False)


@pytest.fixture
def interrupt_after_first_epoch():
    """A context manager: inside it ``pretrain`` stops with KeyboardInterrupt right after the
    checkpoint of its first epoch, as a kill would."""
    import contextlib

    @contextlib.contextmanager
    def interrupting():
        import embedkit.pretrain.loop as loop

        real = loop.mark_progress

        def stop(output, epochs_done):
            real(output, epochs_done)
            if epochs_done == 1:
                raise KeyboardInterrupt

        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(loop, "mark_progress", stop)
            yield

    return interrupting
