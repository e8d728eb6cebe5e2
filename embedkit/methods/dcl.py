"""DCL [0]: SimCLR with the positive pair taken out of the contrastive loss's denominator.

Decoupling the positive from the negatives removes the coupling that makes InfoNCE need
large batches, so DCL learns with batches of a few hundred, the budgets of MedMNIST.
``sigma`` > 0 gives DCLW, which weights each positive pair by a von Mises-Fisher kernel of
its similarity. lightly's ``SimCLRProjectionHead`` and ``DCLLoss``/``DCLWLoss``, run by
default as ``embedkit.losses.SyncFreeDCLLoss`` (the same loss without host waits).

[0] Yeh et al. 2022, Decoupled Contrastive Learning, arXiv:2110.06848.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from lightly.loss import DCLLoss, DCLWLoss
from lightly.models.modules import SimCLRProjectionHead

from ..backbones import Encoder
from ..losses import SyncFreeDCLLoss
from . import register_method
from .base import PretrainMethod, RewrittenLossConfig


@dataclass(frozen=True)
class DCLConfig(RewrittenLossConfig):
    """DCL's hyperparameters (the paper's SimCLR setting).

    Attributes:
        temperature: 0.1.
        sigma: DCLW's kernel width (the paper's 0.5); 0 is plain DCL.
        projection_dim: output size of the projection head (128).
        hidden_dim: hidden size of the head; 0 means the backbone's feature size.
    """

    temperature: float = 0.1
    sigma: float = 0.0
    projection_dim: int = 128
    hidden_dim: int = 0


@register_method("dcl")
class DCL(PretrainMethod):
    """DCL/DCLW (see module docstring)."""

    Config = DCLConfig
    min_batch_size = 2  # at least one negative

    def __init__(self, encoder: Encoder, config: DCLConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        hidden = config.hidden_dim or encoder.feature_dim
        self.projection_head = SimCLRProjectionHead(
            encoder.feature_dim, hidden, config.projection_dim
        )
        if not config.lightly_losses:
            self.criterion = SyncFreeDCLLoss(config.temperature, config.sigma, True)
        elif config.sigma > 0:
            self.criterion = DCLWLoss(config.temperature, config.sigma, gather_distributed=True)
        else:
            self.criterion = DCLLoss(config.temperature, gather_distributed=True)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        z0, z1 = self.projection_head(self.encoder(self.two_views(images, generator))).chunk(2)
        return self.criterion(z0, z1)
