"""SimSiam [0]: a predictor on one branch, stop-gradient on the other, negative cosine loss.

[0] Chen & He 2021, Exploring Simple Siamese Representation Learning, arXiv:2011.10566.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import NegativeCosineSimilarity
from lightly.models.modules import SimSiamPredictionHead, SimSiamProjectionHead

from ..backbones import Encoder
from . import register_method
from .base import MethodConfig, PretrainMethod


@dataclass(frozen=True)
class SimSiamConfig(MethodConfig):
    """SimSiam's hyperparameters (the paper's 2048-d projector, 512-d predictor bottleneck).

    Attributes:
        projection_dim: projector output (and hidden) size.
        predictor_hidden_dim: the predictor's bottleneck.
    """

    projection_dim: int = 2048
    predictor_hidden_dim: int = 512


@register_method("simsiam")
class SimSiam(PretrainMethod):
    """SimSiam with lightly's projection and prediction heads and ``NegativeCosineSimilarity``."""

    Config = SimSiamConfig
    min_batch_size = 2  # batch-norm in the projector

    def __init__(
        self, encoder: Encoder, config: SimSiamConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = SimSiamProjectionHead(
            encoder.feature_dim, config.projection_dim, config.projection_dim
        )
        self.prediction_head = SimSiamPredictionHead(
            config.projection_dim, config.predictor_hidden_dim, config.projection_dim
        )
        self.criterion = NegativeCosineSimilarity(dim=-1)  # over features, views stacked

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z0, z1 = self.projection_head(self.encoder(self.two_views(images, generator))).chunk(2)
        p0, p1 = self.prediction_head(z0), self.prediction_head(z1)
        # both directions in one call: 0.5 * (D(p0, z1) + D(p1, z0)) with half the kernels
        return self.criterion(torch.stack([p0, p1]), torch.stack([z1, z0]).detach())
