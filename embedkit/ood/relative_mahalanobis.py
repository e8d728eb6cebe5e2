"""Relative Mahalanobis distance [0]: class-conditional minus background distance.

The background Gaussian is fitted to all ID training embeddings regardless of class; the
score is minus ``min_c MD_c(x) - MD_0(x)``, which discounts directions every class shares.

[0] Ren et al. 2021, A Simple Fix to Mahalanobis Distance for Improving Near-OOD Detection,
    arXiv:2106.09022.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._gaussian import class_statistics, squared_distances, whitening
from .base import OODScorer
from .cache import ScorerCache


@register_scorer("relative_mahalanobis")
class RelativeMahalanobisScorer(OODScorer):
    """Minus the minimum class Mahalanobis distance relative to the background Gaussian."""

    def __init__(self) -> None:
        pass

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> RelativeMahalanobisScorer:
        self._cache = cache
        self.means_, covariance = class_statistics(X, y, cache)
        self.transform_ = whitening(covariance, cache=cache)
        self.background_mean_, background = class_statistics(X, None, cache)
        self.background_transform_ = whitening(background, cache=cache)
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("means_", "background_transform_")
        classes = squared_distances(X, self.means_, self.transform_, self._cache).min(axis=1)
        background = squared_distances(
            X, self.background_mean_, self.background_transform_, self._cache
        )
        return -(classes - background[:, 0])
