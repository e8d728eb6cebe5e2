"""MoCo v1 [0]: contrast queries with keys of a momentum encoder and a queue of negatives.

[0] He et al. 2020, Momentum Contrast for Unsupervised Visual Representation Learning,
    arXiv:1911.05722.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..augment import AugmentConfig
from . import register_method
from ._moco import MomentumQueueMethod
from .base import RewrittenLossConfig


@dataclass(frozen=True)
class MoCoV1Config(RewrittenLossConfig):
    """MoCo v1's hyperparameters.

    Attributes:
        temperature: 0.07, as the paper.
        projection_dim: output of the linear projection (128).
        queue_size: negatives kept from past batches (see MoCo v2's note).
        momentum: of the key encoder's moving average (0.999).
        augment: the paper's: crop (0.2, 1), grayscale 0.2, jitter 0.4 on every image, no blur.
    """

    temperature: float = 0.07
    projection_dim: int = 128
    queue_size: int = 4096
    momentum: float = 0.999
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            min_scale=0.2,
            jitter_prob=1.0,
            brightness=0.4,
            contrast=0.4,
            saturation=0.4,
            hue=0.4,
            blur_prob=0.0,
        )
    )


@register_method("mocov1")
class MoCoV1(MomentumQueueMethod):
    """MoCo v1 with a linear projection and lightly's ``NTXentLoss`` with a memory bank."""

    Config = MoCoV1Config
    min_batch_size = 2

    def make_head(self, feature_dim: int) -> nn.Module:
        return nn.Linear(feature_dim, self.config.projection_dim)
