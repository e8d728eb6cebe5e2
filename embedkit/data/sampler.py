"""Stratified, seeded label-fraction subsets of a training split."""

from __future__ import annotations

import numpy as np

from ..errors import ConfigError


def check_fraction(fraction: float) -> float:
    """Return ``fraction`` if it lies in (0, 1], else raise ConfigError."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(
            f"label fraction {fraction} is outside (0, 1]: use e.g. 0.01 for 1 % of the labels"
        )
    return fraction


def label_fraction_indices(
    labels: np.ndarray, fraction: float, seed: int = 0, multi_label: bool = False
) -> np.ndarray:
    """Choose ``fraction`` of the samples, stratified by class, with every class present.

    The protocol: ``n = int(N * fraction)`` samples in all (at least one per class),
    shared out over the classes in proportion to their sizes by largest remainders; a
    class that would get none gets one, taken from the class with the most. Multi-label
    (``(N, L)`` of 0/1): every label that has positives gets at least one positive sample,
    rarest label first, then random samples fill up to ``int(N * fraction)``.

    Args:
        labels: the training labels.
        fraction: in (0, 1]; 1 returns every index.
        seed: the same seed gives the same subset.
        multi_label: treat columns of ``labels`` as independent binary labels.

    Returns:
        Sorted indices into ``labels``.
    """
    check_fraction(fraction)
    n = len(labels)
    if fraction == 1.0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if multi_label:
        return _multi_label(np.asarray(labels).reshape(n, -1), fraction, rng)
    flat = np.asarray(labels).reshape(n, -1)[:, 0]
    classes, sizes = np.unique(flat, return_counts=True)
    counts = class_counts(sizes, fraction)
    chosen = [
        rng.choice(np.flatnonzero(flat == cls), size=int(take), replace=False)
        for cls, take in zip(classes, counts, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def class_counts(sizes: np.ndarray, fraction: float) -> np.ndarray:
    """Samples per class: ``int(sum(sizes) * fraction)`` in all, proportional by largest
    remainders, at least one per class (taken from the largest allocation)."""
    sizes = np.asarray(sizes, dtype=np.int64)
    total = max(int(sizes.sum() * fraction), len(sizes))
    quotas = sizes * (total / sizes.sum())
    counts = np.floor(quotas).astype(np.int64)
    order = np.lexsort((np.arange(len(sizes)), -(quotas - counts)))  # largest remainder first
    counts[order[: total - counts.sum()]] += 1
    for cls in np.flatnonzero(counts == 0):
        counts[cls] = 1
        counts[np.argmax(counts)] -= 1
    return np.minimum(counts, sizes)


def _multi_label(labels: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    n = len(labels)
    selected = np.zeros(n, dtype=bool)
    positives = labels.sum(axis=0)
    for label in np.argsort(positives, kind="stable"):
        if positives[label] == 0 or labels[selected, label].any():
            continue
        selected[rng.choice(np.flatnonzero(labels[:, label]))] = True
    target = max(int(fraction * n), int(selected.sum()))
    rest = np.flatnonzero(~selected)
    selected[rng.choice(rest, size=target - int(selected.sum()), replace=False)] = True
    return np.flatnonzero(selected)
