"""What MoCo v1 and v2 share (not a method itself): a momentum encoder and a queue.

The query branch is the encoder and its projection head; the key branch is an exponential
moving average of both (``after_step``). Keys of past batches wait in a queue as negatives
(lightly's memory bank inside ``NTXentLoss``). The queue is kept in the module's state
(``get_extra_state``), so a resumed run continues with the same negatives.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from lightly.loss import NTXentLoss
from lightly.models.utils import deactivate_requires_grad, update_momentum
from torch import nn

from ..backbones import Encoder
from .base import PretrainMethod


class MomentumQueueMethod(PretrainMethod):
    """Base of MoCo v1/v2; subclasses build ``projection_head`` in ``make_head``."""

    def make_head(self, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def __init__(self, encoder: Encoder, config, image_size: int, n_classes: int) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = self.make_head(encoder.feature_dim)
        self.encoder_momentum = copy.deepcopy(encoder)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.encoder_momentum)
        deactivate_requires_grad(self.projection_head_momentum)
        self.criterion = NTXentLoss(
            temperature=config.temperature,
            memory_bank_size=(config.queue_size, config.projection_dim),
            gather_distributed=True,
        )

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs that ``after_step`` averages."""
        return [
            (self.encoder, self.encoder_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]

    def training_step(self, images, labels, generator) -> torch.Tensor:
        query_views, key_views = self.two_views(images, generator).chunk(2)
        query = self.projection_head(self.encoder(query_views))
        with torch.no_grad():
            self.encoder_momentum.train(self.training)
            key = self.projection_head_momentum(self.encoder_momentum(key_views))
        return self.criterion(query, key.detach())

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        for online, momentum in self.momentum_pairs():
            update_momentum(online, momentum, m=self.config.momentum)

    def get_extra_state(self) -> dict[str, Any]:
        bank = self.criterion.memory_bank
        return {
            "bank": bank.bank.detach().cpu().clone(),
            "ptr": bank.bank_ptr.detach().cpu().clone(),
        }

    def set_extra_state(self, state: dict[str, Any]) -> None:
        bank = self.criterion.memory_bank
        bank.bank.copy_(state["bank"])
        bank.bank_ptr.copy_(state["ptr"])
