"""Gaussian statistics shared by the Mahalanobis-family scorers (not a scorer itself)."""

from __future__ import annotations

import numpy as np


def whitening(covariance: np.ndarray, rcond: float | None = None) -> np.ndarray:
    """``(D, K)`` matrix ``T`` with ``|x T|^2 = x pinv(covariance) x^T``.

    Directions whose eigenvalue is at most ``rcond`` times the largest are dropped, as the
    pseudo-inverse drops them. The default cutoff, ``D`` times float64's machine epsilon, is
    that of ``scipy.linalg.pinvh``, which scikit-learn's ``EmpiricalCovariance`` (and so
    OpenOOD's Mahalanobis scores) use: real but small directions of a rank-deficient
    covariance (dead ReLU units) are kept, rounding noise is not.
    """
    if rcond is None:
        rcond = covariance.shape[0] * np.finfo(np.float64).eps
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    keep = eigenvalues > rcond * np.abs(eigenvalues).max()
    return eigenvectors[:, keep] / np.sqrt(eigenvalues[keep])


def squared_distances(x: np.ndarray, means: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """``(N, C)`` squared Mahalanobis distances of rows of ``x`` to each of ``means``."""
    z = np.asarray(x, dtype=np.float64) @ transform
    m = means @ transform
    d = (z * z).sum(1, keepdims=True) - 2.0 * z @ m.T + (m * m).sum(1)
    return np.maximum(d, 0.0)


def class_statistics(x: np.ndarray, y: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Class means ``(C, D)`` and the covariance shared by all classes (Lee et al. 2018).

    Without labels, or with multi-label targets, the data is one class.
    """
    x = np.asarray(x, dtype=np.float64)
    if y is None or np.asarray(y).reshape(len(x), -1).shape[1] > 1:
        labels = np.zeros(len(x), dtype=np.int64)
    else:
        labels = np.asarray(y).reshape(-1)
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse)
    means = np.zeros((len(classes), x.shape[1]))
    np.add.at(means, inverse, x)
    means /= counts[:, None]
    centred = x - means[inverse]
    return means, centred.T @ centred / len(x)
