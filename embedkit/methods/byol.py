"""BYOL [0]: an online network predicts a momentum target network's projection of the other
view; no negatives.

The online branch is the encoder, lightly's ``BYOLProjectionHead`` and
``BYOLPredictionHead``; the target branch is the moving average of the encoder and the
projection head (``MomentumMethod``), its momentum raised to 1 on a cosine. The loss is the
symmetrised negative cosine similarity (the paper's ``2 - 2 cos`` up to an affine map).

[0] Grill et al. 2020, Bootstrap your own latent: A new approach to self-supervised
    learning, arXiv:2006.07733.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import BYOLPredictionHead, BYOLProjectionHead

from ..augment import AugmentConfig, byol_views
from ..backbones import Encoder
from . import register_method
from ._momentum import MomentumMethod
from .base import MethodConfig


@dataclass(frozen=True)
class BYOLConfig(MethodConfig):
    """BYOL's hyperparameters (the paper's 4096-256 heads).

    Attributes:
        projection_dim: output of the projection and prediction heads (256).
        hidden_dim: hidden size of both heads (4096).
        momentum: starting target momentum: 0.99, as solo-learn and lightly use for batches
            of a few hundred (the paper's 0.996 is for batches of 4096) ...
        momentum_end: ... raised to 1 on a cosine schedule.
        augment: first view: BYOL's augmentation with blur always on.
        augment_second: second view: blur 0.1 and solarisation 0.2.
    """

    projection_dim: int = 256
    hidden_dim: int = 4096
    momentum: float = 0.99
    momentum_end: float = 1.0
    augment: AugmentConfig = field(default_factory=lambda: byol_views()[0])
    augment_second: AugmentConfig | None = field(default_factory=lambda: byol_views()[1])


@register_method("byol")
class BYOL(MomentumMethod):
    """BYOL (see module docstring)."""

    Config = BYOLConfig
    min_batch_size = 2  # batch norm in the heads

    def __init__(self, encoder: Encoder, config: BYOLConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        hidden, out = config.hidden_dim, config.projection_dim
        self.projection_head = BYOLProjectionHead(encoder.feature_dim, hidden, out)
        self.prediction_head = BYOLPredictionHead(out, hidden, out)
        self.init_momentum_branch()
        self.criterion = NegativeCosineSimilarity(dim=-1)  # over features, views stacked

    def training_step(self, images, labels, generator) -> torch.Tensor:
        views = self.two_views(images, generator)
        p0, p1 = self.prediction_head(self.projection_head(self.encoder(views))).chunk(2)
        z0, z1 = self.momentum_forward(views).chunk(2)
        # 0.5 * (D(p0, z1) + D(p1, z0)) in one call
        return self.criterion(torch.stack([p0, p1]), torch.stack([z1, z0]))
