"""DINO [0]: self-distillation between a student and a momentum teacher over multi-crop views.

Two global crops go through the teacher; the global and ``n_local`` small local crops go
through the student, whose softmax must match the teacher's centred, sharpened softmax of
the other views (lightly's ``DINOProjectionHead``, and ``DINOLoss`` computed by blocks of
views with a written-out gradient: ``embedkit.losses.dino``). The teacher temperature
warms up linearly over the first ``teacher_temp_warmup`` of training, the teacher momentum
rises from 0.996 to 1 on a cosine, and the head's last layer stays frozen during the first
epoch. Local crops are ``96/224`` of the image side, rounded to the ViT patch size.

[0] Caron et al. 2021, Emerging Properties in Self-Supervised Vision Transformers,
    arXiv:2104.14294.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from lightly.loss import DINOLoss
from lightly.models.modules import DINOProjectionHead

from ..augment import AugmentConfig, augment_views, small_views
from ..backbones import Encoder
from ..losses import FusedDINOLoss
from . import register_method
from ._momentum import MomentumMethod
from .base import RewrittenLossConfig

_JITTER = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)


@dataclass(frozen=True)
class DINOConfig(RewrittenLossConfig):
    """DINO's hyperparameters (the paper's ViT-S/16 defaults).

    Attributes:
        output_dim: prototypes of the last layer (65536).
        hidden_dim: hidden size of the head's MLP (2048).
        bottleneck_dim: size before the weight-normalised last layer (256).
        batch_norm: batch norm in the head (off, as for ViTs).
        student_temp: 0.1.
        warmup_teacher_temp: teacher temperature at the start (0.04) ...
        teacher_temp: ... reached after ``teacher_temp_warmup`` of training (0.04; 0.07 for
            long runs).
        teacher_temp_warmup: share of training with the linear temperature warmup.
        center_momentum: of the teacher output's centre (0.9).
        momentum: starting teacher momentum (0.996) ...
        momentum_end: ... raised to 1 on a cosine.
        n_local: number of local crops (6).
        local_scale: area range of the local crops.
        freeze_last_layer_epochs: epochs with the head's last layer frozen (1).
        augment: first global crop (area 0.4-1, blur always).
        augment_second: second global crop (blur 0.1, solarisation 0.2).
    """

    output_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    batch_norm: bool = False
    student_temp: float = 0.1
    warmup_teacher_temp: float = 0.04
    teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.3
    center_momentum: float = 0.9
    momentum: float = 0.996
    momentum_end: float = 1.0
    n_local: int = 6
    local_scale: tuple[float, float] = (0.05, 0.4)
    freeze_last_layer_epochs: int = 1
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(min_scale=0.4, **_JITTER, blur_prob=1.0)
    )
    augment_second: AugmentConfig | None = field(
        default_factory=lambda: AugmentConfig(
            min_scale=0.4, **_JITTER, blur_prob=0.1, solarize_prob=0.2
        )
    )


@register_method("dino")
class DINO(MomentumMethod):
    """DINO (see module docstring)."""

    Config = DINOConfig
    min_batch_size = 2

    def __init__(self, encoder: Encoder, config: DINOConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)

        def make_head() -> DINOProjectionHead:
            with warnings.catch_warnings():  # lightly's head uses the older weight_norm
                warnings.filterwarnings("ignore", "`torch.nn.utils.weight_norm`", FutureWarning)
                return DINOProjectionHead(
                    encoder.feature_dim,
                    config.hidden_dim,
                    config.bottleneck_dim,
                    config.output_dim,
                    batch_norm=config.batch_norm,
                    freeze_last_layer=config.freeze_last_layer_epochs,
                )

        self.projection_head = make_head()
        self.init_momentum_branch(make_head)
        loss = DINOLoss if config.lightly_losses else FusedDINOLoss
        self.criterion = loss(
            output_dim=config.output_dim,
            warmup_teacher_temp=config.warmup_teacher_temp,
            teacher_temp=config.teacher_temp,
            student_temp=config.student_temp,
            center_momentum=config.center_momentum,
        )
        self.augment_local = small_views(
            config.augment, config.local_scale, image_size, encoder.patch_size, blur_prob=0.5
        )

    def teacher_temperature(self) -> float:
        """The teacher temperature at the current ``progress``."""
        cfg = self.config
        warm = min(1.0, self.progress / cfg.teacher_temp_warmup) if cfg.teacher_temp_warmup else 1
        return cfg.warmup_teacher_temp + warm * (cfg.teacher_temp - cfg.warmup_teacher_temp)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        n = len(images)
        global_views = self.two_views(images, generator)
        # each head's output over stacked views, as (views, batch, dim) blocks
        teacher = self.momentum_forward(global_views).unflatten(0, (2, n))
        student = [self.projection_head(self.encoder(global_views)).unflatten(0, (2, n))]
        if self.config.n_local:
            local_augments = [self.augment_local] * self.config.n_local
            local_views = augment_views(images, local_augments, generator)
            local = self.projection_head(self.encoder(local_views))
            student.append(local.unflatten(0, (self.config.n_local, n)))
        if self.config.lightly_losses:  # lightly's loss takes one tensor per view
            teacher = list(teacher.unbind(0))
            student = [view for block in student for view in block.unbind(0)]
        return self.criterion(teacher, student, teacher_temp=self.teacher_temperature())

    def compile_loss(self) -> None:
        if not self.config.lightly_losses:  # lightly's loss stays as written
            self.criterion.compile()

    def before_optimizer_step(self) -> None:
        self.projection_head.cancel_last_layer_gradients(self.epoch)
