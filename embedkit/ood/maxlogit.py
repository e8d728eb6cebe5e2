"""Maximum logit [0] of a linear probe on the embeddings.

[0] Hendrycks et al. 2022, Scaling Out-of-Distribution Detection for Real-World Settings,
    arXiv:1911.11132.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._logits import LogitScorer


@register_scorer("maxlogit")
class MaxLogitScorer(LogitScorer):
    """Largest logit of the probe.

    Args:
        l2: L2 strength of the linear probe.
    """

    def __init__(self, l2: float = 1e-4) -> None:
        self.l2 = l2

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return self.logits(X).max(axis=1)
