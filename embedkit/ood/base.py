"""The contract every OOD scorer follows (scikit-learn's estimator shape)."""

from __future__ import annotations

import inspect
from typing import Any, ClassVar

import numpy as np

from ..errors import EmbedkitError


class NotFittedError(EmbedkitError, RuntimeError):
    """``score_samples`` called before ``fit``."""


class OODScorer:
    """Scores embeddings by how in-distribution they look.

    ``fit(X, y=None)`` learns from the in-distribution training split and returns ``self``;
    learned state lives in attributes ending in ``_``. ``score_samples(X)`` returns one
    score per row, **higher = more in-distribution** (as scikit-learn and OpenOOD).
    Hyperparameters are keyword arguments of ``__init__`` stored under the same names.
    """

    name: ClassVar[str]

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> OODScorer:
        raise NotImplementedError

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def get_params(self) -> dict[str, Any]:
        """The ``__init__`` keyword arguments and their values (for result tables)."""
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def _check_fitted(self, *attributes: str) -> None:
        if not all(hasattr(self, a) for a in attributes):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(X) first")
