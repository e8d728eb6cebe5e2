"""Batched inference of an encoder over uint8 images: what extraction and the monitor run.

Reading the next batch overlaps compute (a prefetch thread); on a GPU the batches are pinned
and copied asynchronously, the model runs in bf16 autocast with channels_last weights.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..augment import to_float
from ..backbones import Encoder

log = logging.getLogger(__name__)


class EncoderWithHead(nn.Module):
    """Backbone features followed by the head's output, in one row per image."""

    def __init__(self, encoder: Encoder, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head
        self.feature_dim = encoder.feature_dim
        with torch.no_grad():
            self.head_dim = int(head(torch.zeros(2, encoder.feature_dim)).shape[1])

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.encoder(images)
        return torch.cat([features, self.head(features)], dim=1)


# a CUDA graph pays for its capture (two warm-up passes) from this many batches on
GRAPH_MIN_BATCHES = 4


class GraphedForward:
    """``to_float`` and the encoder's forward pass for full uint8 batches, captured once as a
    CUDA graph: a replay launches the whole network at once, where eager mode dispatches one
    kernel at a time from Python (at 28 px a ResNet-50's forward is bound by those launches,
    not by the GPU, and they hold the host that the store's writes need).

    The output tensor is the graph's own and is overwritten by the next replay: copy it out
    (on the same stream) before calling again.
    """

    def __init__(self, encoder: nn.Module, batch: torch.Tensor, device: torch.device) -> None:
        # autocast's weight cache cannot live across a capture: off in warm-up and capture
        autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False)
        self.input = torch.empty(batch.shape, dtype=batch.dtype, device=device)
        self.input.copy_(batch)

        def forward() -> torch.Tensor:
            with autocast:
                return encoder(to_float(self.input).contiguous(memory_format=torch.channels_last))

        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm-up off the capture: cuDNN's choices, allocations
            for _ in range(2):
                forward()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.output = forward()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """The features of a uint8 ``(B, H, W, C)`` batch (pinned host memory or on the GPU)."""
        self.input.copy_(batch, non_blocking=True)
        self.graph.replay()
        return self.output


def prefetched_batches(images: np.ndarray, batch_size: int, pin: bool):
    """Yield ``(start, uint8 tensor)`` batches, reading the next one in a background thread
    while the caller computes on the current one; pinned for asynchronous copies to a GPU."""

    def load(start: int) -> torch.Tensor:
        batch = torch.from_numpy(np.array(images[start : start + batch_size]))
        return batch.pin_memory() if pin else batch

    starts = range(0, len(images), batch_size)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-read") as pool:
        pending = pool.submit(load, starts[0])
        for i, start in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, starts[i + 1])
            yield start, batch


@torch.inference_mode()
def encode(
    encoder: Encoder,
    images: np.ndarray,
    batch_size: int,
    device: torch.device,
    progress: bool = False,
    desc: str = "",
):
    """Yield ``(start, embeddings)`` for consecutive batches of uint8 ``(N, H, W, C)`` images.

    Reading overlaps compute (``prefetched_batches``); on a GPU the batches are pinned and
    copied asynchronously, run in bf16 autocast and channels_last (full batches replayed as
    one CUDA graph, ``GraphedForward``, when there are several), and each batch's features
    are copied back into pinned host memory without blocking: a batch is handed out only once
    the next one is queued on the GPU, so the caller's work on batch i (checks, writes,
    hashes) runs while the GPU computes batch i+1.
    """
    on_gpu = device.type == "cuda"
    encoder.eval().to(device)
    if on_gpu:  # weights in the layout of the inputs, so convolutions skip a conversion
        encoder.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu)
    bar = tqdm(
        total=len(images), desc=desc, unit="img", disable=None if progress else True, leave=False
    )
    ring: list[torch.Tensor] = []  # two pinned host buffers, alternating (GPU only)
    graphed = None  # the full batches' forward as one CUDA graph (GPU, several batches)
    pending = None
    for i, (start, batch) in enumerate(prefetched_batches(images, batch_size, pin=on_gpu)):
        full = len(batch) == batch_size
        if graphed is None and on_gpu and full and len(images) >= GRAPH_MIN_BATCHES * batch_size:
            try:
                graphed = GraphedForward(encoder, batch, device)
            except RuntimeError as error:  # an encoder that syncs or branches on data
                log.warning("the encoder runs eagerly: its CUDA graph capture failed (%s)", error)
                graphed = False
        if graphed and full:
            features = graphed(batch)  # the pinned batch goes straight into the graph's input
        else:
            batch = to_float(batch.to(device, non_blocking=True))
            with autocast:
                features = encoder(batch.contiguous(memory_format=torch.channels_last))
        if on_gpu:
            if not ring:
                shape = (batch_size, features.shape[1])
                ring = [torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in "ab"]
            host = ring[i % 2][: len(features)]
            host.copy_(features.float(), non_blocking=True)  # queued after the forward pass
            done = torch.cuda.Event()
            done.record()
            ready = (start, host, done)
        else:
            ready = (start, features.float().numpy(), None)
        if pending is not None:
            yield _handed_out(pending)
            bar.update(len(pending[1]))
        pending = ready
    if pending is not None:
        yield _handed_out(pending)
        bar.update(len(pending[1]))
    bar.close()


def _handed_out(pending) -> tuple[int, np.ndarray]:
    """A batch's start and features as a numpy array the caller owns (a pinned buffer is
    copied out, once its transfer is done, so that the ring can take the next batch)."""
    start, features, done = pending
    if done is None:
        return start, features
    done.synchronize()
    return start, features.numpy().copy()
