"""The methods beyond the paper (BYOL, NNCLR, SwAV, DCL, TiCo, MAE, MSN): where embedkit
composes or rewrites lightly's parts, the result equals lightly's definition; the registry-
wide tests (tests/pretrain) train, resume and embed every method."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from embedkit.backbones import create_encoder
from embedkit.errors import ConfigError
from embedkit.methods import METHODS, get_method, method_parameters

BEYOND = ["byol", "dcl", "mae", "msn", "nnclr", "swav", "tico"]


def test_the_registry_lists_every_method_with_documented_parameters():
    assert set(BEYOND) <= set(METHODS)
    for name in BEYOND:
        rows = method_parameters(name)
        missing = [r["parameter"] for r in rows if not r["description"]]
        assert not missing, (name, missing)
        assert "arXiv:" in importlib.import_module(METHODS[name].__module__).__doc__


@pytest.mark.filterwarnings("ignore:To copy construct from a tensor")  # lightly's DCLW
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("sigma", [0.0, 0.5])
def test_sync_free_dcl_equals_lightlys(dtype, sigma):
    """DCL and DCLW with the positives gathered and masked by -inf: lightly's value and
    gradients."""
    from lightly.loss import DCLLoss, DCLWLoss

    from embedkit.losses import SyncFreeDCLLoss

    generator = torch.Generator().manual_seed(3)
    z0 = torch.randn(10, 16, dtype=dtype, generator=generator)
    z1 = z0 + 0.7 * torch.randn(10, 16, dtype=dtype, generator=generator)
    reference = DCLWLoss(0.1, sigma) if sigma else DCLLoss(0.1)
    results = []
    for loss in (reference, SyncFreeDCLLoss(0.1, sigma)):
        a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
        value = loss(a, b)
        results.append((value.detach(), *torch.autograd.grad(value, (a, b))))
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    for expected, got in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=eps, atol=eps)
    assert torch.isfinite(results[1][0])


def test_host_pointer_nearest_neighbour_bank_equals_lightlys():
    """NNCLR's support set with the write position on the host: lightly's neighbours,
    queue contents and pointer over steps that wrap around."""
    from lightly.models.modules.nn_memory_bank import NNMemoryBankModule

    from embedkit.modules import HostPointerNNMemoryBank

    reference, ours = NNMemoryBankModule((10, 8)), HostPointerNNMemoryBank((10, 8))
    ours.bank.copy_(reference.bank)
    generator = torch.Generator().manual_seed(4)
    for step in range(5):
        z = torch.randn(4, 8, generator=generator)
        for update in (False, True):
            torch.testing.assert_close(ours(z, update=update), reference(z, update=update))
        torch.testing.assert_close(ours.bank, reference.bank)
        assert ours.position == int(reference.bank_ptr), step
    assert ours.position == 8  # 4, 8, wrap to 0, 4, 8


def test_token_mask_is_lightlys_with_the_noise_from_the_generator():
    from lightly.models.utils import random_token_mask

    from embedkit.methods._masking import token_mask

    for ratio in (0.75, 0.15):
        keep, masked = token_mask(
            6, 49, 1, ratio, torch.Generator().manual_seed(5), torch.device("cpu")
        )
        torch.manual_seed(5)  # lightly draws the same noise from the global generator
        their_keep, their_masked = random_token_mask((6, 50), mask_ratio=ratio)
        assert torch.equal(keep, their_keep) and torch.equal(masked, their_masked)
        assert (keep[:, 0] == 0).all() and keep.shape[1] == int(49 * (1 - ratio)) + 1


@pytest.mark.parametrize("name", ["mae", "msn"])
def test_the_masked_encoder_is_the_encoder_embed_runs(name):
    """The masked ViT shares the encoder's parameters: with every token kept it gives what
    ``embed`` stores (the encoder's pooled output), and training it moves the encoder."""
    torch.manual_seed(0)
    cls = get_method(name)
    encoder = create_encoder("vit_tiny", image_size=28).eval()
    method = cls(encoder, cls.Config(), 28, 2).eval()
    images = torch.rand(3, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(method.masked(encoder.standardise(images)), encoder(images))
    owned = {id(p) for p in method.parameters()}
    assert all(id(p) in owned for p in method.masked.vit.parameters())
    assert "masked" not in dict(method.named_children())  # not saved twice


def test_msn_learns_its_prototypes():
    """lightly's MSN example passes ``prototypes.data`` (no gradient); the paper learns
    them: here they get a gradient."""
    torch.manual_seed(0)
    cls = get_method("msn")
    config = cls.Config(hidden_dim=128, n_prototypes=32, n_focal=1)
    method = cls(create_encoder("vit_tiny", image_size=28), config, 28, 2)
    method.training_step(torch.rand(8, 1, 28, 28), None, torch.Generator()).backward()
    assert method.prototypes.weight.grad is not None
    assert method.prototypes.weight.grad.abs().sum() > 0


def test_swav_queue_starts_late_joins_when_full_and_prototypes_stay_normalised():
    torch.manual_seed(0)
    cls = get_method("swav")
    config = cls.Config(n_prototypes=16, n_local=0, queue_size=12, queue_start_epoch=1)
    method = cls(create_encoder("resnet18", image_size=28), config, 28, 2)
    images = torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    seen = []
    original = method.criterion.forward

    def spy(high, low, queue=None):
        seen.append(queue is not None)
        return original(high, low, queue)

    method.criterion.forward = spy
    for epoch in (0, 1, 1, 1):
        method.epoch = epoch
        method.training_step(images, None, torch.Generator().manual_seed(2)).backward()
        method.before_optimizer_step()
        frozen = method.prototypes.heads[0].weight.grad is None
        assert frozen is (epoch < config.freeze_prototypes_epochs)
        method.zero_grad()
    # filled from epoch 1 (8 rows, then 12 of 12): used from the third step of epoch 1
    assert seen == [False, False, False, True] and method.queue_filled == 12
    norms = method.prototypes.heads[0].weight.norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms))
    fresh = cls(create_encoder("resnet18", image_size=28), config, 28, 2)
    fresh.load_state_dict(method.state_dict())
    assert fresh.queue_filled == 12 and torch.equal(fresh.queue, method.queue)


def test_tico_covariance_survives_a_checkpoint():
    torch.manual_seed(0)
    cls = get_method("tico")
    config = cls.Config(hidden_dim=64)
    method = cls(create_encoder("resnet18", image_size=28), config, 28, 2)
    assert method.get_extra_state()["C"].numel() == 0  # before the first step: none yet
    method.training_step(torch.rand(8, 1, 28, 28), None, torch.Generator())
    fresh = cls(create_encoder("resnet18", image_size=28), config, 28, 2)
    fresh.load_state_dict(method.state_dict())
    torch.testing.assert_close(fresh.criterion.C, method.criterion.C)
    assert fresh.criterion.C.shape == (256, 256) and fresh.criterion.C.abs().sum() > 0


@pytest.mark.parametrize("name", ["mae", "msn"])
def test_masking_methods_refuse_a_resnet_before_anything_is_written(tmp_path, data_root, name):
    from embedkit.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        dataset="demo-texture", method=name, backbone="resnet18", epochs=1, device="cpu",
        data_root=str(data_root),
    )  # fmt: skip
    with pytest.raises(ConfigError, match=f"{name} masks patch tokens and needs a vision"):
        pretrain(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_pretraining_rows_keep_every_domain_and_class_share(data_root):
    from embedkit.data import load_split

    train = load_split("demo-med+demo-texture", "train", 28, data_root)
    rows = train.pretraining_rows(0.1, seed=3)
    assert np.array_equal(rows, train.pretraining_rows(0.1, seed=3))  # seeded
    assert not np.array_equal(rows, train.pretraining_rows(0.1, seed=4))
    assert len(rows) == int(len(train) * 0.1) and np.all(np.diff(rows) > 0)
    for domain in (0, 1):
        in_domain = train.domains == domain
        for label in np.unique(train.labels[in_domain, 0]):
            share = np.mean((train.domains[rows] == domain) & (train.labels[rows, 0] == label))
            full = np.mean(in_domain & (train.labels[:, 0] == label))
            assert share == pytest.approx(full, abs=2 / len(rows))
    assert np.array_equal(train.pretraining_rows(1.0, seed=0), np.arange(len(train)))
    subset = train.subset(rows)
    assert len(subset) == len(rows) and np.array_equal(subset.images, train.images[rows])


@pytest.mark.parametrize("fraction", [0.0, 1.5, -0.1])
def test_a_data_fraction_outside_0_1_is_refused(tmp_path, data_root, fraction):
    from embedkit.pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        dataset="demo-texture", epochs=1, device="cpu", data_root=str(data_root),
        data_fraction=fraction,
    )  # fmt: skip
    with pytest.raises(ConfigError, match="--data-fraction is a share of the training images"):
        pretrain(config, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_with_head_uses_the_hyperparameters_the_run_trained_with(tmp_path, data_root):
    """The ``small`` recipe widens VICReg's projector to 2048: the head rebuilt for
    ``embed --with-head`` is the trained one (it was built from the user's parameters
    alone, the paper's 8192); MAE trains no head and says so in one line."""
    from embedkit.errors import RunError
    from embedkit.pretrain import PretrainConfig, pretrain
    from embedkit.runs import load_head

    config = PretrainConfig(
        dataset="demo-texture", method="vicreg", recipe="small", epochs=1, batch_size=400,
        device="cpu", data_root=str(data_root), data_fraction=0.34,
    )  # fmt: skip
    run = pretrain(config, tmp_path / "vicreg", progress=False)
    recorded = json.loads((run / "config.json").read_text())["method_config"]
    assert recorded["projection_dim"] == 2048
    head = load_head(run, create_encoder("resnet18", str(run / "encoder.safetensors")))
    assert head(torch.rand(2, 512)).shape == (2, 2048)
    state = json.loads((run / "run.json").read_text())
    (run / "head.safetensors").unlink()
    (run / "run.json").write_text(json.dumps({**state, "head_file": None}))
    with pytest.raises(RunError, match="vicreg trains no projection head"):
        load_head(run, create_encoder("resnet18"))
