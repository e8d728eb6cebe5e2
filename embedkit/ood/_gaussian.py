"""Gaussian statistics shared by the Mahalanobis-family scorers (not a scorer itself).

The heavy steps (the covariance's ``X^T X``, its eigendecomposition, the whitened distances)
run in float64 torch on the GPU when torch sees one, else on the CPU; arrays come in and go
out as numpy, so a scorer's fitted state stays plain arrays.
"""

from __future__ import annotations

import numpy as np

from .cache import ScorerCache, cached


def compute_device():
    """The device the scorers' linear algebra runs on: CUDA when torch sees it, else CPU."""
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def as_float64(x: np.ndarray, device=None, cache: ScorerCache | None = None):
    """``x`` as a float64 torch tensor on ``device`` (the compute device by default), which
    callers must not change in place: with a ``cache`` one copy serves every scorer. A
    float32 array goes to a GPU as float32 and widens there (half the bytes, no host pass)."""
    import torch

    device = torch.device(device or compute_device())

    def convert():
        array = np.asarray(x)
        if device.type != "cpu" and array.dtype == np.float32:
            return torch.from_numpy(np.ascontiguousarray(array)).to(device).double()
        return torch.as_tensor(np.asarray(array, dtype=np.float64), device=device)

    if not isinstance(x, np.ndarray):
        return convert()
    return cached(cache, "float64", (x,), str(device), convert)


def whitening(
    covariance: np.ndarray, rcond: float | None = None, cache: ScorerCache | None = None
) -> np.ndarray:
    """``(D, K)`` matrix ``T`` with ``|x T|^2 = x pinv(covariance) x^T``.

    Directions whose eigenvalue is at most ``rcond`` times the largest are dropped, as the
    pseudo-inverse drops them. The default cutoff, ``D`` times float64's machine epsilon, is
    that of ``scipy.linalg.pinvh``, which scikit-learn's ``EmpiricalCovariance`` (and so
    OpenOOD's Mahalanobis scores) use: real but small directions of a rank-deficient
    covariance (dead ReLU units) are kept, rounding noise is not.
    """
    import torch

    if rcond is None:
        rcond = covariance.shape[0] * np.finfo(np.float64).eps

    def compute() -> np.ndarray:
        eigenvalues, eigenvectors = torch.linalg.eigh(as_float64(covariance, cache=cache))
        keep = eigenvalues > rcond * eigenvalues.abs().max()
        return (eigenvectors[:, keep] / eigenvalues[keep].sqrt()).cpu().numpy()

    return cached(cache, "whitening", (covariance,), float(rcond), compute)


def squared_distances(
    x: np.ndarray, means: np.ndarray, transform: np.ndarray, cache: ScorerCache | None = None
) -> np.ndarray:
    """``(N, C)`` squared Mahalanobis distances of rows of ``x`` to each of ``means``."""

    def compute() -> np.ndarray:
        t = as_float64(transform, cache=cache)
        z = as_float64(x, cache=cache) @ t
        m = as_float64(means, cache=cache) @ t
        d = (z * z).sum(1, keepdim=True) - 2.0 * z @ m.T + (m * m).sum(1)
        return d.clamp_min_(0.0).cpu().numpy()

    return cached(cache, "squared_distances", (x, means, transform), None, compute)


def class_statistics(
    x: np.ndarray, y: np.ndarray | None, cache: ScorerCache | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(C, D)`` and the covariance shared by all classes (Lee et al. 2018).

    Without labels, or with multi-label targets, the data is one class.
    """
    return cached(cache, "class_statistics", (x, y), None, lambda: _class_statistics(x, y, cache))


def _class_statistics(
    x: np.ndarray, y: np.ndarray | None, cache: ScorerCache | None
) -> tuple[np.ndarray, np.ndarray]:
    import torch

    if y is None or np.asarray(y).reshape(len(x), -1).shape[1] > 1:
        labels = np.zeros(len(x), dtype=np.int64)
    else:
        labels = np.asarray(y).reshape(-1)
    classes, inverse = np.unique(labels, return_inverse=True)
    x = as_float64(x, cache=cache)
    inverse = torch.as_tensor(inverse.reshape(-1), device=x.device)
    counts = torch.bincount(inverse, minlength=len(classes)).to(x.dtype)
    means = torch.zeros(len(classes), x.shape[1], dtype=x.dtype, device=x.device)
    means.index_add_(0, inverse, x)
    means /= counts[:, None]
    centred = x - means[inverse]
    covariance = centred.T @ centred / len(x)
    return means.cpu().numpy(), covariance.cpu().numpy()
