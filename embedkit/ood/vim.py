"""Virtual-logit matching (ViM) [0]: energy minus a scaled residual norm.

The residual is the part of ``x - o`` outside the principal subspace of the ID training
embeddings (``o = -pinv(W) b`` of a linear probe). It is scaled by ``alpha`` so that its
mean on the training data equals the mean maximum logit, and acts as a virtual OOD logit.

[0] Wang et al. 2022, ViM: Out-Of-Distribution with Virtual-logit Matching, arXiv:2203.10807.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._logits import LogitScorer, ResidualSpace, logsumexp, principal_dim
from .cache import ScorerCache


@register_scorer("vim")
class ViMScorer(LogitScorer):
    """``logsumexp(logits) - alpha * residual norm``.

    Args:
        dim: principal dimension, below the feature size; None chooses as the paper
            (1000 for 2048-d features, 512 for 768-d, half the size below that).
        l2: L2 strength of the linear probe.
    """

    def __init__(self, dim: int | None = None, l2: float = 1e-4) -> None:
        self.dim = dim
        self.l2 = l2

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> ViMScorer:
        super().fit(X, y, cache)
        self.dim_ = principal_dim(X.shape[1], self.dim)
        self.space_ = ResidualSpace(X, self.head_.weight, self.head_.bias, self.dim_, cache)
        self.alpha_ = self.logits(X).max(axis=1).mean() / self.space_.norm(X).mean()
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("space_")
        return logsumexp(self.logits(X)) - self.alpha_ * self.space_.norm(X)
