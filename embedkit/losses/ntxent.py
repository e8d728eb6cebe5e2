"""lightly's NT-Xent loss and MoCo queue without host synchronisation.

On a GPU, two steps of lightly's ``NTXentLoss`` make the host wait until the device has
finished all queued work, every optimiser step: the in-batch loss drops each view's
similarity to itself by boolean indexing (the result's size is only known on the device),
and the memory bank reads its write position with ``int(bank_ptr)``. Here the self-
similarities are set to ``-inf`` instead (the softmax gives them exactly zero weight, so the
loss and its gradients are lightly's), and the queue keeps its write position as a Python
int next to the ``bank_ptr`` buffer, which is still written for anyone reading it.
"""

from __future__ import annotations

import torch
from lightly.loss import NTXentLoss
from lightly.utils import dist as lightly_dist
from torch.nn import functional as F

from ..modules.memory_bank import HostPointerMemoryBank
from .normalize import normalize


class SyncFreeNTXentLoss(NTXentLoss):
    """lightly's ``NTXentLoss`` (same arguments and value) without host synchronisation,
    normalising with a written-out gradient (``embedkit.losses.normalize``).

    Upstream change that would let it go: lightly's ``NTXentLoss`` masking the
    self-similarities (``masked_fill``) instead of boolean indexing, and its
    ``MemoryBankModule`` keeping the write position on the host.
    """

    _compiled = None  # ``_queue_cross_entropy`` compiled, once ``compile`` is called

    def __init__(self, temperature: float = 0.5, memory_bank_size=0, gather_distributed=False):
        super().__init__(temperature, 0, gather_distributed)  # lightly's checks, no bank
        self.memory_bank = HostPointerMemoryBank(memory_bank_size, gather_distributed)

    def forward(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        if self.memory_bank.size[0] > 0:
            return self._queue_loss(out0, out1)
        n = out0.shape[0]
        out0, out1 = normalize(out0), normalize(out1)
        labels = torch.arange(n, device=out0.device)
        if self.gather_distributed and lightly_dist.world_size() > 1:
            all0 = torch.cat(lightly_dist.gather(out0), 0)
            all1 = torch.cat(lightly_dist.gather(out1), 0)
            self_pairs = lightly_dist.eye_rank(n, device=out0.device)
            labels = labels + lightly_dist.rank() * n
        else:
            all0, all1 = out0, out1
            self_pairs = torch.eye(n, device=out0.device, dtype=torch.bool)
        logits = torch.cat(
            [
                torch.cat([out0 @ all1.T, (out0 @ all0.T).masked_fill(self_pairs, -torch.inf)], 1),
                torch.cat([out1 @ all0.T, (out1 @ all1.T).masked_fill(self_pairs, -torch.inf)], 1),
            ]
        )
        return self.cross_entropy(logits / self.temperature, labels.repeat(2))

    # torch.compile (seen with 2.14) gets this path's gradients wrong when it traces it whole:
    # the bank that its backward reads is written in the same graph. So a compiled caller runs
    # it as written, and ``compile`` compiles the part that leaves the queue alone
    @torch.compiler.disable
    def _queue_loss(self, out0: torch.Tensor, out1: torch.Tensor) -> torch.Tensor:
        """lightly's loss against the queue: the keys queued before this batch's are the
        negatives (lightly's copy of them, as its ``MemoryBankModule`` returns them), and
        this batch's keys are queued after."""
        bank = self.memory_bank
        negatives = bank.bank.clone()
        if bank.feature_dim_first:
            negatives = negatives.transpose(0, -1)
        loss, keys = (self._compiled or _queue_cross_entropy)(
            out0, out1, negatives.to(out0.device), self.temperature
        )
        if out0.requires_grad:  # lightly's: the queue moves only in a step with a backward
            bank._dequeue_and_enqueue(keys)
        return loss

    def compile(self, *args, **kwargs) -> None:
        """``torch.compile`` the loss against the queue but the queue's update (the arguments
        are ``torch.compile``'s); the values and gradients stay lightly's up to float
        rounding. The in-batch loss (no queue) stays as written."""
        self._compiled = torch.compile(_queue_cross_entropy, *args, **kwargs)


def _queue_cross_entropy(
    query: torch.Tensor, key: torch.Tensor, negatives: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent of each query against its key and the queued ``(dim, K)`` negatives, and the
    normalised keys, to queue."""
    query, key = normalize(query), normalize(key)
    positives = torch.einsum("nc,nc->n", query, key).unsqueeze(-1)
    logits = torch.cat([positives, query @ negatives], 1)
    labels = torch.zeros(query.shape[0], device=query.device, dtype=torch.long)
    return F.cross_entropy(logits / temperature, labels), key
