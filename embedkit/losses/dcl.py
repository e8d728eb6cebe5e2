"""lightly's decoupled contrastive loss (DCL, DCLW) without host synchronisation.

lightly's ``DCLLoss`` picks the positive pairs and drops them from the negatives by boolean
indexing with the diagonal mask, whose result size is only known on the device: on a GPU
the host waits for every queued kernel, every step. Here the positives are gathered at
their indices and the masked entries set to ``-inf`` before the ``logsumexp`` (they get
exactly zero weight), so the value and gradients are lightly's. The DCLW weights are
computed without ``torch.tensor`` of a tensor (a copy through the host in lightly's
``negative_mises_fisher_weights``).

Upstream change that would let it go: lightly's ``DCLLoss`` masking with ``masked_fill``.
"""

from __future__ import annotations

import torch
from lightly.loss import DCLLoss
from lightly.utils import dist
from torch import nn


def mises_fisher_weights(out0: torch.Tensor, out1: torch.Tensor, sigma: float) -> torch.Tensor:
    """DCLW's weights of the positive pairs: ``2 - N softmax(<out0, out1> / sigma)``
    (lightly's ``negative_mises_fisher_weights``, on the device)."""
    similarity = torch.einsum("nm,nm->n", out0.detach(), out1.detach()) / sigma
    return 2 - out0.shape[0] * nn.functional.softmax(similarity, dim=0)


class SyncFreeDCLLoss(DCLLoss):
    """lightly's ``DCLLoss`` (same arguments and value) without host synchronisation;
    ``sigma`` > 0 weights the positives as DCLW does (lightly's ``DCLWLoss``)."""

    def __init__(
        self, temperature: float = 0.1, sigma: float = 0.0, gather_distributed: bool = False
    ) -> None:
        weight_fn = None
        if sigma > 0:

            def weight_fn(a, b):
                return mises_fisher_weights(a, b, sigma)

        super().__init__(temperature, weight_fn, gather_distributed)

    def _loss(self, out0, out1, out0_all, out1_all) -> torch.Tensor:
        n = out0.shape[0]
        gathered = self.gather_distributed and dist.world_size() > 1
        own = torch.arange(n, device=out0.device) + (dist.rank() * n if gathered else 0)
        sim_00 = torch.einsum("nc,mc->nm", out0, out0_all) / self.temperature
        sim_01 = torch.einsum("nc,mc->nm", out0, out1_all) / self.temperature
        positive_loss = -sim_01.gather(1, own[:, None]).squeeze(1)
        if self.weight_fn:
            positive_loss = positive_loss * self.weight_fn(out0, out1)
        mask = torch.zeros_like(sim_00, dtype=torch.bool).scatter_(1, own[:, None], True)
        negatives = torch.cat(
            [sim_00.masked_fill(mask, float("-inf")), sim_01.masked_fill(mask, float("-inf"))],
            dim=1,
        )
        return (positive_loss + torch.logsumexp(negatives, dim=1)).mean()
