"""VICReg [0]: invariance, variance and covariance terms on two views' projections.

[0] Bardes et al. 2022, VICReg: Variance-Invariance-Covariance Regularization for
    Self-Supervised Learning, arXiv:2105.04906.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import VICRegLoss
from lightly.models.modules.heads import VICRegProjectionHead

from ..backbones import Encoder
from ..losses import GramVICRegLoss
from . import register_method
from .base import PretrainMethod, RewrittenLossConfig


@dataclass(frozen=True)
class VICRegConfig(RewrittenLossConfig):
    """VICReg's hyperparameters (the paper's 8192-8192-8192 expander, weights 25/25/1).

    Attributes:
        hidden_dim, projection_dim, num_layers: expander shape.
        invariance_weight, variance_weight, covariance_weight: the loss terms' weights.
    """

    hidden_dim: int = 8192
    projection_dim: int = 8192
    num_layers: int = 3
    invariance_weight: float = 25.0
    variance_weight: float = 25.0
    covariance_weight: float = 1.0


@register_method("vicreg")
class VICReg(PretrainMethod):
    """VICReg with lightly's ``VICRegProjectionHead`` and ``VICRegLoss`` (its covariance term
    through the batch's Gram matrices, ``embedkit.losses.gram``)."""

    Config = VICRegConfig
    min_batch_size = 4  # the variance and covariance terms are batch statistics

    def __init__(
        self, encoder: Encoder, config: VICRegConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = VICRegProjectionHead(
            encoder.feature_dim, config.hidden_dim, config.projection_dim, config.num_layers
        )
        loss = VICRegLoss if config.lightly_losses else GramVICRegLoss
        self.criterion = loss(
            lambda_param=config.invariance_weight,
            mu_param=config.variance_weight,
            nu_param=config.covariance_weight,
            gather_distributed=True,
        )

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z0, z1 = self.projection_head(self.encoder(self.two_views(images, generator))).chunk(2)
        return self.criterion(z0, z1)
