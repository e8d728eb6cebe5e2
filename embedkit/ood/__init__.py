"""The registry of OOD scorers: one file per scorer, the file name is the key."""

from __future__ import annotations

from ..registry import Registry
from .base import NotFittedError, OODScorer

SCORERS: Registry[type[OODScorer]] = Registry("scorer")
register_scorer = SCORERS.register
get_scorer = SCORERS.__getitem__

from . import (  # noqa: E402,F401  (each registers itself)
    energy,
    knn,
    mahalanobis,
    maxlogit,
    msp,
    relative_mahalanobis,
    residual,
    vim,
)

__all__ = ["SCORERS", "NotFittedError", "OODScorer", "get_scorer", "register_scorer"]
