"""Faster convolution weight gradients on AVX2-only CPUs where the map has shrunk to 2 x 2.

oneDNN 3.12 (inside torch 2.14) computes a convolution's weight gradient with brgemm
kernels on AVX-512 CPUs, but on AVX2-only ones (many laptops and cloud VMs) it falls back to
a generic gemm that is slow where the output map is tiny. ResNets end at 2 x 2 and 1 x 1
pixels at 28 px and at 2 x 2 at 64 px; there, one 512 -> 512 3 x 3 layer at batch 256 spends
107 ms on its weight gradient against 16.5 ms for the same sum written as one ``unfold`` and
one matrix product. At 2 x 2 and below the matrix product wins on every 3 x 3 layer of
ResNet-18 / ResNet-50 and on most 1 x 1 ones; at 4 x 4 oneDNN mostly does
(``bench/cpu_small_maps.py``, BENCHMARKS.md). A ResNet-18 training step at 28 px on such a
CPU runs 1.7-1.9 x faster with those layers switched.

``use_unfold_weight_grads`` switches the ``nn.Conv2d`` layers of a model in place. The
forward pass and the input's gradient stay oneDNN's; only the weight's (and bias's) gradient
is computed here, and only on the CPU, in float32 without autocast, outside
``torch.compile``, with a 2 x 2 or smaller output. Everything else, the GPU included, takes
``nn.Conv2d``'s own path. A whole ResNet's gradients agree with oneDNN's to 5e-7 relative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# the largest output map (positions) whose weight gradient goes through unfold + matmul
MAX_POSITIONS = 4


def unfold_pays() -> bool:
    """Whether this CPU is one where oneDNN's small-map weight gradient is the slow one."""
    return torch.backends.cpu.get_cpu_capability() == "AVX2"


def unfold_weight_grad(x, grad, weight_shape, stride, padding, dilation) -> torch.Tensor:
    """The gradient of ``F.conv2d(x, weight, ...)`` (groups 1) for ``weight``, given the
    output's gradient ``grad``, as one ``unfold`` of ``x`` and one matrix product."""
    columns = F.unfold(x, weight_shape[2:], dilation, padding, stride)  # (N, C k k, L)
    out_channels = weight_shape[0]
    per_position = grad.reshape(grad.shape[0], out_channels, -1)  # (N, out, L)
    grad_weight = per_position.transpose(0, 1).reshape(out_channels, -1) @ (
        columns.transpose(0, 1).reshape(columns.shape[1], -1).t()
    )
    return grad_weight.view(weight_shape)


class _UnfoldWeightGrad(torch.autograd.Function):
    """``F.conv2d`` (groups 1, zero padding) whose weight gradient is unfold + one matmul."""

    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation):
        ctx.save_for_backward(x, weight)
        ctx.geometry = (stride, padding, dilation)
        return F.conv2d(x, weight, bias, stride, padding, dilation)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        stride, padding, dilation = ctx.geometry
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        grad_x = grad_weight = grad_bias = None
        if need_x:
            only_input = [True, False, False]
            grad_x = torch.ops.aten.convolution_backward(
                grad, x, weight, None, stride, padding, dilation, False, [0, 0], 1, only_input
            )[0]
        if need_weight:
            grad_weight = unfold_weight_grad(x, grad, weight.shape, stride, padding, dilation)
        if need_bias:
            grad_bias = grad.sum((0, 2, 3))
        return grad_x, grad_weight, grad_bias, None, None, None


def _output_positions(conv: nn.Conv2d, x: torch.Tensor) -> int:
    positions = 1
    for side, kernel, stride, pad, dilation in zip(
        x.shape[-2:], conv.kernel_size, conv.stride, conv.padding, conv.dilation, strict=True
    ):
        positions *= (side + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1
    return positions


class SmallMapConv2d(nn.Conv2d):
    """``nn.Conv2d`` that takes ``_UnfoldWeightGrad`` where it pays (see module docstring)."""

    def _conv_forward(self, input, weight, bias):
        if (
            input.is_cpu
            and input.dtype == weight.dtype == torch.float32
            and weight.requires_grad
            and torch.is_grad_enabled()
            and not torch.is_autocast_enabled("cpu")
            and not torch.compiler.is_compiling()
            and _output_positions(self, input) <= MAX_POSITIONS
        ):
            return _UnfoldWeightGrad.apply(
                input, weight, bias, self.stride, self.padding, self.dilation
            )
        return super()._conv_forward(input, weight, bias)


def use_unfold_weight_grads(model: nn.Module) -> int:
    """Switch ``model``'s plain zero-padded, ungrouped ``nn.Conv2d`` layers to
    ``SmallMapConv2d`` in place (parameters and state dict unchanged); returns how many."""
    switched = 0
    for module in model.modules():
        if (
            type(module) is nn.Conv2d
            and module.groups == 1
            and module.padding_mode == "zeros"
            and not isinstance(module.padding, str)
        ):
            module.__class__ = SmallMapConv2d
            switched += 1
    return switched
