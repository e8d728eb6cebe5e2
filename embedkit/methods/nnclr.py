"""NNCLR [0]: contrast each view's prediction with the nearest neighbour of the other view's
projection in a support set of past projections.

lightly's ``NNCLRProjectionHead``, ``NNCLRPredictionHead``, ``NNMemoryBankModule`` (the support
set, by default ``embedkit.modules.HostPointerNNMemoryBank``: the same queue with its write
position on the host) and ``NTXentLoss`` (by default ``SyncFreeNTXentLoss``). The support
set is filled with the second view's projections, once per step, and saved in checkpoints,
so a resumed run continues with the same neighbours.

[0] Dwibedi et al. 2021, With a Little Help from My Friends: Nearest-Neighbor Contrastive
    Learning of Visual Representations, arXiv:2104.14548.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.modules import NNCLRPredictionHead, NNCLRProjectionHead
from lightly.models.modules.nn_memory_bank import NNMemoryBankModule

from ..augment import AugmentConfig, byol_views
from ..backbones import Encoder
from ..losses import SyncFreeNTXentLoss
from ..modules import HostPointerNNMemoryBank, queue_state, restore_queue
from . import register_method
from .base import PretrainMethod, RewrittenLossConfig


@dataclass(frozen=True)
class NNCLRConfig(RewrittenLossConfig):
    """NNCLR's hyperparameters.

    Attributes:
        temperature: 0.1, as the paper.
        projection_dim: output of the projection and prediction heads (256).
        hidden_dim: hidden size of the projection head (2048).
        prediction_hidden_dim: hidden size of the prediction head (4096).
        queue_size: projections in the support set (the paper's 98304 suits ImageNet; 4096
            suits MedMNIST-sized training sets, as for MoCo).
        augment: first view: BYOL's augmentation, as the paper.
        augment_second: second view: BYOL's second view.
    """

    temperature: float = 0.1
    projection_dim: int = 256
    hidden_dim: int = 2048
    prediction_hidden_dim: int = 4096
    queue_size: int = 4096
    augment: AugmentConfig = field(default_factory=lambda: byol_views()[0])
    augment_second: AugmentConfig | None = field(default_factory=lambda: byol_views()[1])


@register_method("nnclr")
class NNCLR(PretrainMethod):
    """NNCLR (see module docstring)."""

    Config = NNCLRConfig
    min_batch_size = 2  # batch norm in the heads, and one negative

    def __init__(self, encoder: Encoder, config: NNCLRConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        out = config.projection_dim
        self.projection_head = NNCLRProjectionHead(encoder.feature_dim, config.hidden_dim, out)
        self.prediction_head = NNCLRPredictionHead(out, config.prediction_hidden_dim, out)
        size = (config.queue_size, out)
        if config.lightly_losses:
            self.support_set = NNMemoryBankModule(size)
            self.criterion = NTXentLoss(config.temperature, gather_distributed=True)
        else:
            self.support_set = HostPointerNNMemoryBank(size, gather_distributed=True)
            self.criterion = SyncFreeNTXentLoss(config.temperature, gather_distributed=True)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z = self.projection_head(self.encoder(self.two_views(images, generator)))
        p0, p1 = self.prediction_head(z).chunk(2)
        z0, z1 = z.detach().chunk(2)
        # as lightly's example: the support set is read for both views, written with the second
        nn0 = self.support_set(z0, update=False)
        nn1 = self.support_set(z1, update=True)
        return 0.5 * (self.criterion(nn0, p1) + self.criterion(nn1, p0))

    def get_extra_state(self) -> dict[str, Any]:
        return queue_state(self.support_set)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        restore_queue(self.support_set, state)
