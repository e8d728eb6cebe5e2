"""Find where a piece of GPU code would make the host wait for the device, on any machine.

CUDA runs kernels asynchronously: the host queues work and goes on. A few operations need a
value from the device and so wait until everything queued before them has run, after which
the GPU idles until the host has queued enough again: reading a tensor into Python
(``.item()``, ``int(t)``, ``if t:``), ops whose output size depends on the data (boolean
indexing, ``nonzero``, ``unique``), linear-algebra error checks, and tensors made from Python
numbers on the device (``torch.tensor(..., device=...)`` copies from pageable memory).
``torch.cuda.set_sync_debug_mode`` reports these, but only on a GPU; ``HostSyncs`` records the
same operations at the dispatcher, so a CPU run shows what a GPU run would wait on::

    with HostSyncs() as syncs:
        train_one_step()
    assert not syncs.found, syncs.summary()

Host data worked out on purpose (augmentation parameters) goes to the device through
``upload``: pinned and non-blocking on a GPU, so it is not counted.
"""

from __future__ import annotations

import threading
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNCING_OPS = frozenset(
    {
        "aten._local_scalar_dense.default",  # .item(), int(t), float(t), bool(t)
        "aten.is_nonzero.default",
        "aten.equal.default",
        "aten.lift_fresh.default",  # torch.tensor(<Python data>): a pageable host copy
        "aten._linalg_check_errors.default",  # torch.linalg.inv, cholesky... error checks
        "aten.nonzero.default",
        "aten.masked_select.default",
        "aten._unique2.default",
        "aten.unique_dim.default",
        "aten.unique_consecutive.default",
        "aten.repeat_interleave.Tensor",
    }
)
_SOURCE_ROOT = Path(__file__).resolve().parent.parent.as_posix() + "/"
_INDEXING_OPS = ("aten.index.Tensor", "aten.index_put.default", "aten.index_put_.default")


_uploading = threading.local()


def upload(array: np.ndarray, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """``array`` as a ``dtype`` tensor on ``device`` without making the host wait: through
    pinned memory and a non-blocking copy on a GPU (the caching host allocator keeps the
    pinned block until the copy is done)."""
    _uploading.active = True
    try:
        tensor = torch.from_numpy(np.ascontiguousarray(array)).to(dtype)
    finally:
        _uploading.active = False
    if device.type == "cuda":
        tensor = tensor.pin_memory()
    return tensor.to(device, non_blocking=True)


def _boolean_indices(args) -> bool:
    return len(args) > 1 and any(
        isinstance(index, torch.Tensor) and index.dtype == torch.bool for index in (args[1] or ())
    )


def _caller() -> str:
    """The innermost frame outside torch, as ``path:line``: from ``site-packages`` for an
    installed package, else from the folder holding ``embedkit`` or the working directory."""
    for frame in reversed(traceback.extract_stack()[:-3]):
        path = frame.filename.replace("\\", "/")
        if "/torch/" in path or path.endswith("/host_syncs.py"):
            continue
        if "/site-packages/" in path:
            path = path.split("/site-packages/", 1)[1]
        else:
            for root in (_SOURCE_ROOT, Path.cwd().as_posix() + "/"):
                if path.startswith(root):
                    path = path[len(root) :]
                    break
        return f"{path}:{frame.lineno}"
    return "torch"


class HostSyncs(TorchDispatchMode):
    """Records every operation run inside it that would synchronise the host with a GPU.

    Attributes:
        found: ``(operation, caller)`` to count, the caller being the innermost frame outside
            torch (``torch`` when all frames are torch's own, as in an optimiser's step).
        launches: operations that are not views: about the kernels a GPU would launch,
            whose host-side cost bounds a step of small kernels.
    """

    def __init__(self) -> None:
        super().__init__()
        self.found: Counter[tuple[str, str]] = Counter()
        self.launches = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func)
        self.launches += not func.is_view
        if name == "aten.lift_fresh.default" and getattr(_uploading, "active", False):
            return func(*args, **(kwargs or {}))
        if name in SYNCING_OPS or (name in _INDEXING_OPS and _boolean_indices(args)):
            self.found[name.removeprefix("aten.").removesuffix(".default"), _caller()] += 1
        return func(*args, **(kwargs or {}))

    @property
    def count(self) -> int:
        return sum(self.found.values())

    def summary(self) -> str:
        """One line per operation and caller, most frequent first."""
        return "\n".join(f"{n} x {op} at {where}" for (op, where), n in self.found.most_common())
