"""Batched inference of an encoder over uint8 images: what extraction and the monitor run.

Reading the next batch overlaps compute (a prefetch thread); on a GPU the batches are read into
a ring of pinned buffers and copied asynchronously, the model runs in bf16 autocast with
channels_last weights.
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


class StagingRing:
    """Host buffers that batches pass through on their way to a GPU, taken in turn (pinned,
    so that the copies to the device are asynchronous).

    Batch ``i`` is read into buffer ``i % count`` once the event released for the batch
    that used it last has completed (``release``: an event recorded after that batch's copy
    to the device). Pinning a fresh tensor per batch (``Tensor.pin_memory()``) allocates
    through the CUDA driver, whose lock the reading thread then shares with the thread
    that launches the GPU's work; the ring pins its buffers once, and each batch is one
    copy from the images into them.
    """

    def __init__(
        self, shape: tuple[int, ...], dtype: torch.dtype, count: int = 3, pin: bool = True
    ) -> None:
        self.buffers = [torch.empty(shape, dtype=dtype, pin_memory=pin) for _ in range(count)]
        self._released: list = [None] * count

    def fill(self, index: int, values: np.ndarray) -> torch.Tensor:
        """Batch ``index``'s ``values`` in its buffer, once that buffer's last batch is copied."""
        slot = index % len(self.buffers)
        released, self._released[slot] = self._released[slot], None
        if released is not None:
            released.synchronize()
        view = self.buffers[slot][: len(values)]
        np.copyto(view.numpy(), values)
        return view

    def release(self, index: int, event) -> None:
        """Batch ``index``'s buffer may be reused once ``event`` (``synchronize()``) is done."""
        self._released[index % len(self.buffers)] = event


def prefetched_batches(images: np.ndarray, batch_size: int, ring: StagingRing | None = None):
    """Yield ``(start, tensor)`` batches, reading the next one in a background thread while
    the caller computes on the current one.

    With a ``ring``, batch ``i`` lives in one of the ring's buffers: the caller releases it
    (``ring.release(i, event)``) before it asks for batch ``i + 1``, and the buffer is read
    into again only once the event is done; without, each batch is a fresh tensor.
    """

    def load(index: int, start: int) -> torch.Tensor:
        values = images[start : start + batch_size]
        if ring is None:
            return torch.from_numpy(np.array(values))
        return ring.fill(index, values)

    starts = range(0, len(images), batch_size)
    if not starts:
        return
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedkit-read") as pool:
        pending = pool.submit(load, 0, starts[0])
        for i, start in enumerate(starts):
            batch = pending.result()
            if i + 1 < len(starts):
                pending = pool.submit(load, i + 1, starts[i + 1])
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

    Reading overlaps compute (``prefetched_batches``); on a GPU the batches are read into
    pinned buffers (``StagingRing``) and copied asynchronously, run in bf16 autocast and
    channels_last (full batches replayed as one CUDA graph, ``GraphedForward``, when there
    are several), and each batch's features are copied back into pinned host memory without
    blocking: a batch is handed out only once the next one is queued on the GPU, so the
    caller's work on batch i (checks, writes, hashes) runs while the GPU computes batch i+1.
    """
    on_gpu = device.type == "cuda"
    encoder.eval().to(device)
    if on_gpu:  # weights in the layout of the inputs, so convolutions skip a conversion
        encoder.to(memory_format=torch.channels_last)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu)
    bar = tqdm(
        total=len(images), desc=desc, unit="img", disable=None if progress else True, leave=False
    )
    outputs: list[torch.Tensor] = []  # two pinned host buffers, alternating (GPU only)
    # the uint8 batches' pinned buffers (GPU only): batch i's is read into again once the
    # copy back of batch i's features is done (the copy in of batch i precedes it)
    inputs = None
    if on_gpu and len(images):
        dtype = torch.from_numpy(np.empty(0, dtype=images.dtype)).dtype
        inputs = StagingRing((min(batch_size, len(images)), *images.shape[1:]), dtype)
    graphed = None  # the full batches' forward as one CUDA graph (GPU, several batches)
    pending = None
    for i, (start, batch) in enumerate(prefetched_batches(images, batch_size, inputs)):
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
            if not outputs:
                shape = (batch_size, features.shape[1])
                outputs = [torch.empty(shape, dtype=torch.float32, pin_memory=True) for _ in "ab"]
            host = outputs[i % 2][: len(features)]
            host.copy_(features.float(), non_blocking=True)  # queued after the forward pass
            done = torch.cuda.Event()
            done.record()
            inputs.release(i, done)
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
