"""SwAV [0]: predict the cluster assignment (code) of one view from another view's features.

Projections of every crop are scored against learnable prototypes; the codes of the two
global crops come from a few Sinkhorn-Knopp iterations that spread the batch equally over the
prototypes, and every crop must predict the codes of the other global crops. Multi-crop adds
``n_local`` small crops (96/224 of the side, as DINO's). Batches of a few hundred give too
few samples to spread over 3000 prototypes, so, as the paper does for small batches, a queue
keeps the global crops' features of the last ``queue_size`` samples; from epoch
``queue_start_epoch``, once full, it joins the batch in the Sinkhorn step. The prototypes are
normalised before each step and frozen during the first epoch(s). lightly's
``SwaVProjectionHead``, ``SwaVPrototypes`` and ``SwaVLoss``; the queue and its fill level are
saved in checkpoints.

[0] Caron et al. 2020, Unsupervised Learning of Visual Features by Contrasting Cluster
    Assignments, arXiv:2006.09882.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from lightly.loss import SwaVLoss
from lightly.models.modules import SwaVProjectionHead, SwaVPrototypes

from ..augment import AugmentConfig, augment_views, small_views
from ..backbones import Encoder
from . import register_method
from .base import MethodConfig, PretrainMethod


@dataclass(frozen=True)
class SwaVConfig(MethodConfig):
    """SwAV's hyperparameters (the paper's ResNet-50 multi-crop setting for small batches).

    Attributes:
        projection_dim: output of the projection head (128).
        hidden_dim: hidden size of the head (2048).
        n_prototypes: prototypes (3000).
        temperature: of the swapped prediction's softmax (0.1).
        sinkhorn_epsilon: entropy regularisation of the codes (0.05).
        sinkhorn_iterations: Sinkhorn-Knopp iterations (3).
        n_local: number of small crops (6).
        local_scale: area range of the small crops (0.05-0.14).
        queue_size: global-crop features kept from past batches (3840, the paper's for batch
            256; 0: no queue).
        queue_start_epoch: the epoch from which the queue fills and, once full, is used (15).
        freeze_prototypes_epochs: epochs with the prototypes frozen (1).
        augment: the global crops (area 0.14-1, SimCLR's colour distortion and blur).
    """

    projection_dim: int = 128
    hidden_dim: int = 2048
    n_prototypes: int = 3000
    temperature: float = 0.1
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    n_local: int = 6
    local_scale: tuple[float, float] = (0.05, 0.14)
    queue_size: int = 3840
    queue_start_epoch: int = 15
    freeze_prototypes_epochs: int = 1
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(min_scale=0.14))


@register_method("swav")
class SwaV(PretrainMethod):
    """SwAV (see module docstring)."""

    Config = SwaVConfig
    min_batch_size = 2  # batch norm in the head

    def __init__(self, encoder: Encoder, config: SwaVConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        out = config.projection_dim
        self.projection_head = SwaVProjectionHead(encoder.feature_dim, config.hidden_dim, out)
        self.prototypes = SwaVPrototypes(out, config.n_prototypes)
        self.criterion = SwaVLoss(
            temperature=config.temperature,
            sinkhorn_iterations=config.sinkhorn_iterations,
            sinkhorn_epsilon=config.sinkhorn_epsilon,
            sinkhorn_gather_distributed=True,
        )
        self.augment_local = small_views(
            config.augment, config.local_scale, image_size, encoder.patch_size
        )
        # the global crops' normalised features, newest first; saved with the model
        self.register_buffer("queue", torch.zeros(2, config.queue_size, out))
        self.queue_filled = 0  # rows of the queue holding features (on the host)

    def _features(self, views: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.projection_head(self.encoder(views)), dim=1)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        with torch.no_grad():
            self.prototypes.normalize()
        n, config = len(images), self.config
        high = self._features(self.two_views(images, generator)).unflatten(0, (2, n))
        high_scores = [self.prototypes(view) for view in high.unbind(0)]
        low_scores = []
        if config.n_local:
            local = augment_views(images, [self.augment_local] * config.n_local, generator)
            low_scores = list(self.prototypes(self._features(local)).chunk(config.n_local))
        queue_scores = None
        if config.queue_size and self.epoch >= config.queue_start_epoch:
            if self.queue_filled >= config.queue_size:
                with torch.no_grad():
                    queue_scores = [self.prototypes(view) for view in self.queue.unbind(0)]
            self._enqueue(high.detach())
        return self.criterion(high_scores, low_scores, queue_scores).reshape(())

    @torch.no_grad()
    def _enqueue(self, features: torch.Tensor) -> None:
        keep = self.queue.shape[1] - features.shape[1]
        if keep > 0:
            self.queue[:, features.shape[1] :] = self.queue[:, :keep].clone()
            self.queue[:, : features.shape[1]] = features
        else:
            self.queue.copy_(features[:, : self.queue.shape[1]])
        self.queue_filled = min(self.queue.shape[1], self.queue_filled + features.shape[1])

    def before_optimizer_step(self) -> None:
        if self.epoch < self.config.freeze_prototypes_epochs:
            for parameter in self.prototypes.parameters():
                parameter.grad = None

    def get_extra_state(self) -> dict[str, Any]:
        return {"queue_filled": torch.tensor([self.queue_filled])}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        self.queue_filled = int(state["queue_filled"][0])
