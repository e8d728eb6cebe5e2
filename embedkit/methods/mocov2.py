"""MoCo v2 [0]: MoCo with an MLP projection head and SimCLR-style augmentation with blur.

[0] Chen et al. 2020, Improved Baselines with Momentum Contrastive Learning,
    arXiv:2003.04297.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from lightly.models.modules import MoCoProjectionHead
from torch import nn

from ..augment import AugmentConfig
from . import register_method
from ._moco import MomentumQueueMethod
from .base import RewrittenLossConfig


@dataclass(frozen=True)
class MoCoV2Config(RewrittenLossConfig):
    """MoCo v2's hyperparameters.

    Attributes:
        temperature: 0.2, as the paper.
        projection_dim: output of the 2-layer MLP head (128).
        hidden_dim: the head's hidden size; 0 means the backbone's feature size.
        queue_size: negatives kept from past batches (the paper's 65536 suits ImageNet; 4096
            suits MedMNIST-sized training sets).
        momentum: of the key encoder's moving average (0.999).
        augment: the paper's "aug+": jitter 0.4/0.4/0.4/0.1, grayscale, blur.
    """

    temperature: float = 0.2
    projection_dim: int = 128
    hidden_dim: int = 0
    queue_size: int = 4096
    momentum: float = 0.999
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            min_scale=0.2, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1
        )
    )


@register_method("mocov2")
class MoCoV2(MomentumQueueMethod):
    """MoCo v2 from lightly's ``MoCoProjectionHead`` and ``NTXentLoss`` with a memory bank."""

    Config = MoCoV2Config
    min_batch_size = 2

    def make_head(self, feature_dim: int) -> nn.Module:
        return MoCoProjectionHead(
            feature_dim, self.config.hidden_dim or feature_dim, self.config.projection_dim
        )
