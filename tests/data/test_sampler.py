import numpy as np
import pytest

from embedkit.data import label_fraction_indices
from embedkit.errors import ConfigError


def _labels():
    return np.repeat(np.arange(4), [500, 200, 40, 3]).reshape(-1, 1)


@pytest.mark.parametrize(
    ("fraction", "expected"),
    [  # n = int(743 * f): 7, 74, 371; the smallest classes get one, taken from class 0
        (0.01, [3, 2, 1, 1]),
        (0.1, [49, 20, 4, 1]),
        (0.5, [250, 100, 20, 1]),
    ],
)
def test_stratified_with_every_class(fraction, expected):
    labels = _labels()
    chosen = label_fraction_indices(labels, fraction, seed=0)
    counts = np.bincount(labels[chosen, 0], minlength=4)
    assert counts.tolist() == expected and counts.sum() == int(743 * fraction)
    assert len(np.unique(chosen)) == len(chosen)


def test_the_stated_protocol_on_dermamnist_sizes():
    """DermaMNIST's training classes at 1 %: int(7007 x 0.01) = 70 images, not the 71 that
    rounding per class gave."""
    sizes = [228, 359, 769, 80, 779, 4693, 99]
    labels = np.repeat(np.arange(7), sizes)
    chosen = label_fraction_indices(labels, 0.01, seed=0)
    counts = np.bincount(labels[chosen], minlength=7)
    assert counts.sum() == 70 and counts.min() >= 1
    quotas = np.array(sizes) * 70 / 7007
    assert np.abs(counts - quotas).max() < 1  # proportional: within one of the exact share


def test_seeded():
    labels = _labels()
    a = label_fraction_indices(labels, 0.1, seed=3)
    np.testing.assert_array_equal(a, label_fraction_indices(labels, 0.1, seed=3))
    assert not np.array_equal(a, label_fraction_indices(labels, 0.1, seed=4))


def test_full_fraction_is_everything():
    np.testing.assert_array_equal(label_fraction_indices(_labels(), 1.0), np.arange(743))


def test_multi_label_keeps_every_label():
    rng = np.random.default_rng(0)
    labels = (rng.random((2000, 14)) < np.linspace(0.002, 0.3, 14)).astype(np.int64)
    chosen = label_fraction_indices(labels, 0.01, seed=1, multi_label=True)
    assert labels[chosen].sum(axis=0).min() >= 1
    assert 20 <= len(chosen) <= 20 + 14  # int(0.01 * 2000), plus at most one per label


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_range(fraction):
    with pytest.raises(ConfigError, match=r"outside \(0, 1\]"):
        label_fraction_indices(_labels(), fraction)
