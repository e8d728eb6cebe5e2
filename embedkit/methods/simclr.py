"""SimCLR [0]: two augmented views, a projection head and the NT-Xent loss.

[0] Chen et al. 2020, A Simple Framework for Contrastive Learning of Visual
    Representations, arXiv:2002.05709.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import SimCLRProjectionHead

from ..backbones import Encoder
from ..losses import SyncFreeNTXentLoss
from . import register_method
from .base import PretrainMethod, RewrittenLossConfig


@dataclass(frozen=True)
class SimCLRConfig(RewrittenLossConfig):
    """SimCLR's hyperparameters.

    Attributes:
        temperature: NT-Xent temperature (0.2, the benchmark protocol's value).
        projection_dim: output size of the projection head.
        hidden_dim: hidden size of the head; 0 means the backbone's feature size.
    """

    temperature: float = 0.2
    projection_dim: int = 128
    hidden_dim: int = 0


@register_method("simclr")
class SimCLR(PretrainMethod):
    """SimCLR with lightly's ``SimCLRProjectionHead`` and ``NTXentLoss``."""

    Config = SimCLRConfig
    min_batch_size = 2  # the loss needs at least one negative pair

    def __init__(
        self, encoder: Encoder, config: SimCLRConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        hidden = config.hidden_dim or encoder.feature_dim
        self.projection_head = SimCLRProjectionHead(
            encoder.feature_dim, hidden, config.projection_dim
        )
        loss = NTXentLoss if config.lightly_losses else SyncFreeNTXentLoss
        self.criterion = loss(temperature=config.temperature, gather_distributed=True)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z0, z1 = self.projection_head(self.encoder(self.two_views(images, generator))).chunk(2)
        return self.criterion(z0, z1)
