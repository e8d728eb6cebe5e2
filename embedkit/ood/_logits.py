"""Scorers that read a linear classifier fitted on the ID training split (not a scorer)."""

from __future__ import annotations

import hashlib
import logging

import numpy as np

from ..errors import ConfigError
from ..primitives.linear import LinearHead, fit_linear
from ._gaussian import as_float64
from ._shared import active, shared
from .base import OODScorer

log = logging.getLogger(__name__)

# The last head fitted, so that msp, energy, maxlogit, vim and residual evaluated on the same
# training embeddings (as ``embedkit ood`` does) share one fit instead of five. The cache is
# keyed on the content of X and y (a BLAKE2 digest) and l2: an array changed in place refits.
_last_head: tuple[str, float, LinearHead] | None = None


def _digest(*arrays: np.ndarray) -> str:
    digest = hashlib.blake2b(digest_size=16)
    for array in arrays:
        array = np.ascontiguousarray(array)
        digest.update(f"{array.dtype}{array.shape}".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


def _shared_head(X: np.ndarray, y: np.ndarray, l2: float) -> LinearHead:
    """The probe head of ``(X, y)``: inside ``sharing()`` keyed on the arrays themselves,
    outside on their content (one digest per fit)."""
    if active():
        return shared("head", (X, y), float(l2), lambda: _fit_head(X, y, l2))
    global _last_head
    key = _digest(X, y)
    if _last_head is not None and _last_head[0] == key and _last_head[1] == l2:
        return _last_head[2]
    head = _fit_head(X, y, l2)
    _last_head = (key, l2, head)
    return head


def _fit_head(X: np.ndarray, y: np.ndarray, l2: float) -> LinearHead:
    y = y.reshape(len(X), -1)
    multi_label = y.shape[1] > 1
    n_outputs = y.shape[1] if multi_label else int(y.max()) + 1
    head = fit_linear(X, y, n_outputs, multi_label, l2=l2)
    if not head.converged:
        log.warning(
            "the linear head of the logit scorers (l2=%g) stopped at the L-BFGS iteration "
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

    def fit(self, X: np.ndarray, y: np.ndarray | None = None) -> LogitScorer:
        if y is None:
            raise ConfigError(f"the {self.name} scorer needs the ID training labels")
        self.head_ = _shared_head(X, np.asarray(y), self.l2)
        return self

    def logits(self, X: np.ndarray) -> np.ndarray:
        """The head's float64 logits of ``X`` (on the compute device: ``X``'s float64 copy
        there is the one the Gaussian and residual scorers use)."""
        self._check_fitted("head_")
        head = self.head_

        def compute() -> np.ndarray:
            z = as_float64(X) @ as_float64(head.weight).T + as_float64(head.bias)
            return z.cpu().numpy()

        return shared("logits", (X, head.weight, head.bias), None, compute)


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

    def __init__(self, X: np.ndarray, weight: np.ndarray, bias: np.ndarray, dim: int) -> None:
        self.origin, self.basis = shared(
            "residual_space", (X, weight, bias), dim, lambda: self._fit(X, weight, bias, dim)
        )

    @staticmethod
    def _fit(X: np.ndarray, weight: np.ndarray, bias: np.ndarray, dim: int):
        import torch

        origin = -np.linalg.pinv(weight) @ bias  # (K, D): small, on the CPU as before
        shifted = as_float64(X) - as_float64(origin)
        eigenvalues, eigenvectors = torch.linalg.eigh(shifted.T @ shifted / len(shifted))
        order = torch.argsort(eigenvalues, descending=True)
        return origin, eigenvectors[:, order[dim:]].contiguous().cpu().numpy()

    def norm(self, X: np.ndarray) -> np.ndarray:
        """Length of each row's component outside the principal subspace."""

        def compute() -> np.ndarray:
            shifted = as_float64(X) - as_float64(self.origin)
            return (shifted @ as_float64(self.basis)).norm(dim=1).cpu().numpy()

        return shared("residual_norm", (X, self.origin, self.basis), None, compute)
