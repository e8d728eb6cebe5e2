"""The unfold weight gradient for small maps gives oneDNN's gradients, and only where it pays."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import embedkit.backbones as backbones
from embedkit.backbones import create_encoder
from embedkit.small_map_conv import SmallMapConv2d, use_unfold_weight_grads

UNFOLD = "_UnfoldWeightGradBackward"


def _pair(**conv_args):
    torch.manual_seed(0)
    plain = nn.Conv2d(**conv_args)
    switched = copy.deepcopy(plain)
    assert use_unfold_weight_grads(switched) == 1
    return plain, switched


def _grads(conv, x):
    x = x.detach().clone().requires_grad_(x.requires_grad)
    out = conv(x)
    (out * torch.linspace(-1, 1, out.numel()).view_as(out)).sum().backward()
    grads = [conv.weight.grad, x.grad, None if conv.bias is None else conv.bias.grad]
    return out, grads


# ResNet shapes at 28 and 64 px (2 x 2 and 1 x 1 outputs), plus bias and dilation
@pytest.mark.parametrize(
    "conv_args, side",
    [
        (dict(in_channels=16, out_channels=24, kernel_size=3, padding=1, bias=False), 1),
        (dict(in_channels=16, out_channels=24, kernel_size=3, padding=1, bias=False), 2),
        (dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1), 4),
        (dict(in_channels=8, out_channels=16, kernel_size=3, stride=2, padding=1), 3),
        (dict(in_channels=16, out_channels=32, kernel_size=1, stride=2, bias=False), 2),
        (dict(in_channels=8, out_channels=8, kernel_size=3, padding=2, dilation=2), 2),
        (dict(in_channels=8, out_channels=4, kernel_size=(1, 3), padding=(0, 1)), 2),
    ],
)
@pytest.mark.parametrize("input_grad", [True, False])
def test_small_maps_take_the_unfold_gradient_and_match_onednn(conv_args, side, input_grad):
    plain, switched = _pair(**conv_args)
    x = torch.randn(5, conv_args["in_channels"], side, side).requires_grad_(input_grad)
    expected_out, expected = _grads(plain, x)
    out, got = _grads(switched, x)
    assert out.grad_fn.name() == UNFOLD and out.shape[-2] * out.shape[-1] <= 4
    torch.testing.assert_close(out, expected_out, rtol=0, atol=0)  # oneDNN's forward
    assert (got[1] is not None) == input_grad
    for g, e in zip(got, expected, strict=True):
        assert (g is None) == (e is None)
        if e is not None:
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


def test_larger_maps_frozen_weights_no_grad_and_autocast_keep_the_plain_path():
    plain, switched = _pair(in_channels=4, out_channels=4, kernel_size=3, padding=1)
    assert switched(torch.randn(2, 4, 3, 3)).grad_fn.name() == "ConvolutionBackward0"  # 3 x 3
    assert switched(torch.randn(2, 4, 4, 2)).grad_fn.name() == "ConvolutionBackward0"  # 8
    with torch.no_grad():
        assert switched(torch.randn(2, 4, 2, 2)).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert switched(torch.randn(2, 4, 2, 2)).grad_fn.name() != UNFOLD
    on_meta = copy.deepcopy(switched).to("meta")  # another device than the CPU, as a GPU
    assert on_meta(torch.randn(2, 4, 2, 2, device="meta")).grad_fn.name() == "ConvolutionBackward0"
    switched.weight.requires_grad_(False)  # the bias still learns
    assert switched(torch.randn(2, 4, 2, 2)).grad_fn.name() == "ConvolutionBackward0"
    # grouped, depthwise and non-zero padding modes are left as they are
    for conv in (
        nn.Conv2d(4, 4, 3, groups=2),
        nn.Conv2d(4, 4, 3, padding=1, padding_mode="reflect"),
        nn.Conv2d(4, 4, 3, padding="same"),
    ):
        assert use_unfold_weight_grads(conv) == 0 and type(conv) is nn.Conv2d


def test_a_switched_resnet_keeps_its_state_and_gradients(monkeypatch):
    monkeypatch.setattr(backbones, "unfold_pays", lambda: False)
    plain = create_encoder("resnet18", image_size=28)
    assert not any(isinstance(m, SmallMapConv2d) for m in plain.modules())
    monkeypatch.setattr(backbones, "unfold_pays", lambda: True)
    torch.manual_seed(0)
    switched = create_encoder("resnet18", image_size=28)
    assert sum(isinstance(m, SmallMapConv2d) for m in switched.modules()) == 20
    switched.load_state_dict(plain.state_dict())
    assert list(switched.state_dict()) == list(plain.state_dict())
    images = torch.rand(6, 3, 28, 28)
    for encoder in (plain, switched):
        F.normalize(encoder(images), dim=1)[:, :8].sum().backward()
    for (name, p), q in zip(plain.named_parameters(), switched.parameters(), strict=True):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
