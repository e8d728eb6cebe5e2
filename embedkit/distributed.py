"""Ranks of a multi-process job, for work that splits by rows (sharded extraction).

``Shard.from_environment`` reads the variables torchrun and SLURM-launched torchrun set
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``...) and joins the process group:
gloo on CPU, NCCL on GPU, one GPU per local rank. Without them it is the single process
``Shard()``, whose collectives return at once. No home-made launcher: start N processes with
``torchrun --nproc-per-node N -m embedkit.cli.main embed ...``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

T = TypeVar("T")


@dataclass(frozen=True)
class Shard:
    """This process's rank among ``world`` processes."""

    rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_environment(cls, device: torch.device) -> tuple[Shard, torch.device]:
        """The shard of a torchrun-launched process (joining its group) and its device."""
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls(), device
        import torch.distributed as dist

        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.type == "cuda":
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size()), device

    def range(self, n_items: int) -> tuple[int, int]:
        """This rank's contiguous share ``[start, stop)`` of ``n_items`` (e.g. chunks)."""
        return n_items * self.rank // self.world, n_items * (self.rank + 1) // self.world

    def gather(self, value: T) -> list[T]:
        """Every rank's ``value``, in rank order, on every rank."""
        if self.world == 1:
            return [value]
        import torch.distributed as dist

        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""
        if self.world == 1:
            return value
        import torch.distributed as dist

        box = [value]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def on_main(self, action: Callable[[], T]) -> T:
        """Run ``action`` on rank 0 and share its result; an error there is raised on every
        rank (so no rank waits for a peer that has given up)."""
        result, error = None, None
        if self.is_main:
            try:
                result = action()
            except Exception as exc:  # re-raised below on every rank, unchanged on rank 0
                error = exc
        failure = self.broadcast(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        if failure is not None:
            kind, message = failure
            raise kind(message)
        return self.broadcast(result)

    def check_all(self, error: Exception | None) -> None:
        """Raise the first rank's error on every rank, once every rank got here."""
        errors = self.gather(None if error is None else (type(error), str(error)))
        if error is not None:
            raise error
        for failure in errors:
            if failure is not None:
                raise failure[0](failure[1])
