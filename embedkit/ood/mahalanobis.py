"""Mahalanobis distance to the closest class-conditional Gaussian [0].

Class means and one covariance shared by all classes are estimated on the ID training
embeddings; the score is minus the smallest squared Mahalanobis distance to a class mean.

[0] Lee et al. 2018, A Simple Unified Framework for Detecting Out-of-Distribution Samples
    and Adversarial Attacks, arXiv:1807.03888.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._gaussian import class_statistics, squared_distances, whitening
from .base import OODScorer
from .cache import ScorerCache


@register_scorer("mahalanobis")
class MahalanobisScorer(OODScorer):
    """Minus the minimum class-conditional Mahalanobis distance (shared covariance)."""

    def __init__(self) -> None:
        pass

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> MahalanobisScorer:
        self._cache = cache
        self.means_, covariance = class_statistics(X, y, cache)
        self.transform_ = whitening(covariance, cache=cache)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("means_", "transform_")
        return -squared_distances(X, self.means_, self.transform_, self._cache).min(axis=1)
