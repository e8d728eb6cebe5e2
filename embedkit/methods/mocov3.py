"""MoCo v3 [0]: a momentum encoder, a prediction head and a symmetric contrastive loss.

Each view's prediction is contrasted with the other view's momentum key; the negatives are
the other keys of the (globally gathered) batch, with no queue. lightly has no MoCo v3
class: this one is composed from its ``MoCoProjectionHead`` (3 layers with batch norm, as
the paper), a 2-layer ``ProjectionHead`` predictor, ``update_momentum`` and ``dist.gather``.

[0] Chen, Xie and He 2021, An Empirical Study of Training Self-Supervised Vision
    Transformers, arXiv:2104.02057.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from lightly.models.modules import MoCoProjectionHead
from lightly.models.modules.heads import ProjectionHead
from lightly.utils import dist
from torch import nn

from ..augment import AugmentConfig, byol_views
from ..backbones import Encoder
from ..losses import normalize
from . import register_method
from ._momentum import MomentumMethod
from .base import RewrittenLossConfig


@dataclass(frozen=True)
class MoCoV3Config(RewrittenLossConfig):
    """MoCo v3's hyperparameters.

    Attributes:
        temperature: 0.2 (the benchmark protocol; the paper's ViT value).
        projection_dim: output of the projection and prediction heads (256).
        hidden_dim: hidden size of both heads (4096).
        momentum: starting momentum of the key encoder (0.99) ...
        momentum_end: ... raised to 1 on a cosine schedule.
        augment: first view: BYOL's augmentation with blur always on.
        augment_second: second view: blur 0.1 and solarisation 0.2.
    """

    temperature: float = 0.2
    projection_dim: int = 256
    hidden_dim: int = 4096
    momentum: float = 0.99
    momentum_end: float = 1.0
    augment: AugmentConfig = field(default_factory=lambda: byol_views()[0])
    augment_second: AugmentConfig | None = field(default_factory=lambda: byol_views()[1])


def contrastive_loss(
    query: torch.Tensor, key: torch.Tensor, temperature: float, normalise=normalize
) -> torch.Tensor:
    """InfoNCE of each query against its key, with all gathered keys as candidates.

    Scaled by ``2 * temperature`` as in the paper's reference code. ``(N, D)`` inputs give
    one loss; ``(V, N, D)`` inputs the sum of the V views' losses, in one call (the step is
    bound by kernel launches on a GPU). ``normalise``: embedkit's (a written-out gradient) or
    ``F.normalize`` along the last dimension.
    """
    query, key = normalise(query), normalise(key)
    keys = torch.cat(dist.gather(key), dim=-2) if dist.world_size() > 1 else key
    logits = query @ keys.transpose(-2, -1) / temperature
    n, views = query.shape[-2], query[..., 0, 0].numel()
    targets = torch.arange(n, device=query.device) + dist.rank() * n
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.repeat(views))
    return loss * views * 2 * temperature


@register_method("mocov3")
class MoCoV3(MomentumMethod):
    """MoCo v3 (see module docstring)."""

    Config = MoCoV3Config
    min_batch_size = 2  # batch-norm heads and at least one negative

    def __init__(
        self, encoder: Encoder, config: MoCoV3Config, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        hidden, out = config.hidden_dim, config.projection_dim
        self.projection_head = MoCoProjectionHead(
            encoder.feature_dim, hidden, out, num_layers=3, batch_norm=True
        )
        self.prediction_head = ProjectionHead(
            [(out, hidden, nn.BatchNorm1d(hidden), nn.ReLU()), (hidden, out, None, None)]
        )
        self.init_momentum_branch()

    def training_step(self, images, labels, generator) -> torch.Tensor:
        views = self.two_views(images, generator)
        predictions = self.prediction_head(self.projection_head(self.encoder(views)))
        keys = self.momentum_forward(views)
        p0, p1 = predictions.chunk(2)
        k0, k1 = keys.chunk(2)
        temperature = self.config.temperature
        # both directions, (p0, k1) and (p1, k0), in one call
        normalise = _lightly_normalize if self.config.lightly_losses else normalize
        return contrastive_loss(
            torch.stack([p0, p1]), torch.stack([k1, k0]), temperature, normalise
        )


def _lightly_normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
