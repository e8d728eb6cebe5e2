"""What momentum-encoder methods share (not a method itself): MoCo v1/v2/v3 and DINO.

The online branch is the encoder and its projection head; the momentum (key, teacher)
branch is their exponential moving average, updated after every optimiser step with a
momentum that rises from ``config.momentum`` to ``config.momentum_end`` on a cosine
schedule over training (constant when the two are equal, as in MoCo v1/v2).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
from lightly.models.utils import deactivate_requires_grad
from lightly.models.utils import update_momentum as lightly_update_momentum
from torch import nn

from ..modules import update_momentum
from .base import PretrainMethod


class MomentumMethod(PretrainMethod):
    """Base of methods with a moving-average copy of ``encoder`` and ``projection_head``.

    Subclasses build ``self.projection_head`` and then call ``init_momentum_branch()``.
    """

    encoder_momentum: nn.Module
    projection_head_momentum: nn.Module

    def init_momentum_branch(self, make_head: Callable[[], nn.Module] | None = None) -> None:
        """Copy the online encoder and head into frozen momentum modules.

        Args:
            make_head: builds a fresh head to load the online head's weights into, for heads
                that ``copy.deepcopy`` cannot copy (weight-normalised layers).
        """
        self.encoder_momentum = copy.deepcopy(self.encoder)
        if make_head is None:
            self.projection_head_momentum = copy.deepcopy(self.projection_head)
        else:
            self.projection_head_momentum = make_head()
            self.projection_head_momentum.load_state_dict(self.projection_head.state_dict())
        deactivate_requires_grad(self.encoder_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def momentum_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        """(online, momentum) module pairs that ``after_step`` averages."""
        return [
            (self.encoder, self.encoder_momentum),
            (self.projection_head, self.projection_head_momentum),
        ]

    def momentum_at(self, progress: float) -> float:
        """The averaging momentum once ``progress`` (0 to 1) of training is done."""
        start = self.config.momentum
        end = getattr(self.config, "momentum_end", start)
        return end - (end - start) * (math.cos(math.pi * min(1.0, progress)) + 1) / 2

    @torch.no_grad()
    def momentum_forward(self, views: torch.Tensor) -> torch.Tensor:
        """The momentum branch's output (in the online branch's train/eval mode)."""
        for module in (self.encoder_momentum, self.projection_head_momentum):
            if module.training != self.training:  # ``train()`` walks every submodule
                module.train(self.training)
        return self.projection_head_momentum(self.encoder_momentum(views)).detach()

    def _walk(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The momentum and online parameters, from ``parameters()`` of every pair."""
        averages, onlines = [], []
        for online, average in self.momentum_pairs():
            averages += average.parameters()
            onlines += online.parameters()
        return averages, onlines

    def _averaged_parameters(self) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
        """The momentum branch's parameters and the online ones each averages, in order.

        ``parameters()`` walks every submodule (~0.4 ms per ResNet-50 on a CPU core, host time
        a GPU waits for), so the modules that hold parameters are listed once and the
        parameters read from them on each call: a parameter replaced by a new one
        (``load_state_dict(assign=True)``, conversions that make new ones) is still the one
        averaged. Where that list does not give what the walk gives (a parameter shared
        between modules), the walk is kept.
        """
        if "_parameter_owners" not in self.__dict__:
            pairs = self.momentum_pairs()  # (online, momentum): momentum side first below
            sides = [
                [m for pair in pairs for m in pair[i].modules() if m._parameters] for i in (1, 0)
            ]
            same = all(
                len(held) == len(walked) and all(a is b for a, b in zip(held, walked, strict=True))
                for held, walked in zip(map(_held, sides), self._walk(), strict=True)
            )
            self.__dict__["_parameter_owners"] = sides if same else None
        owners = self.__dict__["_parameter_owners"]
        return self._walk() if owners is None else (_held(owners[0]), _held(owners[1]))

    @torch.no_grad()
    def after_step(self, progress: float) -> None:
        # average <- m average + (1 - m) online, as one multi-tensor lerp over all parameters
        # (embedkit.modules.momentum), or lightly's update_momentum pair by pair
        m = self.momentum_at(progress)
        if getattr(self.config, "lightly_losses", False):
            for online, average in self.momentum_pairs():
                lightly_update_momentum(online, average, m)
        else:
            update_momentum(*self._averaged_parameters(), m)


def _held(modules: list[nn.Module]) -> list[nn.Parameter]:
    """The parameters that ``modules`` hold themselves (not their submodules'), in order."""
    return [p for module in modules for p in module._parameters.values() if p is not None]
