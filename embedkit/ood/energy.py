"""Energy score [0]: ``T * logsumexp(logits / T)`` of a linear probe on the embeddings.

[0] Liu et al. 2020, Energy-based Out-of-distribution Detection, arXiv:2010.03759.
"""

from __future__ import annotations

import numpy as np

from . import register_scorer
from ._logits import LogitScorer, logsumexp


@register_scorer("energy")
class EnergyScorer(LogitScorer):
    """Minus the free energy of the probe's logits (higher = more in-distribution).

    Args:
        temperature: ``T``; 1 as in the paper's post-hoc setting.
        l2: L2 strength of the linear probe.
    """

    def __init__(self, temperature: float = 1.0, l2: float = 1e-4) -> None:
        self.temperature = temperature
        self.l2 = l2

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        return self.temperature * logsumexp(self.logits(X) / self.temperature)
