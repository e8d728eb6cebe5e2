"""TiCo [0]: transformation invariance and covariance contrast.

The online projection of one view is pulled toward the momentum branch's projection of the
other, while a running covariance of past projections (``C``, an exponential average with
weight ``beta``) pushes embeddings away from the directions the past batches filled: a
contrast against an unbounded memory of negatives at the cost of a D x D matrix. lightly's
``TiCoProjectionHead`` and ``TiCoLoss``; the momentum branch follows the loop's cosine schedule
(``MomentumMethod``), as lightly's TiCo example does. The covariance is saved in checkpoints,
so a resumed run continues with it.

[0] Zhu, Liu and Huang 2022, TiCo: Transformation Invariance and Covariance Contrast for
    Self-Supervised Visual Representation Learning, arXiv:2206.10698.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.loss import TiCoLoss
from lightly.models.modules.heads import TiCoProjectionHead

from ..augment import AugmentConfig, byol_views
from ..backbones import Encoder
from . import register_method
from ._momentum import MomentumMethod
from .base import MethodConfig


@dataclass(frozen=True)
class TiCoConfig(MethodConfig):
    """TiCo's hyperparameters (the paper's ImageNet ResNet-50 values).

    Attributes:
        projection_dim: output of the projection head (256).
        hidden_dim: hidden size of the head (4096).
        beta: weight of the past in the running covariance (0.9).
        rho: weight of the covariance contrast term (8).
        momentum: starting momentum of the momentum branch (0.99) ...
        momentum_end: ... raised to 1 on a cosine schedule.
        augment: first view: BYOL's augmentation, as the paper.
        augment_second: second view: BYOL's second view.
    """

    projection_dim: int = 256
    hidden_dim: int = 4096
    beta: float = 0.9
    rho: float = 8.0
    momentum: float = 0.99
    momentum_end: float = 1.0
    augment: AugmentConfig = field(default_factory=lambda: byol_views()[0])
    augment_second: AugmentConfig | None = field(default_factory=lambda: byol_views()[1])


@register_method("tico")
class TiCo(MomentumMethod):
    """TiCo (see module docstring)."""

    Config = TiCoConfig
    min_batch_size = 2  # the loss's own check, and batch norm in the head

    def __init__(self, encoder: Encoder, config: TiCoConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = TiCoProjectionHead(
            encoder.feature_dim, config.hidden_dim, config.projection_dim
        )
        self.init_momentum_branch()
        self.criterion = TiCoLoss(beta=config.beta, rho=config.rho, gather_distributed=True)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        online_views, momentum_views = self.two_views(images, generator).chunk(2)
        z0 = self.projection_head(self.encoder(online_views))
        return self.criterion(z0, self.momentum_forward(momentum_views))

    def get_extra_state(self) -> dict[str, Any]:
        covariance = self.criterion.C
        return {"C": torch.empty(0) if covariance is None else covariance.detach().cpu().clone()}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        covariance = state["C"]
        device = self.encoder.mean.device
        self.criterion.C = None if covariance.numel() == 0 else covariance.to(device)
