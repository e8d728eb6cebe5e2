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
    """Largest class probability (largest label probability for multi-label data), scored
    as its logarithm.

    Args:
        l2: L2 strength of the linear probe.
    """

    def __init__(self, l2: float = 1e-4) -> None:
        self.l2 = l2

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """The largest log-probability: the same ranking as the largest probability, without
        the float saturation at 1.0 that large logits cause (all such samples would tie)."""
        logits = np.asarray(self.logits(X), dtype=np.float64)
        if self.head_.multi_label:  # log sigmoid(z) = -log(1 + exp(-z))
            return (-np.logaddexp(0.0, -logits)).max(axis=1)
        # log softmax at the top class = -log(1 + sum of exp(z_j - z_max) over the others),
        # which keeps exp(-560) = 5e-244 where max(z) - logsumexp(z) rounds to 0
        top = logits.argmax(axis=1)
        others = np.exp(logits - logits[np.arange(len(logits)), top][:, None])
        others[np.arange(len(logits)), top] = 0.0
        return -np.log1p(others.sum(axis=1))
