"""The contract every OOD scorer follows (scikit-learn's estimator shape)."""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, ClassVar, TypeVar

import numpy as np
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError

from ..errors import EmbedkitError
from .cache import ScorerCache, cached

T = TypeVar("T")


class NotFittedError(EmbedkitError, SklearnNotFittedError):
    """``score_samples`` called before ``fit`` (scikit-learn's ``NotFittedError`` too)."""


class OODScorer(BaseEstimator):
    """Scores embeddings by how in-distribution they look.

    ``fit(X, y=None, cache=None)`` learns from the in-distribution training split and returns
    ``self``; learned state lives in attributes ending in ``_``. ``score_samples(X)`` returns
    one score per row, **higher = more in-distribution** (as scikit-learn and OpenOOD).
    Hyperparameters are keyword arguments of ``__init__`` stored under the same names
    (scikit-learn's ``get_params``, ``set_params`` and ``clone`` work on them). ``cache``, a
    ``ScorerCache`` that ``evaluate_ood`` hands in, shares work between the scorers of one ID
    dataset; it is not a parameter, not learned state and not pickled.
    """

    name: ClassVar[str]
    _cache: ScorerCache | None = None

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> OODScorer:
        raise NotImplementedError

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _cached(self, kind: str, arrays: tuple, extra: Hashable, compute: Callable[[], T]) -> T:
        """``compute()``, shared through the cache given to ``fit`` (if any)."""
        return cached(self._cache, kind, arrays, extra, compute)

    def _check_fitted(self, *attributes: str) -> None:
        if not all(hasattr(self, a) for a in attributes):
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(X) first")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(super().__getstate__())  # a copy: Python's own is the live __dict__
        state.pop("_cache", None)  # shared work of one evaluation, not the scorer's state
        return state
