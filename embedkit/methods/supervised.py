"""The supervised baseline: the same backbone trained on the labels with a linear classifier.

Cross-entropy for single-label datasets; binary cross-entropy per label for multi-label ones
(ChestMNIST's labels arrive as one 0/1 column per finding). Views get the standard supervised
augmentation (random resized crop and horizontal flip only), so "SSL against supervised from
the same initialisation" compares objectives, not augmentation strength.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import AugmentConfig
from ..backbones import Encoder
from . import register_method
from .base import MethodConfig, PretrainMethod


@dataclass(frozen=True)
class SupervisedConfig(MethodConfig):
    """The supervised baseline's hyperparameters.

    Attributes:
        label_smoothing: of the cross-entropy (0: none).
        augment: random resized crop (0.08-1) and flip, no colour changes or blur.
    """

    label_smoothing: float = 0.0
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0)
    )


@register_method("supervised")
class Supervised(PretrainMethod):
    """A linear classifier on the encoder, trained with (binary) cross-entropy."""

    Config = SupervisedConfig
    min_batch_size = 2  # batch norm in training mode

    def __init__(
        self, encoder: Encoder, config: SupervisedConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.classifier = nn.Linear(encoder.feature_dim, n_classes)

    def output_head(self) -> nn.Module:
        return self.classifier

    def training_step(self, images, labels, generator) -> torch.Tensor:
        if labels is None:
            raise ValueError("the supervised baseline needs labels")
        logits = self.classifier(self.encoder(self.augment(images, generator)))
        if labels.shape[1] > 1:  # multi-label: one 0/1 column per label
            return F.binary_cross_entropy_with_logits(logits, labels.float())
        return F.cross_entropy(
            logits, labels[:, 0].long(), label_smoothing=self.config.label_smoothing
        )
