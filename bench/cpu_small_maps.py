"""Training on an AVX2-only CPU: the small-map weight gradient (``embedkit.small_map_conv``).

Two parts, both in one process on whatever CPU runs it:

1. ``layers``: every distinct ``nn.Conv2d`` of ResNet-18 (28, 64 px) and ResNet-50 (28 px)
   whose output map is 4 x 4 or smaller, at batch 256: oneDNN's weight gradient
   (``aten.convolution_backward`` asked for the weight only), the same gradient as
   ``unfold`` + one matmul, and oneDNN's input gradient, best of 3 after a warm-up call.
   The switch point (``MAX_POSITIONS``) is read from this table.
2. ``step``: a forward, backward and SGD step of the encoder, as created (switched where
   ``unfold_pays()``) against the same network with every layer back on ``nn.Conv2d``,
   round by round alternately after one unmeasured round; prints each path's best round
   and the ratio, and how far the two paths' gradients differ after one step.

Run: python bench/cpu_small_maps.py [--sections layers,step] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.nn.functional as F
from torch import nn

from embedkit.backbones import create_encoder
from embedkit.small_map_conv import (
    SmallMapConv2d,
    unfold_pays,
    unfold_weight_grad,
    use_unfold_weight_grads,
)

BATCH = 256


def best_ms(fn, repeats: int = 3) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def small_layers() -> dict[tuple, list[str]]:
    seen: dict[tuple, list[str]] = {}
    for name, size in [("resnet18", 28), ("resnet18", 64), ("resnet50", 28)]:
        model = create_encoder(name, image_size=size).backbone

        def record(conv, inputs, out, where=f"{name}@{size}"):
            if out.shape[-1] * out.shape[-2] <= 16:
                key = (conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0])
                key += (conv.padding[0], inputs[0].shape[-1], out.shape[-1])
                seen.setdefault(key, []).append(where)

        for module in model.modules():
            if isinstance(module, nn.Conv2d):
                module.register_forward_hook(record)
        with torch.no_grad():
            model(torch.rand(2, 3, size, size))
    return seen


def layer_times(c_in, c_out, kernel, stride, pad, side) -> tuple[float, float, float]:
    """oneDNN's weight gradient, unfold + matmul's, oneDNN's input gradient (ms)."""
    x = torch.rand(BATCH, c_in, side, side).contiguous(memory_format=torch.channels_last)
    w = torch.rand(c_out, c_in, kernel, kernel).contiguous(memory_format=torch.channels_last)
    g = torch.rand_like(F.conv2d(x, w, stride=stride, padding=pad))
    geometry = ([stride] * 2, [pad] * 2, [1, 1], False, [0, 0], 1)

    def onednn(mask):
        return lambda: torch.ops.aten.convolution_backward(g, x, w, None, *geometry, mask)

    def unfold():
        return unfold_weight_grad(x, g, w.shape, (stride, stride), (pad, pad), (1, 1))

    return (
        best_ms(onednn([False, True, False])),
        best_ms(unfold),
        best_ms(onednn([True, False, False])),
    )


def layers() -> None:
    print(f"one layer, batch {BATCH}, channels_last, ms (best of 3)")
    print("in -> out  kernel stride  map     weight grad: oneDNN  unfold   input grad  in")
    for key, where in sorted(small_layers().items(), key=lambda item: -item[0][6]):
        c_in, c_out, kernel, stride, pad, side, out_side = key
        weight_onednn, weight_unfold, input_onednn = layer_times(*key[:6])
        print(
            f"{c_in:4d} -> {c_out:4d}  {kernel}x{kernel}  {stride}  {side}->{out_side}  "
            f"{weight_onednn:14.1f} {weight_unfold:7.1f} {input_onednn:11.1f}  "
            f"{', '.join(sorted(set(where)))}",
            flush=True,
        )


def plain_copy(model: nn.Module) -> nn.Module:
    plain = copy.deepcopy(model)
    for module in plain.modules():
        if type(module) is SmallMapConv2d:
            module.__class__ = nn.Conv2d
    return plain


def timed_rounds(paths, images, rounds: int, steps: int) -> dict[str, list[float]]:
    """Seconds per step of each path, round by round alternately, after one unmeasured."""
    optimizers = {label: torch.optim.SGD(m.parameters(), lr=1e-3) for label, m in paths.items()}
    times: dict[str, list[float]] = {label: [] for label in paths}
    for round_ in range(rounds + 1):
        for label, model in paths.items():
            start = time.perf_counter()
            for _ in range(steps):
                optimizers[label].zero_grad()
                model(images).square().mean().backward()
                optimizers[label].step()
            if round_:
                times[label].append((time.perf_counter() - start) / steps)
    return times


def worst_gradient_difference(paths, images) -> float:
    grads = []
    for model in paths.values():
        model.zero_grad()
        model(images).square().mean().backward()
        grads.append([p.grad.clone() for p in model.parameters()])
    return max(
        float((a - b).norm() / b.norm().clamp_min(1e-30)) for a, b in zip(*grads, strict=True)
    )


def step(rounds: int, steps: int) -> None:
    print(f"\nunfold_pays() = {unfold_pays()} ({torch.backends.cpu.get_cpu_capability()})")
    for name, size in [("resnet18", 28), ("resnet18", 64), ("resnet50", 28)]:
        torch.manual_seed(0)
        switched = create_encoder(name, image_size=size)
        use_unfold_weight_grads(switched)  # on any CPU, to measure it
        paths = {"switched": switched, "nn.Conv2d": plain_copy(switched)}
        images = torch.rand(BATCH, 3, size, size).contiguous(memory_format=torch.channels_last)
        worst = worst_gradient_difference(paths, images)
        times = timed_rounds(paths, images, rounds, steps)
        best = {label: min(values) for label, values in times.items()}
        per_round = [a / b for a, b in zip(times["nn.Conv2d"], times["switched"], strict=True)]
        print(
            f"{name} {size} px, batch {BATCH}: switched {BATCH / best['switched']:.0f} img/s, "
            f"nn.Conv2d {BATCH / best['nn.Conv2d']:.0f} img/s, "
            f"ratio {best['nn.Conv2d'] / best['switched']:.2f} x "
            f"(rounds {', '.join(f'{r:.2f}' for r in per_round)}); "
            f"worst relative gradient difference {worst:.1e}",
            flush=True,
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sections", default="layers,step")
    parser.add_argument("--threads", type=int, default=0, help="0: torch's default")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sections = args.sections.split(",")
    print(f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    if "layers" in sections:
        layers()
    if "step" in sections:
        step(args.rounds, args.steps)


if __name__ == "__main__":
    main()
