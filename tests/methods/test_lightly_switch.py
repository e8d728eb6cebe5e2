"""Every method whose loss, queue or momentum update embedkit rewrites can run lightly's own
parts instead (``--param lightly_losses=true``), and the two give the same step."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from embedkit.backbones import create_encoder
from embedkit.methods import METHODS, get_method, method_config
from embedkit.methods.base import RewrittenLossConfig

SWITCHED = sorted(n for n, cls in METHODS.items() if issubclass(cls.Config, RewrittenLossConfig))
HALF = {"momentum": 0.5, "momentum_end": 0.5}  # averages that move visibly in one step
SMALL = {
    "dino": {"output_dim": 1024, "hidden_dim": 256, "n_local": 2, **HALF},
    "mocov3": {"hidden_dim": 256, **HALF},
    "barlowtwins": {"hidden_dim": 256, "projection_dim": 512},  # N < D: the Gram route
    "vicreg": {"hidden_dim": 256, "projection_dim": 512},
    "mocov1": {"queue_size": 64, "momentum": 0.5},
    "mocov2": {"queue_size": 64, "momentum": 0.5},
    "nnclr": {"hidden_dim": 256, "prediction_hidden_dim": 256, "queue_size": 24},
}


def test_the_methods_with_rewritten_parts():
    assert SWITCHED == [
        "barlowtwins",
        "dcl",
        "dino",
        "mocov1",
        "mocov2",
        "mocov3",
        "nnclr",
        "simclr",
        "vicreg",
    ]


def _step(name: str, lightly: bool):
    torch.manual_seed(0)
    cls = get_method(name)
    params = {**SMALL.get(name, {}), "lightly_losses": lightly}
    method = cls(create_encoder("resnet18", image_size=28), method_config(cls, params), 28, 3)
    images = torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    labels = torch.zeros(16, 1, dtype=torch.long)
    loss = method.training_step(images, labels, torch.Generator().manual_seed(2))
    loss.backward()
    # an SGD step, so the moving average has something to follow; scaled by the largest
    # gradient (Barlow Twins' reach thousands), not per tensor, which would blow up the
    # rounding noise of gradients that are zero in exact arithmetic
    grads = [p.grad for p in method.parameters() if p.grad is not None]
    scale = 0.01 / max(g.norm() for g in grads)
    with torch.no_grad():
        for parameter in method.parameters():
            if parameter.grad is not None:
                parameter -= scale * parameter.grad
    method.after_step(0.5)
    return method, loss


@pytest.mark.parametrize("name", SWITCHED)
def test_lightlys_parts_give_the_rewrites_step(name):
    ours, our_loss = _step(name, lightly=False)
    theirs, their_loss = _step(name, lightly=True)
    criterion = getattr(theirs, "criterion", None)
    if criterion is not None:  # lightly's own class, not a subclass of it
        assert type(criterion).__module__.startswith("lightly.loss"), type(criterion)
        assert type(ours.criterion).__module__.startswith("embedkit.losses")
    assert their_loss.item() == pytest.approx(our_loss.item(), rel=1e-5, abs=1e-6)
    for (key, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters(), strict=True):
        if a.grad is not None:  # float rounding apart, by norm (entries near 0 are noise)
            assert (a.grad - b.grad).norm() <= 1e-4 * b.grad.norm() + 1e-5, key
    states = zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True)
    for (key, a), (_, b) in states:
        if torch.is_tensor(a) and a.is_floating_point():  # the moving averages, queue, centre
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.parametrize("name", ["mocov1", "nnclr"])
def test_lightlys_queue_saves_and_restores_like_the_rewrite(name):
    ours, _ = _step(name, lightly=False)
    theirs, _ = _step(name, lightly=True)
    state, their_state = ours.get_extra_state(), theirs.get_extra_state()
    assert int(state["ptr"][0]) == int(their_state["ptr"][0]) == 16  # one batch queued
    torch.testing.assert_close(state["bank"], their_state["bank"])
    fresh, _ = _step(name, lightly=True)
    fresh.set_extra_state(state)
    bank = fresh.support_set if name == "nnclr" else fresh.criterion.memory_bank
    assert int(bank.bank_ptr) == 16
    torch.testing.assert_close(bank.bank, state["bank"].to(torch.float32))


def test_the_switch_is_a_documented_parameter():
    from embedkit.methods import method_parameters

    rows = {r["parameter"]: r for r in method_parameters("simclr")}
    assert rows["lightly_losses"]["default"] == "False"
    assert "lightly's own loss" in rows["lightly_losses"]["description"]
    from embedkit.cli.output import parse_method_params

    given = parse_method_params(["lightly_losses=true"])  # as --param writes it
    config = method_config(get_method("simclr"), given)
    assert dataclasses.asdict(config)["lightly_losses"] is True
