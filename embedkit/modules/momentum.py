"""The exponential moving average of momentum encoders (MoCo, DINO), in one pass.

``average <- m * average + (1 - m) * online`` over every parameter as one multi-tensor
``lerp`` (``torch._foreach_lerp_``). lightly's ``update_momentum`` is a multiply and an add
per parameter: two passes over them, and on a GPU two launches per parameter that the host
pays for. The two agree to float rounding (tested against lightly's). Upstream change that
would let this go: lightly's ``update_momentum`` taking lists of parameters and using
``torch._foreach_lerp_``.
"""

from __future__ import annotations

import torch
from torch import nn


@torch.no_grad()
def update_momentum(averages: list[nn.Parameter], onlines: list[nn.Parameter], m: float) -> None:
    """``average <- m average + (1 - m) online`` for each pair, in place."""
    torch._foreach_lerp_(averages, onlines, 1.0 - m)
