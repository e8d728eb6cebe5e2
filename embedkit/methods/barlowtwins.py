"""Barlow Twins [0]: the cross-correlation of two views' projections driven to the identity.

[0] Zbontar et al. 2021, Barlow Twins: Self-Supervised Learning via Redundancy Reduction,
    arXiv:2103.03230.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import BarlowTwinsLoss
from lightly.models.modules import BarlowTwinsProjectionHead

from ..backbones import Encoder
from ..losses import GramBarlowTwinsLoss
from . import register_method
from .base import PretrainMethod, RewrittenLossConfig


@dataclass(frozen=True)
class BarlowTwinsConfig(RewrittenLossConfig):
    """Barlow Twins' hyperparameters (the paper's 8192-8192-8192 projector).

    Attributes:
        hidden_dim, projection_dim: projector sizes.
        lambda_param: weight of the off-diagonal (redundancy) term, 5e-3.
    """

    hidden_dim: int = 8192
    projection_dim: int = 8192
    lambda_param: float = 5e-3


@register_method("barlowtwins")
class BarlowTwins(PretrainMethod):
    """Barlow Twins with lightly's ``BarlowTwinsProjectionHead`` and ``BarlowTwinsLoss`` (through
    the batch's Gram matrices on one process, ``embedkit.losses.gram``)."""

    Config = BarlowTwinsConfig
    min_batch_size = 4  # the loss normalises over the batch: two samples give a degenerate one

    def __init__(
        self, encoder: Encoder, config: BarlowTwinsConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = BarlowTwinsProjectionHead(
            encoder.feature_dim, config.hidden_dim, config.projection_dim
        )
        loss = BarlowTwinsLoss if config.lightly_losses else GramBarlowTwinsLoss
        self.criterion = loss(lambda_param=config.lambda_param, gather_distributed=True)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z0, z1 = self.projection_head(self.encoder(self.two_views(images, generator))).chunk(2)
        return self.criterion(z0, z1)
