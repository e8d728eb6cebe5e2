"""What every pretraining method provides to the training loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from ..augment import AugmentConfig, BatchAugment, augment_views
from ..backbones import Encoder


@dataclass(frozen=True)
class MethodConfig:
    """Base of each method's hyperparameters (a frozen dataclass saved in the run config).

    Attributes:
        augment: view augmentation strengths (lightly's SimCLRTransform defaults).
        augment_second: the second view's, for asymmetric views (BYOL-style blur and
            solarisation); None draws both views like the first.
    """

    augment: AugmentConfig = field(default_factory=AugmentConfig)
    augment_second: AugmentConfig | None = None


@dataclass(frozen=True)
class RewrittenLossConfig(MethodConfig):
    """Base of the methods whose loss, queue or momentum update embedkit rewrites for speed
    (``embedkit.losses``, ``embedkit.modules``).

    Attributes:
        lightly_losses: run lightly's own loss, memory bank and momentum update instead of
            embedkit's rewrites: the same functions to float rounding, slower on a GPU. The
            reference, should a rewrite ever be in doubt.
    """

    lightly_losses: bool = False


class PretrainMethod(nn.Module):
    """An encoder plus the heads and loss that train it.

    Subclasses set ``name`` and ``Config`` and implement ``training_step``. The loop calls
    ``training_step`` on float images in [0, 1] of shape ``(B, C, H, W)`` with a CPU
    generator for the augmentations (labels are given for the supervised baseline),
    ``before_optimizer_step`` after the backward pass and
    ``after_step`` after each optimiser step (for momentum encoders). Before each step it sets
    ``progress`` (0 to 1 over training) and ``epoch``, for schedules inside the loss.

    Args:
        encoder: the backbone being trained; exported at the end of the run.
        config: the method's hyperparameters.
        image_size: side of the training images in pixels.
        n_classes: classes of the training data (used by the supervised baseline).
    """

    name: ClassVar[str]
    Config: ClassVar[type[MethodConfig]] = MethodConfig
    min_batch_size: ClassVar[int] = 2
    vit_only: ClassVar[bool] = False  # masks patch tokens (MAE, MSN): a ViT backbone only

    def __init__(
        self, encoder: Encoder, config: MethodConfig, image_size: int, n_classes: int
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.config = config
        self.image_size = image_size
        self.n_classes = n_classes
        self.augment = BatchAugment(image_size, config.augment)
        self.augment_second = BatchAugment(image_size, config.augment_second or config.augment)
        self.progress = 0.0
        self.epoch = 0

    def training_step(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> torch.Tensor:
        """Return the loss of one batch."""
        raise NotImplementedError

    def two_views(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Two augmented views of every image, stacked into one batch (first views first),
        augmented in one call."""
        return augment_views(images, [self.augment, self.augment_second], generator)

    def output_head(self) -> nn.Module | None:
        """The head whose output ``embed --with-head`` stores beside the backbone features
        (the projection head; the classifier for the supervised baseline)."""
        return getattr(self, "projection_head", None)

    def compile_loss(self) -> None:
        """``torch.compile`` the method's own loss where that keeps it exact (``pretrain
        --compile``): DINO's, whose passes over its 65,536 prototypes fuse, and MoCo v1/v2's
        against their queue. The others are small beside their networks, or gather across
        processes inside the loss; they stay as written."""

    def before_optimizer_step(self) -> None:
        """Hook between the backward pass and the optimiser step (to drop gradients)."""

    def after_step(self, progress: float) -> None:
        """Hook after each optimiser step; ``progress`` runs from 0 to 1 over training."""
