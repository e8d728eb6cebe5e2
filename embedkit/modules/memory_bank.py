"""lightly's memory bank (MoCo's queue) with its write position on the host.

lightly's ``MemoryBankModule`` reads its write position with ``int(bank_ptr)`` every step,
which makes the host wait for the device. Upstream change that would let this go: the
position kept as a Python int beside the buffer, as here.
"""

from __future__ import annotations

import torch
from lightly.models import utils as lightly_utils
from lightly.models.modules.memory_bank import MemoryBankModule
from lightly.utils import dist as lightly_dist


class HostPointerMemoryBank(MemoryBankModule):
    """lightly's ``MemoryBankModule`` (same buffers, same order of keys) whose write
    position lives on the host."""

    def __init__(self, size, gather_distributed: bool = False) -> None:
        super().__init__(size=size, gather_distributed=gather_distributed)
        self.position = 0

    def restore(self, bank: torch.Tensor, position: int) -> None:
        """Load a saved queue and its write position."""
        self.bank.copy_(bank)
        self.position = int(position)
        self.bank_ptr.fill_(self.position)

    @torch.no_grad()
    def _init_memory_bank(self, size) -> None:
        super()._init_memory_bank(size)
        self.position = 0

    @torch.no_grad()
    def _dequeue_and_enqueue(self, batch: torch.Tensor) -> None:
        if self.gather_distributed and lightly_dist.world_size() > 1:
            batch = lightly_utils.concat_all_gather(batch)
        n, start = batch.shape[0], self.position
        if start + n >= self.size[0]:  # lightly's rule: the batch's tail is dropped
            self.bank[start:] = batch[: self.size[0] - start].detach()
            self.position = 0
        else:
            self.bank[start : start + n] = batch.detach()
            self.position = start + n
        self.bank_ptr.fill_(self.position)


class HostPointerNNMemoryBank(HostPointerMemoryBank):
    """lightly's ``NNMemoryBankModule`` (NNCLR's support set: each output replaced by its
    nearest neighbour in the queue, by cosine similarity) whose write position lives on the
    host."""

    def forward(self, output: torch.Tensor, update: bool = False) -> torch.Tensor:  # type: ignore[override]
        output, bank = MemoryBankModule.forward(self, output, update=update)
        bank = bank.to(output.device).t()
        similarity = torch.einsum(
            "nd,md->nm",
            torch.nn.functional.normalize(output, dim=1),
            torch.nn.functional.normalize(bank, dim=1),
        )
        return torch.index_select(bank, dim=0, index=similarity.argmax(dim=1))


def queue_state(bank: MemoryBankModule) -> dict[str, torch.Tensor]:
    """A queue's keys and write position, for a checkpoint (lightly's bank or embedkit's)."""
    position = getattr(bank, "position", None)  # lightly's bank: read from the device
    position = int(bank.bank_ptr) if position is None else position
    return {"bank": bank.bank.detach().cpu().clone(), "ptr": torch.tensor([position])}


def restore_queue(bank: MemoryBankModule, state: dict[str, torch.Tensor]) -> None:
    """Load what ``queue_state`` saved."""
    if isinstance(bank, HostPointerMemoryBank):
        bank.restore(state["bank"], int(state["ptr"][0]))
    else:  # lightly's MemoryBankModule
        bank.bank.copy_(state["bank"])
        bank.bank_ptr.fill_(int(state["ptr"][0]))
