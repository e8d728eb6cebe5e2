"""Newton's probe solver reaches scikit-learn's optimum (binary, softmax, multi-label, fewer
samples than features, features of lower rank than their number), agrees with L-BFGS, and
hands the multi-label heads it would solve slowly to L-BFGS."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from embedkit.eval import ProbeConfig, probe
from embedkit.primitives import linear, newton, truncated_newton
from embedkit.primitives.linear import fit_linear, fit_linear_path, fit_linear_paths
from embedkit.primitives.newton import newton_pays, principal_span


def _standardise(x):
    mean, std = x.mean(0), np.clip(x.std(0, ddof=1), 1e-6, None)
    return (x - mean) / std, mean, std


def _objective(x, y, weight, bias, l2, multi_label=False):
    """The probe's objective for a head in the standardised space."""
    logits = torch.as_tensor(x @ weight.T + bias)
    if multi_label:
        loss = F.binary_cross_entropy_with_logits(logits, torch.as_tensor(y, dtype=torch.float64))
    else:
        loss = F.cross_entropy(logits, torch.as_tensor(y))
    return loss.item() + 0.5 * l2 * float(np.square(weight).sum())


def _ours(x, y, n_outputs, l2, multi_label=False, protocol="newton"):
    xs, mean, std = _standardise(x)
    labels = y if multi_label else y[:, None]
    head = fit_linear(x, labels, n_outputs, multi_label, l2=l2, protocol=protocol, device="cpu")
    weight, bias = head.weight * std, head.bias + head.weight @ mean
    return head, _objective(xs, y, weight, bias, l2, multi_label)


def _sklearn(x, y, n_outputs, l2, multi_label=False):
    """scikit-learn's optimum of the same objective: softmax with C = 1/(l2 N); with two
    classes one vector w, the softmax optimum (-w/2, w/2), hence C = 2/(l2 N); per label of a
    multi-label head, C = 1/(L l2 N) (the loss is averaged over labels too)."""
    xs, _, _ = _standardise(x)
    n = len(x)
    if multi_label:
        fits = [
            LogisticRegression(C=1 / (n_outputs * l2 * n), tol=1e-12, max_iter=100_000).fit(
                xs, y[:, j]
            )
            for j in range(n_outputs)
        ]
        weight = np.concatenate([f.coef_ for f in fits])
        bias = np.concatenate([f.intercept_ for f in fits])
    elif n_outputs == 2:
        clf = LogisticRegression(C=2 / (l2 * n), tol=1e-12, max_iter=100_000).fit(xs, y)
        weight = np.concatenate([-clf.coef_, clf.coef_]) / 2
        bias = np.array([-1.0, 1.0]) * clf.intercept_ / 2
    else:
        clf = LogisticRegression(C=1 / (l2 * n), tol=1e-12, max_iter=100_000).fit(xs, y)
        weight, bias = clf.coef_, clf.intercept_
    return _objective(xs, y, weight, bias, l2, multi_label)


@pytest.fixture(scope="module")
def embeddings(demo_store):
    train = demo_store.get("demo-natural", "train")
    pick = np.random.default_rng(0).permutation(len(train.labels))
    return train.embeddings[pick].astype(np.float64), train.labels[pick].reshape(-1)


@pytest.mark.parametrize("l2", [1e-1, 1e-3, 1e-5])
@pytest.mark.parametrize(
    "case",
    [
        "binary",
        "binary, truncated",
        "softmax",
        "multi-label",
        "few samples",
        "low rank",
        "softmax, small block",
    ],
)
def test_newton_reaches_scikit_learn_optimum(embeddings, case, l2, monkeypatch):
    x, y = embeddings
    x = x[:, :64] if case != "few samples" else x[:40]  # 40 samples span 39 of 512 dims
    if case == "low rank":  # 64 features on 12 principal axes: solved in 12 coordinates
        x = x[:, :12] @ np.random.default_rng(1).normal(size=(12, 64))
    if case == "softmax, small block":  # the preconditioner dense on 16 of 65 coordinates
        monkeypatch.setattr(truncated_newton, "TOP_WIDTH", 32)
    truncated = []  # the K of every head solved by truncated Newton

    class Recorded(truncated_newton.Softmax):
        def __init__(self, features, targets, n_classes, l2, **options):
            truncated.append(n_classes)
            super().__init__(features, targets, n_classes, l2, **options)

    monkeypatch.setattr(newton, "Softmax", Recorded)
    if case == "binary, truncated":  # as if the dense systems were too large to form
        monkeypatch.setattr(newton, "DENSE_BINARY_LIMIT", 0)
    y = y[: len(x)]
    multi_label, n_outputs = False, int(y.max()) + 1
    if case.startswith("binary"):
        y = (y >= 2).astype(np.int64)
        n_outputs = 2
    elif case == "multi-label":
        y = np.stack([y >= 2, y % 2 == 0, y == 4], 1).astype(np.int64)
        multi_label, n_outputs = True, 3
    assert newton_pays(*x.shape, n_outputs, multi_label)
    head, ours = _ours(x, y, n_outputs, l2, multi_label)
    assert head.converged and 1 <= head.n_iter <= 30
    assert truncated == ([] if case in ("binary", "multi-label") else [n_outputs])
    reference = _sklearn(x, y, n_outputs, l2, multi_label)
    assert ours <= reference + 1e-8, (ours, reference)
    # and L-BFGS on the same objective agrees (to its own tolerance)
    _, lbfgs = _ours(x, y, n_outputs, l2, multi_label, protocol="lbfgs")
    assert ours <= lbfgs + 1e-9 and lbfgs - ours < 1e-4


def test_the_softmax_solve_ends_once_the_fit_has_settled(embeddings):
    """The conjugate gradient ends as soon as its estimate of the Newton decrement is far
    below the stopping threshold (the last solve of a fit only confirms convergence):
    fewer iterations, the same optimum."""
    x, y = embeddings
    coordinates, _ = principal_span(torch.as_tensor(_standardise(x[:, :64])[0]))
    targets = torch.as_tensor(y)

    class Counted(truncated_newton.Softmax):
        iterations: list[int]

        def _solve(self, *args):
            direction = super()._solve(*args)
            self.iterations = [*getattr(self, "iterations", []), int(self.cg_iterations[0])]
            return direction

    found = {}
    for settled in (0.0, 1e-12):
        problem = Counted(coordinates[None], targets[None], 5, 1e-4, settled=settled)
        theta = torch.zeros(1, 4 * (coordinates.shape[1] + 1), dtype=torch.float64)
        theta, steps, converged = newton._newton(problem, theta, 100, 1e-12)
        assert bool(converged.all())
        found[settled] = (float(problem.value(theta)), int(steps), problem.iterations)
    (full, steps, every), (early, early_steps, ended) = found[0.0], found[1e-12]
    assert early_steps == steps and ended[:-1] == every[:-1]
    assert ended[-1] < every[-1]  # the confirming solve, cut short
    assert abs(early - full) < 1e-12


def _labels(y, case):
    """``(targets, n_outputs, multi_label)`` of a test case from the demo's 5 classes."""
    if case.startswith("binary"):
        return (y >= 2).astype(np.int64)[:, None], 2, False
    if case == "multi-label":
        return np.stack([y >= 2, y % 2 == 0, y == 4], 1).astype(np.int64), 3, True
    return y[:, None], int(y.max()) + 1, False


@pytest.mark.parametrize("case", ["softmax", "binary", "binary, truncated", "multi-label"])
def test_a_batch_of_problems_gives_each_the_optimum_it_has_alone(embeddings, case, monkeypatch):
    """The seeds of a label fraction are solved side by side (``fit_linear_paths``): each
    head is the one its training set gives alone, one set of lower rank than the others
    (its principal coordinates padded) and one of another size (solved on its own)."""
    x, y = embeddings
    x = x[:, :64]
    rng = np.random.default_rng(2)
    subsets = [rng.choice(len(x), size, replace=False) for size in (150, 150, 150, 120)]
    xs = [x[s] for s in subsets]
    xs[1] = xs[1][:, :10] @ rng.normal(size=(10, 64))  # 10 principal axes, not 64
    targets, n_outputs, multi_label = _labels(y, case)
    ys = [targets[s] for s in subsets]
    if case == "binary, truncated":
        monkeypatch.setattr(newton, "DENSE_BINARY_LIMIT", 0)
    batches = []

    def recorded(features, *args, **options):
        batches.append(len(features))
        return newton.fit_newton(features, *args, **options)

    monkeypatch.setattr(linear, "fit_newton", recorded)
    path = (1e-1, 1e-3, 1e-5)
    together = fit_linear_paths(xs, ys, n_outputs, path, multi_label, device="cpu")
    assert batches == [3] * len(path) + [1] * len(path)  # the three of one shape, then one
    for xi, yi, heads in zip(xs, ys, together, strict=True):
        alone = fit_linear_path(xi, yi, n_outputs, path, multi_label, device="cpu")
        standard, mean, std = _standardise(xi)
        labels = yi if multi_label else yi[:, 0]
        for l2, ours, reference in zip(path, heads, alone, strict=True):
            assert ours.converged and reference.converged
            value, expected = (
                _objective(
                    standard, labels, h.weight * std, h.bias + h.weight @ mean, l2, multi_label
                )
                for h in (ours, reference)
            )
            assert abs(value - expected) < 1e-10, (l2, value, expected)


def test_batches_stay_within_their_size(embeddings, monkeypatch):
    x, y = embeddings
    x, y = x[:, :16], y[:, None]
    batches = []

    def recorded(features, *args, **options):
        batches.append(len(features))
        return newton.fit_newton(features, *args, **options)

    monkeypatch.setattr(linear, "fit_newton", recorded)
    monkeypatch.setattr(linear, "BATCH_ELEMENTS", 2 * 100 * 16)
    xs, ys = (
        [x[i * 100 : (i + 1) * 100] for i in range(5)],
        [y[i * 100 : (i + 1) * 100] for i in range(5)],
    )
    fit_linear_paths(xs, ys, 5, (1e-2,), device="cpu")
    assert batches == [2, 2, 1]


def test_sgd_paths_keep_each_set_its_seed(embeddings):
    x, y = embeddings
    x, y = x[:200, :32], y[:200, None]
    together = fit_linear_paths(
        [x, x], [y, y], 5, (1e-3,), protocol="sgd", device="cpu", seeds=[0, 1], epochs=2
    )
    for seed, (head,) in enumerate(together):
        (alone,) = fit_linear_path(
            x, y, 5, (1e-3,), protocol="sgd", device="cpu", seed=seed, epochs=2
        )
        np.testing.assert_array_equal(head.weight, alone.weight)
    assert not np.array_equal(together[0][0].weight, together[1][0].weight)


def test_principal_span_keeps_the_axes_the_features_vary_along():
    rng = np.random.default_rng(0)
    x = torch.as_tensor(rng.normal(size=(200, 9)) @ rng.normal(size=(9, 40)))
    x = x - x.mean(0)
    coordinates, basis = principal_span(x)
    assert coordinates.shape == (200, 9) and basis.shape == (9, 40)
    torch.testing.assert_close(coordinates @ basis, x)
    torch.testing.assert_close(basis @ basis.T, torch.eye(9, dtype=x.dtype))
    gram = coordinates.T @ coordinates  # uncorrelated, by decreasing variance
    assert (gram - torch.diag(gram.diagonal())).abs().max() < 1e-8 * gram[0, 0]
    assert bool((gram.diagonal().diff() <= 0).all())
    # fewer samples than features: the samples' span
    coordinates, basis = principal_span(x[:5] - x[:5].mean(0))
    assert coordinates.shape == (5, 4) and basis.shape == (4, 40)
    # a batch: each set its own axes, the one of lower rank padded with zero axes
    low = x[:, :3] @ torch.as_tensor(rng.normal(size=(3, 40)))
    batch = torch.stack([x, low - low.mean(0)])
    coordinates, basis = principal_span(batch)
    assert coordinates.shape == (2, 200, 9) and basis.shape == (2, 9, 40)
    torch.testing.assert_close(coordinates @ basis, batch)
    assert not coordinates[1, :, 3:].any() and not basis[1, 3:].any()
    torch.testing.assert_close(basis[0], principal_span(x)[1])


def test_newton_warm_start_and_probe_table(embeddings, demo_store):
    x, y = embeddings
    x, y = x[:, :64], (y >= 2).astype(np.int64)[:, None]
    cold = fit_linear(x, y, 2, l2=1e-4, device="cpu")
    strong = fit_linear(x, y, 2, l2=1e-2, device="cpu")
    warm = fit_linear(x, y, 2, l2=1e-4, device="cpu", init=strong)
    assert warm.n_iter < cold.n_iter
    xs, mean, std = _standardise(x)
    warm_value, cold_value = (
        _objective(xs, y[:, 0], h.weight * std, h.bias + h.weight @ mean, 1e-4)
        for h in (warm, cold)
    )
    assert abs(warm_value - cold_value) < 1e-10
    table = probe([demo_store], ProbeConfig(datasets=("demo-med",), seeds=(0, 1)))
    assert table["protocol"].unique().to_list() == ["newton"]
    assert table["converged"].all() and table["unconverged_fits"].sum() == 0


def test_heads_newton_would_solve_slowly_go_to_lbfgs():
    # binary and softmax heads of any size: Newton (truncated Newton for the softmax)
    assert newton_pays(100_000, 2048, 2, False)
    assert newton_pays(1080, 512, 5, False) and newton_pays(78_000, 2048, 14, False)
    # multi-label heads while their systems are few and narrow: 3 labels on 512-d features
    # (within the samples' span the limit is higher), not 14
    assert newton_pays(5000, 512, 3, True) and not newton_pays(5000, 512, 7, True)
    assert newton_pays(400, 512, 7, True)
    assert not newton_pays(78_000, 512, 14, True)
    x = np.random.default_rng(0).normal(size=(400, 256))
    y = np.random.default_rng(1).random((400, 14)) < 0.3
    head = fit_linear(x, y.astype(np.int64), 14, multi_label=True, l2=1e-1, device="cpu")
    assert head.n_iter > 12  # L-BFGS iterations, where Newton takes fewer than 10
