"""Residual score [0]: minus the norm of the embedding outside the principal subspace.

The subspace and its origin are ViM's (see ``vim.py``); the score uses no logits.

[0] Wang et al. 2022, ViM: Out-Of-Distribution with Virtual-logit Matching, arXiv:2203.10807.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._logits import LogitScorer, ResidualSpace, principal_dim
from .cache import ScorerCache


@register_scorer("residual")
class ResidualScorer(LogitScorer):
    """Minus the residual norm.

    Args:
        dim: principal dimension (as for ``vim``).
        l2: L2 strength of the linear probe that sets the origin.
    """

    def __init__(self, dim: int | None = None, l2: float = 1e-4) -> None:
        self.dim = dim
        self.l2 = l2

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> ResidualScorer:
        super().fit(X, y, cache)
        self.space_ = ResidualSpace(
            X, self.head_.weight, self.head_.bias, principal_dim(X.shape[1], self.dim), cache
        )
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("space_")
        return -self.space_.norm(X)
