"""Shared fixtures: demo data in a temporary root, a tiny pretraining run, demo stores."""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


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
