"""Scorers that read a linear classifier fitted on the ID training split (not a scorer)."""

from __future__ import annotations

import logging

import numpy as np

from ..errors import ConfigError
from ..primitives.linear import LinearHead, fit_linear
from ._gaussian import as_float64
from .base import OODScorer
from .cache import ScorerCache, cached

log = logging.getLogger(__name__)


def _shared_head(X: np.ndarray, y: np.ndarray, l2: float, cache: ScorerCache | None):
    """The probe head of ``(X, y)``: with a cache, one fit for every logit scorer of it."""
    return cached(cache, "head", (X, y), float(l2), lambda: _fit_head(X, y, l2))


def _fit_head(X: np.ndarray, y: np.ndarray, l2: float) -> LinearHead:
    y = y.reshape(len(X), -1)
    multi_label = y.shape[1] > 1
    n_outputs = y.shape[1] if multi_label else int(y.max()) + 1
    head = fit_linear(X, y, n_outputs, multi_label, l2=l2)
    if not head.converged:
        log.warning(
            "the linear head of the logit scorers (l2=%g) stopped at the iteration "
            "cap (%d) before converging",
            l2,
            head.n_iter,
        )
    return head


class LogitScorer(OODScorer):
    """Base of logit-based scorers: ``fit`` trains a linear head on ``(X, y)``.

    The head is a full-batch L2-regularised softmax regression (per-label sigmoid for
    multi-label targets) on the ID training embeddings: the embedding store holds no
    classifier, so the probe stands in for the network's own last layer.
    """

    l2: float

    def fit(
        self, X: np.ndarray, y: np.ndarray | None = None, cache: ScorerCache | None = None
    ) -> LogitScorer:
        if y is None:
            raise ConfigError(f"the {self.name} scorer needs the ID training labels")
        self._cache = cache
        self.head_ = _shared_head(X, np.asarray(y), self.l2, cache)
        return self

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The head's float64 logits of ``X`` (on the compute device: ``X``'s float64 copy
        there is the one the Gaussian and residual scorers use)."""
        self._check_fitted("head_")
        head = self.head_

        def compute() -> np.ndarray:
            z = as_float64(X, cache=self._cache) @ as_float64(head.weight, cache=self._cache).T
            return (z + as_float64(head.bias, cache=self._cache)).cpu().numpy()

        return self._cached("logits", (X, head.weight, head.bias), None, compute)


def logsumexp(z: np.ndarray) -> np.ndarray:
    top = z.max(axis=1, keepdims=True)
    return (top + np.log(np.exp(z - top).sum(axis=1, keepdims=True)))[:, 0]


def principal_dim(feature_dim: int, dim: int | None) -> int:
    """ViM's principal dimension: ``dim``, or the paper's choice for the feature size."""
    if dim is None:
        dim = 1000 if feature_dim >= 2048 else 512 if feature_dim >= 768 else feature_dim // 2
    if not 0 < dim < feature_dim:
        raise ConfigError(
            f"principal dimension {dim} must lie between 0 and the feature size {feature_dim}"
        )
    return dim


class ResidualSpace:
    """The space orthogonal to the principal subspace of ``X - origin`` (Wang et al. 2022).

    The origin is ``-pinv(W) b`` of the linear head, where every logit is zero; the principal
    subspace holds the ``dim`` largest eigenvectors of the uncentred covariance about it.
    Computed in float64 on the compute device (``embedkit.ood._gaussian``); the origin and the
    basis are kept as numpy arrays.
    """

    def __init__(
        self,
        X: np.ndarray,
        weight: np.ndarray,
        bias: np.ndarray,
        dim: int,
        cache: ScorerCache | None = None,
    ) -> None:
        self._cache = cache
        self.origin, self.basis = cached(
            cache, "residual_space", (X, weight, bias), dim, lambda: self._fit(X, weight, bias, dim)
        )

    def _fit(self, X: np.ndarray, weight: np.ndarray, bias: np.ndarray, dim: int):
        import torch

        origin = -np.linalg.pinv(weight) @ bias  # (K, D): small, on the CPU as before
        shifted = as_float64(X, cache=self._cache) - as_float64(origin, cache=self._cache)
        eigenvalues, eigenvectors = torch.linalg.eigh(shifted.T @ shifted / len(shifted))
        order = torch.argsort(eigenvalues, descending=True)
        return origin, eigenvectors[:, order[dim:]].contiguous().cpu().numpy()

    def norm(self, X: np.ndarray) -> np.ndarray:
        """Length of each row's component outside the principal subspace."""

        def compute() -> np.ndarray:
            shifted = as_float64(X, cache=self._cache) - as_float64(self.origin, cache=self._cache)
            return (shifted @ as_float64(self.basis, cache=self._cache)).norm(dim=1).cpu().numpy()

        return cached(self._cache, "residual_norm", (X, self.origin, self.basis), None, compute)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": None}  # the evaluation's shared work stays behind
