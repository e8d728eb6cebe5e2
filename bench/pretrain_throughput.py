"""Pretraining throughput of every method against a bare backbone, in one process (issue 3).

For each method, on one batch of real images (PneumoniaMNIST from --data-root when
present, else demo-med), at the same backbone, size, batch size and precision:

1. method: a full optimiser step of the method (batched on-device augmentation, encoder,
   heads, loss, backward, AdamW step, momentum update);
2. model: the method's own networks replayed call by call with the shapes the step gave
   them (backbone on every view, projection and prediction heads, and the momentum or
   teacher copies' forward passes without gradient), random inputs, a sum of the outputs as
   the loss, backward, and the same AdamW step over all the method's parameters;
3. bare: the backbone's forward and backward alone on tensors of exactly the shapes the
   method feeds it (two views for SimCLR, 2 global + 6 local crops for DINO...), a sum of
   the features as the loss, and the same optimiser step on the backbone.

method / model is what augmentation, losses, momentum updates and bookkeeping cost on top of
the network work the method cannot avoid (Barlow Twins' and VICReg's 8192-d projectors are
about a ResNet-50's FLOPs at 64 px): the goal on a GPU at 64 px, ResNet-50, batch 256 is
>= 0.85. method / bare is reported beside it. Images/s counts training images (not views).
The paths alternate round by round, after one unmeasured round, so drift on a noisy machine
hits all alike; the median and range of the per-round method / model ratio say how far the
noise moves it (on the H100 a path with the same work as its model read 0.874 over 3
rounds; single rounds of 10 steps ranged over 0.56-1.37 across the methods), and
``best /model`` sets each path's
fastest round against the other's (a hiccup only ever slows a round, as ``timeit`` notes).
All three use the loop's optimiser (``make_optimizer``: fused AdamW). ``syncs``
counts the operations in one method step that would make the host wait for a GPU
(``embedkit.host_syncs``; 0 is the goal, and it is measured on a CPU too); ``ops`` the
operations dispatched by one method step / one model step (views excluded): about the
kernels a GPU launches, which bound a step of small kernels whatever the card. On a GPU,
``gpu ms`` is the time the GPU spends in kernels and copies per step (torch.profiler, the
union of their intervals over 3 steps) and ``busy`` that time over the step's wall time: a
busy fraction well under 1 says the host (launches, Python) and not the card sets the pace.
Also on a GPU, the caching allocators' calls into CUDA during the timed rounds are printed
per path where there are any (``allocator_counts``): a device free, a retry or a pinned
block freed makes the host wait for the GPU, which ``syncs`` cannot see.
``--ablate all`` adds, to the same rounds, the method's step without its augmentation (the
views of a recorded step replayed), without its loss (a sum, as the networks' baseline),
without its momentum update, and without all three (``Ablation``): what each part costs in
place, in wall time, where a profiler's attribution moves with its own overhead; the step
without all three should then read about its networks' time. ``--compile-loss`` times the
method with its loss compiled (``PretrainMethod.compile_loss``: DINO's, MoCo v1/v2's) against
networks as written; ``--compile`` also compiles the backbone, on every path, as ``embedkit
pretrain --compile`` does.

CPU:  python bench/pretrain_throughput.py --backbone resnet18 --size 28 --batch-size 64
      (add --methods dino,mocov1 --ablate all for the parts' costs)
GPU:  python bench/pretrain_throughput.py --backbone resnet50 --size 64 --batch-size 256
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch
from _data import add_data_root, real_file


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


ALLOCATOR_COUNTS = {  # memory_stats / host_memory_stats key: what the bench prints
    "num_device_alloc": "cudaMalloc",
    "num_device_free": "cudaFree",
    "num_alloc_retries": "retries",
    "num_sync_all_streams": "stream syncs",
    "num_host_alloc": "pinned allocs",
    "num_host_free": "pinned frees",
}


def allocator_counts(device: torch.device) -> dict[str, int] | None:
    """The caching allocators' calls into CUDA so far (None off a GPU). A device free, a
    retry or a pinned block freed makes the host wait for the GPU, which ``HostSyncs`` cannot
    see: in a steady step these should not grow."""
    if device.type != "cuda":
        return None
    stats = dict(torch.cuda.memory_stats(device))
    host_stats = getattr(torch.cuda, "host_memory_stats", None)  # torch >= 2.6
    if host_stats is not None:
        stats.update(host_stats())
    return {key: int(stats.get(key, 0)) for key in ALLOCATOR_COUNTS}


def gpu_ms(step, device: torch.device, steps: int = 3) -> float | None:
    """Milliseconds per step during which the GPU runs a kernel or a copy (None off a GPU, or
    where the profiler cannot read the device)."""
    if device.type != "cuda":
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        spans = sorted(
            (e.time_range.start, e.time_range.end)
            for e in prof.events()
            if e.device_type == DeviceType.CUDA
        )
    except Exception as error:  # noqa: BLE001 (a profiler that cannot start: no column)
        print(f"profiler unavailable: {error}")
        return None
    busy, end = 0.0, float("-inf")
    for start, stop in spans:  # the union of the intervals, in microseconds
        if stop > end:
            busy += stop - max(start, end)
            end = stop
    return busy / 1000 / steps


ABLATIONS = ("augment", "loss", "momentum")


def _tensors(value):
    """The tensors in a criterion's arguments (tensors, or lists and tuples of them)."""
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)


class Ablation:
    """A method's step with some of its own parts taken out, to time what each part costs in
    place: a profiler's attribution moves with its own overhead, the wall time of the same
    step without the part does not. The parts:

    - ``augment``: the views of one recorded step replayed, call by call, instead of drawn and
      augmented (every ``augment_views`` that embedkit's modules call);
    - ``loss``: the method's ``criterion`` replaced by the sum of its inputs that carry a
      gradient, as the networks' baseline does (the loss's own updates go with it: DINO's
      centre, MoCo's memory bank); methods whose loss is not a ``criterion`` module keep it;
    - ``momentum``: no ``after_step`` (the momentum branch's moving average).

    ``parts`` are those of ``wanted`` that the method has.
    """

    def __init__(self, method, step, wanted) -> None:
        from embedkit import augment
        from embedkit.methods.base import PretrainMethod

        self.method, self.step, self.augment_views = method, step, augment.augment_views
        self.modules = [  # every module that looked ``augment_views`` up by name
            module
            for name, module in sys.modules.items()
            if name.startswith("embedkit.")
            and getattr(module, "augment_views", None) is augment.augment_views
        ]
        has = {
            "augment": True,
            "loss": isinstance(getattr(method, "criterion", None), torch.nn.Module),
            "momentum": type(method).after_step is not PretrainMethod.after_step,
        }
        self.parts = tuple(part for part in wanted if has[part])
        self.views: list[torch.Tensor] = []

    def _patch(self, function) -> None:
        for module in self.modules:
            module.augment_views = function

    def record(self) -> None:
        """Run one whole step, keeping the views that each augmentation call returned."""

        def recording(*args, **kwargs):
            self.views.append(self.augment_views(*args, **kwargs))
            return self.views[-1]

        self._patch(recording)
        try:
            self.step()
        finally:
            self._patch(self.augment_views)

    def __call__(self) -> None:
        """One step without ``parts``."""
        method = self.method
        if "augment" in self.parts:
            replay = iter(self.views)
            self._patch(lambda *args, **kwargs: next(replay))
        if "loss" in self.parts:  # an instance attribute, found before the class's forward
            method.criterion.forward = lambda *args, **kwargs: sum(
                t.float().sum() for t in _tensors(args) if t.requires_grad
            )
        if "momentum" in self.parts:
            method.after_step = lambda progress: None
        try:
            self.step()
        finally:
            self._patch(self.augment_views)
            method.__dict__.pop("after_step", None)
            if "loss" in self.parts:
                method.criterion.__dict__.pop("forward", None)


def ablated_steps(method, step, wanted) -> list[tuple[str, Ablation]]:
    """``(label, step)`` for each part of ``wanted`` the method has taken out alone
    (``-augment``...), then all of them at once (``-all``, when more than one), after one
    whole step that records the views to replay."""
    recorder = Ablation(method, step, wanted)
    recorder.record()
    variants = [(part,) for part in recorder.parts]
    if len(recorder.parts) > 1:
        variants.append(recorder.parts)
    steps = []
    for parts in variants:
        ablation = Ablation(method, step, parts)
        ablation.views = recorder.views
        steps.append((f"-{parts[0]}" if len(parts) == 1 else "-all", ablation))
    return steps


def host_profile(method_step, model_step, device: torch.device, rows: int, steps: int = 3):
    """Where the method's step spends time that its networks' step does not: per op and CUDA
    runtime call, the method's self CPU time minus the model's, per step; on a GPU the same
    for the device time of each kernel and copy; then the method step's costliest Python
    functions (cProfile). Self CPU time includes what a call waits for (a full launch
    queue, a synchronising ``cudaFree``)."""
    import cProfile
    import pstats

    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    per_op = {}
    for label, step in (("method", method_step), ("model", model_step)):
        with profile(activities=activities) as prof:
            for _ in range(steps):
                step()
            _sync(device)
        per_op[label] = {
            e.key: (
                e.count / steps,
                e.self_cpu_time_total / steps / 1000,
                e.self_device_time_total / steps / 1000,
            )
            for e in prof.key_averages()
        }
    method, model = per_op["method"], per_op["model"]
    zero = (0.0, 0.0, 0.0)
    for column, what in ((1, "self CPU"), (2, "GPU")):
        total = {label: sum(v[column] for v in ops.values()) for label, ops in per_op.items()}
        if not total["method"]:
            continue  # no device time off a GPU
        print(
            f"  {what} ms per step: method {total['method']:.2f}, model {total['model']:.2f}; "
            f"the largest differences (calls per step, method vs model):"
        )
        differences = sorted(
            (method.get(k, zero)[column] - model.get(k, zero)[column], k) for k in {*method, *model}
        )
        for ms, key in differences[::-1][:rows]:
            calls = f"{method.get(key, zero)[0]:.0f} vs {model.get(key, zero)[0]:.0f}"
            print(f"    {ms:+8.3f} ms  {key[:90]} ({calls})")
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(steps):
        method_step()
    _sync(device)
    profiler.disable()
    print(f"  the method's step under cProfile ({steps} steps), own time:")
    pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--size", type=int, default=28)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds, after one unmeasured")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--methods", default="all")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the backbone (all paths) and the method's loss, as `embedkit "
        "pretrain --compile` does",
    )
    parser.add_argument(
        "--compile-loss",
        action="store_true",
        help="torch.compile the method's loss alone (PretrainMethod.compile_loss: DINO's, "
        "MoCo v1/v2's), networks as written",
    )
    parser.add_argument(
        "--host-profile",
        type=int,
        default=0,
        metavar="N",
        help="per method, the N largest host-time differences between the method's step and "
        "its networks' (ops and CUDA runtime calls), and its N costliest Python functions",
    )
    parser.add_argument(
        "--ablate",
        default="",
        metavar="PARTS",
        help="also time the method's step without each of these parts (comma-separated: "
        f"{', '.join(ABLATIONS)}, or 'all'), then without all of them, in the same rounds",
    )
    add_data_root(parser)
    args = parser.parse_args()
    args.ablate = ABLATIONS if args.ablate == "all" else tuple(filter(None, args.ablate.split(",")))
    if unknown := set(args.ablate) - set(ABLATIONS):
        choices = ", ".join(ABLATIONS)
        parser.error(f"--ablate: unknown {', '.join(sorted(unknown))}; use all or {choices}")
    from embedkit.pretrain.engine import c_compiler

    if (args.compile or args.compile_loss) and not c_compiler():
        parser.error("--compile and --compile-loss need a C/C++ compiler (gcc, clang, $CC)")

    from embedkit.augment import to_float
    from embedkit.data import load_split
    from embedkit.methods import METHODS
    from embedkit.utils import resolve_device

    device = resolve_device(args.device)
    if real_file(args.data_root, f"pneumoniamnist_{args.size}.npz"):
        split = load_split("pneumoniamnist", "train", args.size, args.data_root)
    else:
        import tempfile

        split = load_split("demo-med", "train", args.size, tempfile.mkdtemp())
    rows = np.arange(args.batch_size) % len(split)
    images = to_float(torch.from_numpy(np.array(split.images[rows])).to(device))
    images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.from_numpy(split.labels[rows]).to(device)
    autocast = torch.autocast(device.type, torch.bfloat16, enabled=device.type == "cuda")
    names = sorted(METHODS) if args.methods == "all" else args.methods.split(",")
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"device {device} ({card}), {args.backbone}, {args.size} px, batch {args.batch_size}, "
        f"{split.dataset}"
    )
    print(
        f"{'method':<12} {'method img/s':>13} {'model img/s':>12} {'bare img/s':>11} "
        f"{'/model':>7} {'/bare':>6} {'rounds: median (min-max) /model':>32} "
        f"{'best /model':>11} {'syncs':>5} "
        f"{'ops':>11}  views fed"
    )
    n_classes = split.labels.shape[1] if split.labels.shape[1] > 1 else int(split.labels.max()) + 1
    busy_rows, ablation_rows = [], []
    for name in names:
        rates, shapes, syncs, busy = measure(
            METHODS[name], args, images, labels, n_classes, autocast, device
        )
        if busy:
            busy_rows.append((name, rates, busy))
        if args.ablate:
            ablation_rows.append((name, rates))
        fed = " + ".join(f"{s[0]}x{s[-1]}px" for s in shapes)
        low, mid, high = rates["spread"]
        if syncs.count:
            print(syncs.summary())
        print(
            f"{name:<12} {rates['method']:>13.1f} {rates['model']:>12.1f} {rates['bare']:>11.1f} "
            f"{rates['method'] / rates['model']:>7.3f} {rates['method'] / rates['bare']:>6.3f} "
            f"{mid:>19.3f} ({low:.3f}-{high:.3f}) {rates['best']:>11.3f} "
            f"{syncs.count:>5} {syncs.launches:>5}/{syncs.model_launches:<5}  {fed}",
            flush=True,
        )
    if ablation_rows:
        print_ablations(ablation_rows, args.batch_size)
    if busy_rows:
        print(
            f"{'method':<12} {'ms/step':>8} {'gpu ms':>7} {'busy':>5} | model {'ms/step':>8} "
            f"{'gpu ms':>7} {'busy':>5} | bare {'ms/step':>8} {'gpu ms':>7} {'busy':>5}"
        )
        for name, rates, busy in busy_rows:
            cells = []
            for path in ("method", "model", "bare"):
                wall = args.batch_size / rates[path] * 1000
                cells.append(f"{wall:>8.2f} {busy[path]:>7.2f} {busy[path] / wall:>5.2f}")
            print(f"{name:<12} {cells[0]} |       {cells[1]} |      {cells[2]}", flush=True)


def print_ablations(rows, batch_size: int) -> None:
    """ms per step of each method's step with parts taken out (see ``Ablation``), what each
    part costs (the whole step's time minus the step's without it), and its networks'."""
    print(
        "ablations, ms per step (in brackets: the whole step minus this one, what the part "
        "costs in place):"
    )
    for name, rates in rows:
        labels = ["method", "model", *(label for label in rates if label.startswith("-"))]
        ms = {label: batch_size / rates[label] * 1000 for label in labels}
        parts = [
            f"{label} {ms[label]:.2f} ({ms['method'] - ms[label]:+.2f})" for label in labels[2:]
        ]
        print(
            f"  {name:<12} method {ms['method']:.2f} | {' | '.join(parts) or 'no parts apply'} "
            f"| model {ms['model']:.2f}",
            flush=True,
        )


def measure(cls, args, images, labels, n_classes, autocast, device):
    """Images/s of the method's step and of the bare backbone on the same view shapes."""
    from embedkit.backbones import create_encoder
    from embedkit.host_syncs import HostSyncs
    from embedkit.pretrain.engine import make_optimizer

    torch.manual_seed(0)
    encoder = create_encoder(args.backbone, image_size=args.size)
    if args.compile:  # the loop's --compile: fewer, fused kernels in the backbone
        encoder.backbone.compile()
    method = cls(encoder, cls.Config(), args.size, n_classes).to(device)
    method = method.to(memory_format=torch.channels_last).train()
    if args.compile or args.compile_loss:
        method.compile_loss()
    optimizer = make_optimizer(method.parameters(), 1e-4, 0.05, device)
    generator = torch.Generator().manual_seed(0)  # augmentation draws happen on the host
    shapes: list[torch.Size] = []

    def method_step() -> None:
        with autocast:
            loss = method.training_step(images, labels, generator)
        loss.backward()
        method.before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(0.5)

    hook = encoder.register_forward_pre_hook(lambda module, inputs: shapes.append(inputs[0].shape))
    # MAE and MSN run the encoder's ViT on kept tokens only (``method.masked``, sharing its
    # parameters): their calls are recorded with the tokens kept, and replayed with them
    masked = method.__dict__.get("masked")
    masked_calls: list[tuple[torch.Size, torch.Tensor, bool]] = []
    if masked is not None:
        encode = masked.encode

        def recording_encode(pixels, idx_keep=None, **kwargs):
            masked_calls.append((pixels.shape, idx_keep, torch.is_grad_enabled()))
            return encode(pixels, idx_keep=idx_keep, **kwargs)

        masked.encode = recording_encode
    calls: list[tuple[torch.nn.Module, torch.Size, bool]] = []  # the networks' calls, in order
    networks = [m for _, m in method.named_children() if any(True for _ in m.parameters())]
    recorders = [
        m.register_forward_pre_hook(
            lambda module, inputs: calls.append((module, inputs[0].shape, torch.is_grad_enabled()))
        )
        for m in networks
    ]
    method_step()
    hook.remove()
    for recorder in recorders:
        recorder.remove()
    if masked is not None:
        del masked.encode  # the class's method again
        shapes += [shape for shape, _, _ in masked_calls]
    model_inputs = []
    for module, shape, grad in calls:
        x = torch.rand(shape, device=device)
        if x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        elif grad:
            x.requires_grad_(True)  # a head's input carries a gradient in the real chain
        model_inputs.append((module, x, grad))

    masked_inputs = [
        (torch.rand(shape, device=device), keep, grad) for shape, keep, grad in masked_calls
    ]

    def model_step() -> None:
        losses = []
        with autocast:
            for module, x, grad in model_inputs:
                with torch.set_grad_enabled(grad):
                    out = module(x)
                if grad:
                    losses.append(out.float().sum())
            for x, keep, grad in masked_inputs:
                with torch.set_grad_enabled(grad):
                    out = masked.encode(x, idx_keep=keep)
                if grad:
                    losses.append(out.float().sum())
        sum(losses).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    views = [
        torch.rand(s, device=device).contiguous(memory_format=torch.channels_last)
        for s in shapes[: len(shapes) - len(masked_calls)]
    ]
    bare_optimizer = make_optimizer(encoder.parameters(), 1e-4, 0.05, device)

    def bare_step() -> None:
        with autocast:
            loss = sum(encoder(v).float().sum() for v in views)
            loss = loss + sum(
                masked.encode(x, idx_keep=keep).float().sum() for x, keep, _ in masked_inputs
            )
        loss.backward()
        bare_optimizer.step()
        bare_optimizer.zero_grad(set_to_none=True)

    bare_step()
    model_step()
    with HostSyncs() as syncs:  # what would make the host wait for a GPU, on any device
        method_step()
    with HostSyncs() as model_syncs:
        model_step()
    syncs.model_launches = model_syncs.launches
    paths = (("method", method_step), ("model", model_step), ("bare", bare_step))
    if args.ablate:
        paths += tuple(ablated_steps(method, method_step, args.ablate))
    for _, step in paths:  # one unmeasured round: clocks, caches and allocator settle
        for _ in range(args.steps):
            step()
    rounds: list[dict[str, float]] = []  # seconds per path, round by round
    allocations = {label: dict.fromkeys(ALLOCATOR_COUNTS, 0) for label, _ in paths}
    for _ in range(args.rounds):
        rounds.append({})
        for label, step in paths:
            before = allocator_counts(device)
            _sync(device)
            start = time.perf_counter()
            for _ in range(args.steps):
                step()
            _sync(device)
            rounds[-1][label] = time.perf_counter() - start
            if before is not None:
                for key, count in allocator_counts(device).items():
                    allocations[label][key] += count - before[key]
    n = args.batch_size * args.steps * args.rounds
    rates = {label: n / sum(r[label] for r in rounds) for label, _ in paths}
    # the per-round ratio method / model: its median and range say how far noise moves it
    per_round = sorted(r["model"] / r["method"] for r in rounds)
    rates["spread"] = (per_round[0], float(np.median(per_round)), per_round[-1])
    # each path's fastest round, as timeit advises under noise: hiccups only slow a round
    rates["best"] = min(r["model"] for r in rounds) / min(r["method"] for r in rounds)
    if device.type == "cuda":  # calls into CUDA during the timed rounds, per path
        grown = {label: c for label, c in allocations.items() if any(c.values())}
        for label, counts in grown.items():
            calls = ", ".join(f"{ALLOCATOR_COUNTS[k]} {n}" for k, n in counts.items() if n)
            print(f"  {cls.__name__} {label}: allocator calls into CUDA in timed rounds: {calls}")
        if not grown:
            print(f"  {cls.__name__}: no allocator calls into CUDA in timed rounds")
    if args.host_profile:
        print(f"{cls.__name__}:")
        host_profile(method_step, model_step, device, args.host_profile)
    busy = {"method": gpu_ms(method_step, device), "model": gpu_ms(model_step, device)}
    busy["bare"] = gpu_ms(bare_step, device)
    if any(ms is None for ms in busy.values()):
        busy = None
    return rates, shapes, syncs, busy


if __name__ == "__main__":
    main()
