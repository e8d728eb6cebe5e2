"""Losses that replace lightly's for speed, each the same function as lightly's (tested
against it, values and gradients) and each with a way back to it: a method's
``lightly_losses`` parameter (``--param lightly_losses=true``) runs lightly's own loss,
memory bank and momentum update instead.

- ``ntxent``: ``SyncFreeNTXentLoss`` (SimCLR, MoCo v1/v2), NT-Xent without host waits.
- ``gram``: ``GramBarlowTwinsLoss``, ``GramVICRegLoss``, their D x D sums through N x N Gram
  matrices.
- ``dino``: ``FusedDINOLoss``, DINO's cross-entropy by blocks of views with its gradient
  written out.
- ``normalize``: ``normalize``, ``F.normalize`` with its gradient written out.
- ``dcl``: ``SyncFreeDCLLoss``, DCL and DCLW without host waits.

Each module says what upstream change would let it go. Tested with lightly 1.6
(``pyproject.toml`` pins the minor version).
"""

from .dcl import SyncFreeDCLLoss
from .dino import FusedDINOLoss
from .gram import GramBarlowTwinsLoss, GramVICRegLoss
from .normalize import normalize
from .ntxent import SyncFreeNTXentLoss

__all__ = [
    "FusedDINOLoss",
    "GramBarlowTwinsLoss",
    "GramVICRegLoss",
    "SyncFreeDCLLoss",
    "SyncFreeNTXentLoss",
    "normalize",
]
