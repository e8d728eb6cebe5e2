"""What MoCo v1 and v2 share (not a method itself): a momentum encoder and a queue.

Keys of past batches wait in a queue as negatives (lightly's memory bank inside
``NTXentLoss``; by default its write position kept on the host: ``embedkit.losses.ntxent``).
The queue is kept in the module's state (``get_extra_state``), so a resumed run continues
with the same negatives.
"""

from __future__ import annotations

from typing import Any

import torch
from lightly.loss import NTXentLoss
from torch import nn

from ..backbones import Encoder
from ..losses import SyncFreeNTXentLoss
from ..modules import queue_state, restore_queue
from ._momentum import MomentumMethod


class MomentumQueueMethod(MomentumMethod):
    """Base of MoCo v1/v2; subclasses build ``projection_head`` in ``make_head``."""

    def make_head(self, feature_dim: int) -> nn.Module:
        raise NotImplementedError

    def __init__(self, encoder: Encoder, config, image_size: int, n_classes: int) -> None:
        super().__init__(encoder, config, image_size, n_classes)
        self.projection_head = self.make_head(encoder.feature_dim)
        self.init_momentum_branch()
        loss = NTXentLoss if config.lightly_losses else SyncFreeNTXentLoss
        self.criterion = loss(
            temperature=config.temperature,
            memory_bank_size=(config.queue_size, config.projection_dim),
            gather_distributed=True,
        )

    def training_step(self, images, labels, generator) -> torch.Tensor:
        query_views, key_views = self.two_views(images, generator).chunk(2)
        query = self.projection_head(self.encoder(query_views))
        return self.criterion(query, self.momentum_forward(key_views))

    def compile_loss(self) -> None:
        if not self.config.lightly_losses:  # lightly's loss stays as written
            self.criterion.compile()

    def get_extra_state(self) -> dict[str, Any]:
        return queue_state(self.criterion.memory_bank)

    def set_extra_state(self, state: dict[str, Any]) -> None:
        restore_queue(self.criterion.memory_bank, state)
