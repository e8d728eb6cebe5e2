"""The L-BFGS probe (``protocol="lbfgs"``) reaches scikit-learn's optimum at every L2 of the
default grid, says when it did not converge, and warm-starts along the L2 path without
changing the optimum."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from embedkit.eval import ProbeConfig, probe
from embedkit.eval.probe import fit_probe
from embedkit.primitives.linear import fit_linear

GRID = ProbeConfig().l2_grid


@pytest.fixture(scope="module")
def hard_problem(demo_store):
    """300 random-init 512-d embeddings of 5 classes: nearly separable, so at small L2 the
    optimum lies far out (200 L-BFGS iterations left a gap of 1e-3 at L2 = 1e-4)."""
    train = demo_store.get("demo-natural", "train")
    pick = np.random.default_rng(0).permutation(len(train.labels))[:300]
    x = train.embeddings[pick].astype(np.float64)
    y = train.labels[pick].reshape(-1)
    return x, y


def _objective(x, y, head, l2):
    """``mean CE + l2/2 ||W||^2`` in the standardised space the probe optimises in."""
    mean, std = x.mean(0), np.clip(x.std(0, ddof=1), 1e-6, None)
    weight = head.weight * std  # unfold the standardisation folded into the head
    bias = head.bias + head.weight @ mean
    logits = torch.as_tensor((x - mean) / std @ weight.T + bias)
    loss = F.cross_entropy(logits, torch.as_tensor(y)).item()
    return loss + 0.5 * l2 * float(np.square(weight).sum())


def _sklearn_objective(x, y, l2):
    mean, std = x.mean(0), np.clip(x.std(0, ddof=1), 1e-6, None)
    xs = (x - mean) / std
    clf = LogisticRegression(C=1.0 / (l2 * len(x)), tol=1e-10, max_iter=100_000).fit(xs, y)
    logits = torch.as_tensor(xs @ clf.coef_.T + clf.intercept_)
    loss = F.cross_entropy(logits, torch.as_tensor(y)).item()
    return loss + 0.5 * l2 * float(np.square(clf.coef_).sum())


@pytest.mark.slow
def test_warm_started_path_reaches_scikit_learn_optimum_at_every_l2(hard_problem):
    x, y = hard_problem
    previous = None
    for l2 in sorted(GRID, reverse=True):  # the path fit_probe takes
        head = fit_linear(x, y[:, None], 5, l2=l2, protocol="lbfgs", device="cpu", init=previous)
        previous = head
        assert head.converged
        reference = _sklearn_objective(x, y, l2)
        assert _objective(x, y, head, l2) <= reference + 1e-4, l2


def test_a_fit_stopped_by_its_cap_says_so(hard_problem):
    x, y = hard_problem
    fit = partial(fit_linear, x, y[:, None], 5, protocol="lbfgs", device="cpu")
    capped = fit(l2=1e-5, max_iter=50)
    assert not capped.converged and capped.n_iter == 50
    cold = fit(l2=1e-3)
    assert cold.converged and 50 < cold.n_iter < 5000
    # a warm start from the capped head converges to the same optimum as the cold start
    warm = fit(l2=1e-3, init=capped)
    assert abs(_objective(x, y, warm, 1e-3) - _objective(x, y, cold, 1e-3)) < 1e-6


@pytest.mark.slow
def test_probe_table_records_convergence(hard_problem, demo_store, caplog):
    x, y = hard_problem
    config = ProbeConfig(device="cpu")
    head, setting = fit_probe(x, y[:, None], x, y[:, None], "multi-class", 5, config)
    assert setting["unconverged"] == 0 and head.converged and setting["l2"] in GRID
    table = probe(
        [demo_store], ProbeConfig(datasets=("demo-med",), label_fractions=(1.0,), seeds=(0,))
    )
    assert table["converged"].to_list() == [True]
    assert table["unconverged_fits"].to_list() == [0]


def test_the_probe_fits_a_fractions_seeds_together_as_it_would_one_by_one(demo_store):
    """``probe`` hands each label fraction's seeds to ``fit_probes`` at once: its table
    chooses the same L2 and scores the same as ``fit_probe`` seed by seed."""
    from embedkit.data.sampler import label_fraction_indices

    config = ProbeConfig(datasets=("demo-natural",), label_fractions=(0.1,), seeds=(0, 1, 2))
    table = probe([demo_store], config)
    train, val = demo_store.get("demo-natural", "train"), demo_store.get("demo-natural", "val")
    test = demo_store.get("demo-natural", "test")
    for row in table.iter_rows(named=True):
        subset = label_fraction_indices(train.labels, 0.1, row["seed"])
        head, setting = fit_probe(
            train.embeddings[subset],
            train.labels[subset],
            val.embeddings,
            val.labels,
            "multi-class",
            5,
            config,
            row["seed"],
        )
        assert setting["l2"] == row["l2"]
        predicted = head.probabilities(test.embeddings).argmax(1)
        assert np.mean(predicted == test.labels.reshape(-1)) == pytest.approx(row["accuracy"])
