"""Deep nearest-neighbour OOD score [0]: distance to the k-th nearest training embedding.

Embeddings are L2-normalised; the score is minus the Euclidean distance to the k-th nearest
neighbour in the in-distribution training bank, so higher = more in-distribution.

[0] Sun et al. 2022, Out-of-distribution detection with deep nearest neighbors,
    arXiv:2204.06507.
"""

from __future__ import annotations

import numpy as np

from ..primitives.neighbors import NeighborIndex
from . import register_scorer
from .base import OODScorer
from .cache import ScorerCache


@register_scorer("knn")
class KNNScorer(OODScorer):
    """k-th nearest neighbour distance on normalised embeddings.

    Args:
        k: which neighbour's distance is the score (50, as Sun et al. for CIFAR-scale banks).
    """

    def __init__(self, k: int = 50) -> None:
        self.k = k

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> KNNScorer:
        self._cache = cache
        self.index_ = NeighborIndex(X, metric="cosine")  # normalised where it searches
        return self

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("index_")
        queries = X
        kept = self._cache is not None and self._cache.is_kept(X)
        if self.index_.backend == "torch" and kept:  # searched again for each ID dataset
            where = (self.index_.metric, str(self.index_.bank.device))
            queries = self._cached("rows", (X,), where, lambda: self.index_.device_rows(X))
        similarity, _ = self.index_.search(queries, self.k)
        kth = np.clip(similarity[:, -1].astype(np.float64), -1.0, 1.0)
        return -np.sqrt(np.maximum(2.0 - 2.0 * kth, 0.0))  # |a - b| for unit a, b
