"""Barlow Twins' and VICReg's losses through the batch's Gram matrices.

Both losses sum the squared off-diagonal entries of a D x D matrix built from a batch of N
projections (the cross-correlation ``A^T B / N``, the covariance ``X^T X / (N - 1)``). With
the papers' D = 8192 and batches of a few hundred, forming that matrix is the step's largest
cost (2 N D^2 multiply-adds, and as much again backward). The sum needs no D x D matrix:

    sum_ij (A^T B)_ij^2 = trace(A^T B B^T A) = sum_nm (A A^T)_nm (B B^T)_nm,

two N x N Gram matrices (2 N^2 D each), and the diagonal ``sum_n A_ni B_ni`` is a column sum.
The loss is the same function (tested against lightly's to float precision, values and
gradients); it is computed in float32 outside autocast, since the off-diagonal sum is a
difference of two large sums. Where N >= D, or for Barlow Twins under several processes
(lightly all-reduces the D x D matrix there), lightly's own loss runs. Upstream change that
would let this go: lightly's losses taking the Gram route when the batch is below the
projection size.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from lightly.loss import BarlowTwinsLoss, VICRegLoss
from lightly.loss.vicreg_loss import invariance_loss
from lightly.utils.dist import gather
from torch.nn import functional as F


def off_diagonal_square_sum(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} ((a^T b)_ij)^2`` for ``(N, D)`` inputs, without a D x D matrix when
    N < D."""
    diagonal = (a * b).sum(0).pow(2).sum()
    if a.shape[0] >= a.shape[1]:
        return (a.T @ b).pow(2).sum() - diagonal
    return ((a @ a.T) * (b @ b.T)).sum() - diagonal


def _float32(fn):
    """Run ``fn`` with autocast off on inputs of at least float32 (the loss's sums need the
    precision; float64 stays float64)."""

    def wrapper(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        dtype = torch.promote_types(z_a.dtype, torch.float32)
        with torch.autocast(z_a.device.type, enabled=False):
            return fn(self, z_a.to(dtype), z_b.to(dtype))

    return wrapper


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class GramBarlowTwinsLoss(BarlowTwinsLoss):
    """lightly's ``BarlowTwinsLoss`` (same arguments, same value) through Gram matrices."""

    @_float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        n, d = z_a.shape
        if n >= d or (self.gather_distributed and _distributed()):
            return super().forward(z_a, z_b)
        a = F.batch_norm(z_a, None, None, training=True)  # each column: mean 0, std 1
        b = F.batch_norm(z_b, None, None, training=True)
        on_diagonal = (a * b).sum(0).div(n).sub(1).pow(2).sum()
        off_diagonal = off_diagonal_square_sum(a, b) / n**2
        return on_diagonal + self.lambda_param * off_diagonal


class GramVICRegLoss(VICRegLoss):
    """lightly's ``VICRegLoss`` (same arguments, same value) with the covariance term through
    Gram matrices."""

    @_float32
    def forward(self, z_a: torch.Tensor, z_b: torch.Tensor) -> torch.Tensor:
        invariance = invariance_loss(z_a, z_b)
        if self.gather_distributed and _distributed():  # as lightly: statistics of all ranks
            z_a, z_b = torch.cat(gather(z_a)), torch.cat(gather(z_b))
        variance, covariance = _variance_covariance(torch.stack([z_a, z_b]), self.eps)
        return (
            self.lambda_param * invariance + self.mu_param * variance + self.nu_param * covariance
        )


def _variance_covariance(z: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """VICReg's variance term (the views' mean) and covariance term (the views' sum) of
    ``(views, N, D)`` projections, both views in each operation: about half the kernels of
    one view at a time, forward and backward.

    The covariance ``C = X^T X / (N - 1)`` of centred ``X`` has ``C_jj`` = the variance of
    column j, so its off-diagonal square sum is ``|X X^T|^2 / (N - 1)^2 - sum_j var_j^2``,
    with the smaller of the two Gram matrices."""
    n, d = z.shape[1], z.shape[2]
    x = z - z.mean(1, keepdim=True)
    var = x.pow(2).sum(1) / (n - 1)  # (views, D): torch.var's unbiased estimate
    variance = F.relu(1.0 - torch.sqrt(var + eps)).mean()
    gram = x @ x.transpose(1, 2) if n < d else x.transpose(1, 2) @ x
    covariance = (gram.pow(2).sum() / (n - 1) ** 2 - var.pow(2).sum()) / d
    return variance, covariance
