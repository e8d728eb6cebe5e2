"""Maximum softmax probability [0] of a linear probe on the embeddings.

[0] Hendrycks & Gimpel 2017, A Baseline for Detecting Misclassified and Out-of-Distribution
    Examples in Neural Networks, arXiv:1610.02136.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._logits import LogitScorer


@register_scorer("msp")
class MSPScorer(LogitScorer):
    """Largest class probability (largest label probability for multi-label data).

    Args:
        l2: L2 strength of the linear probe.
    """

    def __init__(self, l2: float = 1e-4) -> None:
        self.l2 = l2

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        self._check_fitted("head_")
        return self.head_.probabilities(X).max(axis=1)
