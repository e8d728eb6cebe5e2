"""Linear heads on cached embeddings, in torch, on the GPU when there is one.

Three protocols fit the same model, a linear layer on standardised embeddings with softmax
cross-entropy (binary cross-entropy per label for multi-label datasets):

- ``newton`` (default): the exact optimum of ``mean cross-entropy + l2/2 * ||W||^2`` by
  Newton's method (``embedkit.primitives.newton``) in the features' principal coordinates:
  5-25 steps instead of hundreds to thousands of L-BFGS iterations, within 1e-10 of the
  minimum (a dense solve for binary and multi-label heads, preconditioned conjugate
  gradients for the softmax). Multi-label heads with many labels on wide features
  (``newton.newton_pays``), and any fit on Apple's MPS (no float64), go to L-BFGS, which
  reaches the same optimum.
- ``lbfgs``: full-batch L-BFGS with the same objective: the whole training subset is one batch. It
  runs until a tolerance stops it (largest gradient entry below ``tolerance_grad``, or a change of
  the loss below ``tolerance_change``), with ``max_iter`` only as a safety cap: a head that hit the
  cap says so (``converged=False``). It works in float64: at small L2 the loss of a nearly separable
  problem changes by less than float32 resolves long before the optimum (a gap of 1e-4 left at L2 =
  1e-5 on 512-d features), and each iteration is cheap next to the line search's bookkeeping. The
  objective is ``mean cross-entropy + l2/2 * ||W||^2`` on standardised embeddings, the intercept
  unpenalised: scikit-learn's ``LogisticRegression`` with ``C = 1 / (l2 * N)`` minimises the same
  function (both solvers tested to 1e-4).
- ``sgd``: the benchmark paper's protocol, mini-batch SGD (momentum 0.9, cosine schedule) for
  100 epochs with weight decay.

The returned head maps raw embeddings to logits (the standardisation is folded into it), so
OOD scorers can use its weight and bias in feature space (ViM, residual).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ConfigError
from ..utils import resolve_device
from .first_order import fit_lbfgs, fit_sgd
from .newton import fit_newton, newton_pays, principal_span

PROTOCOLS = ("newton", "lbfgs", "sgd")
# feature values (samples x dimensions, summed over the sets) solved as one Newton batch at
# most: five seeds of 10 % of a 78k-image dataset on 2048-d features, but not 100 % of it
# twice (the batch holds them in float64 a few times over)
BATCH_ELEMENTS = 1 << 27


@dataclass(frozen=True)
class LinearHead:
    """``logits = X @ weight.T + bias`` for raw (unstandardised) embeddings.

    ``converged`` is False when Newton or L-BFGS stopped at its iteration cap rather than at
    a tolerance (always True for the ``sgd`` protocol, which runs a fixed schedule);
    ``n_iter`` counts the Newton steps or L-BFGS iterations (0 for ``sgd``).
    """

    weight: np.ndarray
    bias: np.ndarray
    multi_label: bool
    converged: bool = True
    n_iter: int = 0

    def logits(self, x: np.ndarray) -> np.ndarray:
        # in torch, not numpy: a numpy product wakes OpenBLAS's own threads, which keep
        # spinning after it and then compete with torch's for the cores (the probe scores
        # validation between fits: 30-50 % of its newton time at small label fractions on
        # 2 cores, BENCHMARKS.md)
        weight = torch.as_tensor(self.weight, dtype=torch.float64)
        bias = torch.as_tensor(self.bias, dtype=torch.float64)
        return (torch.as_tensor(np.asarray(x), dtype=torch.float64) @ weight.T + bias).numpy()

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _targets(y: np.ndarray, multi_label: bool, device, dtype: torch.dtype) -> torch.Tensor:
    if multi_label:
        return torch.as_tensor(y, dtype=dtype, device=device)
    return torch.as_tensor(np.asarray(y).reshape(-1), dtype=torch.long, device=device)


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    n_outputs: int,
    multi_label: bool = False,
    l2: float = 1e-4,
    protocol: str = "newton",
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    max_iter: int = 5000,
    tolerance_grad: float = 1e-6,
    tolerance_change: float = 1e-9,
    seed: int = 0,
    device: str = "auto",
    init: LinearHead | None = None,
) -> LinearHead:
    """Fit a linear head on embeddings.

    Args:
        x: ``(N, D)`` embeddings.
        y: ``(N, 1)`` class indices, or ``(N, L)`` 0/1 labels when ``multi_label``.
        n_outputs: classes (or labels).
        l2: L2 penalty on the weights (``lbfgs``) or weight decay (``sgd``).
        protocol: ``newton`` or ``lbfgs`` (full batch, exact) or ``sgd`` (mini-batches for
            ``epochs``).
        epochs, lr, batch_size: of the ``sgd`` protocol.
        max_iter: cap on L-BFGS iterations, and on Newton steps (a fit that reaches it is
            marked unconverged; Newton takes at most 100).
        tolerance_grad, tolerance_change: L-BFGS stops when the largest gradient entry or the
            change of the loss falls below these (torch's ``LBFGS`` tolerances).
        seed: initialisation and batch order.
        device: ``auto``, ``cpu`` or ``cuda``.
        init: a head fitted on the same ``x`` (e.g. at the previous L2 of a path) to start
            from instead of zeros: warm-starting from the stronger penalty saves iterations.
    """
    problem = _Problem([x], [y], n_outputs, multi_label, protocol, device)
    options = _Options(epochs, lr, batch_size, max_iter, tolerance_grad, tolerance_change, seed)
    return problem.fit(l2, [init], [options])[0]


def fit_linear_path(
    x: np.ndarray,
    y: np.ndarray,
    n_outputs: int,
    l2_path: tuple[float, ...],
    multi_label: bool = False,
    protocol: str = "newton",
    device: str = "auto",
    **options,
) -> list[LinearHead]:
    """One head per L2 strength of ``l2_path``, in its order, on the same embeddings.

    With ``newton`` or ``lbfgs`` each fit starts from the previous one (a warm-started
    regularisation path: visit the strongest penalty first), and the standardisation (and
    Newton's principal coordinates) is computed once for the whole path; ``sgd`` fits each
    from zeros. ``options`` are ``fit_linear``'s (``lr``, ``epochs``, ``seed``, ...).
    """
    paths = fit_linear_paths([x], [y], n_outputs, l2_path, multi_label, protocol, device, **options)
    return paths[0]


def fit_linear_paths(
    xs: Sequence[np.ndarray],
    ys: Sequence[np.ndarray],
    n_outputs: int,
    l2_path: tuple[float, ...],
    multi_label: bool = False,
    protocol: str = "newton",
    device: str = "auto",
    seeds: Sequence[int] | None = None,
    **options,
) -> list[list[LinearHead]]:
    """``fit_linear_path`` on several training sets (the seeds of a label fraction): one
    path of heads per set, in their order, each the same as ``fit_linear_path`` would give.

    With ``newton``, sets of the same shape are solved as one batch (``newton.fit_newton``),
    up to ``BATCH_ELEMENTS`` feature values at a time: small problems are bound by the cost
    of each call more than by their arithmetic (on MedMNIST embeddings the probe's fits take
    half the time at 1 % of the labels that they took one seed after another, and 20-50 %
    less at 10 %). ``seeds`` gives each set its own ``seed`` (``sgd``'s initialisation and batch
    order; the exact protocols do not depend on it).
    """
    if len(xs) != len(ys) or (seeds is not None and len(seeds) != len(xs)):
        raise ConfigError("fit_linear_paths needs one label array (and seed) per training set")
    seed = options.pop("seed", 0)  # seeds, when given, replaces it
    seeds = [seed] * len(xs) if seeds is None else list(seeds)
    groups: dict[tuple, list[list[int]]] = {}
    for i, (x, y) in enumerate(zip(xs, ys, strict=True)):
        key = (np.shape(x), np.shape(y)) if protocol == "newton" else (i,)
        batches = groups.setdefault(key, [[]])
        if (len(batches[-1]) + 1) * np.size(x) > BATCH_ELEMENTS and batches[-1]:
            batches.append([])
        batches[-1].append(i)
    paths: list[list[LinearHead]] = [[] for _ in xs]
    for members in (batch for batches in groups.values() for batch in batches):
        problem = _Problem(
            [xs[i] for i in members],
            [ys[i] for i in members],
            n_outputs,
            multi_label,
            protocol,
            device,
        )
        settings = [_Options(**options, seed=seeds[i]) for i in members]
        heads: list[LinearHead | None] = [None] * len(members)
        for l2 in l2_path:
            warm = heads if protocol != "sgd" else [None] * len(members)
            heads = problem.fit(l2, warm, settings)
            for i, head in zip(members, heads, strict=True):
                paths[i].append(head)
    return paths


@dataclass(frozen=True)
class _Options:
    """``fit_linear``'s solver options (its defaults)."""

    epochs: int = 100
    lr: float = 0.1
    batch_size: int = 256
    max_iter: int = 5000
    tolerance_grad: float = 1e-6
    tolerance_change: float = 1e-9
    seed: int = 0


class _Problem:
    """Training sets of one shape, standardised on the device, ready for fits at any L2:
    ``features`` is ``(P, N, D)``, one row of problems per set."""

    def __init__(self, xs, ys, n_outputs: int, multi_label: bool, protocol: str, device: str):
        if protocol not in PROTOCOLS:
            raise ConfigError(f"unknown probe protocol '{protocol}': use {', '.join(PROTOCOLS)}")
        dev = resolve_device(device)
        if protocol == "newton" and (
            dev.type == "mps" or not newton_pays(*np.shape(xs[0]), n_outputs, multi_label)
        ):
            protocol = "lbfgs"  # no float64 on MPS; a head L-BFGS solves faster
        dtype = torch.float64 if protocol != "sgd" and dev.type != "mps" else torch.float32
        features = torch.stack([torch.as_tensor(np.asarray(x), dtype=dtype) for x in xs]).to(dev)
        self.mean, self.std = features.mean(1), features.std(1).clamp_min(1e-6)
        self.features = (features - self.mean[:, None]) / self.std[:, None]
        self.targets = torch.stack([_targets(y, multi_label, dev, dtype) for y in ys])
        self.n_outputs, self.multi_label, self.protocol = n_outputs, multi_label, protocol
        self.span = principal_span(self.features) if protocol == "newton" else None

    def fit(
        self, l2: float, inits: Sequence[LinearHead | None], options: Sequence[_Options]
    ) -> list[LinearHead]:
        """One head per set, at ``l2``, each from its ``inits`` (or zeros)."""
        weight, bias = _initial(inits, self.n_outputs, self.mean, self.std)
        if self.protocol == "newton":
            with torch.no_grad():
                weight, bias, steps, converged = fit_newton(
                    self.features,
                    self.targets,
                    self.n_outputs,
                    self.multi_label,
                    l2,
                    weight,
                    bias,
                    min(options[0].max_iter, 100),
                    span=self.span,
                )
            steps, converged = steps.tolist(), converged.tolist()
        else:
            steps, converged = [0] * len(weight), [True] * len(weight)
            fit = fit_lbfgs if self.protocol == "lbfgs" else fit_sgd
            for i, option in enumerate(options):
                weight[i], bias[i], steps[i], converged[i] = fit(
                    self.features[i],
                    self.targets[i],
                    weight[i],
                    bias[i],
                    l2,
                    self.multi_label,
                    option,
                )
        with torch.no_grad():  # fold the standardisation into the heads
            raw_weight = weight / self.std[:, None]
            raw_bias = bias - (raw_weight @ self.mean[..., None])[..., 0]
        return [
            LinearHead(
                raw_weight[i].double().cpu().numpy(),
                raw_bias[i].double().cpu().numpy(),
                self.multi_label,
                converged=bool(converged[i]),
                n_iter=int(steps[i]),
            )
            for i in range(len(raw_weight))
        ]


def _initial(
    inits: Sequence[LinearHead | None], n_outputs: int, mean: torch.Tensor, std: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P, K, D)`` weights and ``(P, K)`` biases in the standardised spaces: zeros, or each
    set's ``inits`` unfolded."""
    dev, dtype = mean.device, mean.dtype
    weight = torch.zeros(len(mean), n_outputs, mean.shape[1], device=dev, dtype=dtype)
    bias = torch.zeros(len(mean), n_outputs, device=dev, dtype=dtype)
    for i, init in enumerate(inits):
        if init is None:
            continue
        if init.weight.shape != weight.shape[1:]:
            raise ConfigError(
                f"a head of shape {init.weight.shape} cannot start a fit of "
                f"{n_outputs} outputs on {mean.shape[1]}-d embeddings"
            )
        raw = torch.as_tensor(init.weight, dtype=dtype, device=dev)
        weight[i] = raw * std[i]
        bias[i] = torch.as_tensor(init.bias, dtype=dtype, device=dev) + raw @ mean[i]
    return weight, bias
