"""MSN [0]: masked siamese networks; a masked anchor view must match the prototype
assignment of an unmasked target view (ViT).

The anchor branch is the encoder's ViT run on a random ``1 - mask_ratio`` of its patch
tokens (``_masking``) and lightly's ``MSNProjectionHead``; the target branch is their moving
average (``MomentumMethod``) run on the whole other view. Both are scored against learnable
prototypes; the target's soft assignment is sharpened and balanced by Sinkhorn-Knopp, and a
mean-entropy term keeps all prototypes in use (lightly's ``MSNLoss``). ``n_focal`` small
masked crops are anchors too. Masks are drawn from the step's generator (exact resume).

[0] Assran et al. 2022, Masked Siamese Networks for Label-Efficient Learning,
    arXiv:2204.07141.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from lightly.loss import MSNLoss
from lightly.models.modules.heads import MSNProjectionHead
from torch import nn

from ..augment import AugmentConfig, augment_views, small_views
from ..backbones import Encoder
from . import register_method
from ._masking import masked_vit, token_mask
from ._momentum import MomentumMethod
from .base import MethodConfig


@dataclass(frozen=True)
class MSNConfig(MethodConfig):
    """MSN's hyperparameters (the paper's and lightly's ViT-S defaults).

    Attributes:
        mask_ratio: share of the anchor's patches dropped (0.15, lightly's example).
        projection_dim: output of the projection head (256).
        hidden_dim: hidden size of the head (2048).
        n_prototypes: prototypes (1024).
        temperature: of the anchors' and targets' softmax over prototypes (0.1).
        target_temperature: sharpening of the targets (0.25).
        sinkhorn_iterations: balancing of the targets (3; 0: none).
        regularization_weight: weight of the mean-entropy term (1).
        momentum: starting target momentum (0.996) ...
        momentum_end: ... raised to 1 on a cosine schedule.
        n_focal: number of small masked anchor crops (10).
        focal_scale: area range of the focal crops (0.05-0.3).
        augment: the target and anchor crops (area 0.3-1, SimCLR's colour distortion).
    """

    mask_ratio: float = 0.15
    projection_dim: int = 256
    hidden_dim: int = 2048
    n_prototypes: int = 1024
    temperature: float = 0.1
    target_temperature: float = 0.25
    sinkhorn_iterations: int = 3
    regularization_weight: float = 1.0
    momentum: float = 0.996
    momentum_end: float = 1.0
    n_focal: int = 10
    focal_scale: tuple[float, float] = (0.05, 0.3)
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(min_scale=0.3))


@register_method("msn")
class MSN(MomentumMethod):
    """MSN (see module docstring)."""

    Config = MSNConfig
    min_batch_size = 2  # batch norm in the head
    vit_only = True

    def __init__(self, encoder: Encoder, config: MSNConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        self.__dict__["masked"] = masked_vit(encoder)  # shares the encoder's parameters
        self.n_prefix = encoder.backbone.num_prefix_tokens
        self.projection_head = MSNProjectionHead(
            encoder.feature_dim, config.hidden_dim, config.projection_dim
        )
        self.init_momentum_branch()
        self.prototypes = nn.Linear(config.projection_dim, config.n_prototypes, bias=False)
        self.criterion = MSNLoss(
            temperature=config.temperature,
            sinkhorn_iterations=config.sinkhorn_iterations,
            regularization_weight=config.regularization_weight,
            gather_distributed=True,
        )
        self.augment_focal = small_views(
            config.augment, config.focal_scale, image_size, encoder.patch_size
        )

    def _anchors(self, views: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        pixels = self.encoder.standardise(views)
        n_patches = (views.shape[-1] // self.encoder.patch_size) ** 2
        keep, _ = token_mask(
            len(views), n_patches, self.n_prefix, self.config.mask_ratio, generator, views.device
        )
        return self.projection_head(self.masked(pixels, idx_keep=keep))

    def training_step(self, images, labels, generator) -> torch.Tensor:
        target_views, anchor_views = self.two_views(images, generator).chunk(2)
        anchors = [self._anchors(anchor_views, generator)]
        if self.config.n_focal:
            focal = augment_views(images, [self.augment_focal] * self.config.n_focal, generator)
            anchors.append(self._anchors(focal, generator))
        return self.criterion(
            torch.cat(anchors),
            self.momentum_forward(target_views),
            self.prototypes.weight,
            target_sharpen_temperature=self.config.target_temperature,
        )
