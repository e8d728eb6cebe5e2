"""Modules that replace lightly's for speed (lightly keeps its own in
``lightly.models.modules`` and ``lightly.models.utils``), each tested against lightly's and
each with a way back to it (a method's ``lightly_losses`` parameter).

- ``memory_bank``: ``HostPointerMemoryBank``, MoCo's queue with its write position on the
  host (lightly's ``MemoryBankModule`` reads it from the device each step), and
  ``HostPointerNNMemoryBank``, NNCLR's nearest-neighbour queue likewise.
- ``momentum``: ``update_momentum``, the moving average as one multi-tensor lerp.
"""

from .memory_bank import (
    HostPointerMemoryBank,
    HostPointerNNMemoryBank,
    queue_state,
    restore_queue,
)
from .momentum import update_momentum

__all__ = [
    "HostPointerMemoryBank",
    "HostPointerNNMemoryBank",
    "queue_state",
    "restore_queue",
    "update_momentum",
]
