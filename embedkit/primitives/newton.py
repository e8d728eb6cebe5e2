"""Newton's method for the linear probe's objective: the exact optimum in a handful of steps.

The probe minimises ``mean cross-entropy + l2/2 * ||W||^2`` over a linear head on standardised
(hence centred) embeddings, the intercept unpenalised. The problem is small (D <= 2048
features, K <= 14 outputs) and smooth, so Newton's method reaches the optimum in 5-25 steps
where L-BFGS takes hundreds to thousands at small L2 (the loss is nearly flat along the
directions that separate the classes), in float64:

- **in principal coordinates** (``principal_span``): the features' principal axes, without
  those along which they do not vary. The weights of the optimum have no component there
  (the loss does not see it and the penalty removes it), so the problem is solved exactly
  in fewer coordinates: at most ``N - 1`` (small label fractions), and embeddings are often
  of lower rank still;
- **one logistic problem per output** where the softmax couples nothing: with two classes,
  the softmax optimum is ``(-w/2, w/2)`` for the logistic regression on ``z = w.x + b`` with
  penalty ``l2/4 * ||w||^2`` (the two weight vectors sum to zero at the optimum), a dense
  ``(R+1)``-square system per step; multi-label heads are one logistic regression per label
  (binary cross-entropy is averaged over samples and labels, so each label's penalty is
  ``L * l2``), solved as a batch of ``L`` systems;
- **the softmax** over ``K > 2`` classes by truncated Newton
  (``truncated_newton.Softmax``): each direction is a conjugate-gradient solve of the
  ``(K-1) (R+1)``-square system, preconditioned by its leading block, so no step pays for
  the whole Hessian (``N K^2 R^2``). A binary head whose dense systems would be large
  (``N (R+1)^2`` above ``DENSE_BINARY_LIMIT``) goes the same way with ``K = 2``: its
  preconditioner is then the whole Hessian, formed again only when it has grown stale,
  where the dense solver forms it at every step.

Steps are damped by a backtracking (Armijo) line search; the iteration stops when the Newton
decrement says the objective is within ``tolerance`` of its minimum.

``fit_newton`` solves a **batch** of independent problems of one shape side by side (the
five seeds of a label fraction: ``fit_linear_paths``), each stopped on its own decrement
and each with its own principal coordinates (padded to the widest with axes that are zero).
At 1 % and 10 % of the labels a problem has tens to hundreds of samples, and much of its
time goes to the cost of each call rather than to arithmetic: on MedMNIST and demo
embeddings the probe's fits at 1 % now take half the time they took one seed after
another, and 20-50 % less at 10 % (BENCHMARKS.md, "The probe's solver", fifth round).

Multi-label heads with many labels on wide features are left to L-BFGS (``newton_pays``),
which reaches the same optimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .truncated_newton import Softmax

# labels x width of a multi-label head's Newton systems above which L-BFGS is the faster
# exact solver: on all the features, and on the samples' span (fewer samples than
# features), where the Hessian's blocks are cheaper to form
MAX_BLOCK_WIDTH = 2560
MAX_BLOCK_WIDTH_SPAN = 4096
# samples x width^2 of a binary head's dense Newton system from which the truncated Newton
# solves it faster: forming the system (2 N (R+1)^2 flops) at every step then costs more
# than conjugate gradients preconditioned by a system formed only when the last direction
# took more than truncated_newton.REBUILD_AFTER iterations (on MedMNIST embeddings,
# PneumoniaMNIST's 470 and 4,708 training samples: 25-30 % less time; BreastMNIST's 54: 3x
# more)
DENSE_BINARY_LIMIT = 1 << 26


def newton_pays(n_samples: int, n_features: int, n_outputs: int, multi_label: bool) -> bool:
    """Whether Newton's method is the faster exact solver for this head: always for a
    binary head (one ``(D+1)``-square system) and for the softmax (truncated Newton, whose
    cost grows like L-BFGS's); for a multi-label head while its ``L`` dense systems, times
    their width, stay within ``MAX_BLOCK_WIDTH`` (``MAX_BLOCK_WIDTH_SPAN`` where the
    samples' span is smaller than ``D`` and replaces it, see ``fit_newton``)."""
    if not multi_label:
        return True
    width = min(n_features, max(n_samples - 1, 1)) + 1
    limit = MAX_BLOCK_WIDTH_SPAN if n_samples - 1 < n_features else MAX_BLOCK_WIDTH
    return n_outputs * width <= limit


def fit_newton(
    features: torch.Tensor,
    targets: torch.Tensor,
    n_outputs: int,
    multi_label: bool,
    l2: float,
    weight: torch.Tensor,
    bias: torch.Tensor,
    max_iter: int = 100,
    tolerance: float = 1e-12,
    span: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise the probe's objective from ``(weight, bias)``, for a batch of ``P``
    independent problems of the same shape (e.g. the seeds of a label fraction): each is
    solved as if alone, side by side, which shares the per-call cost of small problems.

    Args:
        features: ``(P, N, D)`` standardised embeddings (float64).
        targets: ``(P, N)`` class indices, or ``(P, N, L)`` 0/1 labels when ``multi_label``.
        n_outputs: classes (or labels).
        l2: the penalty on the weights.
        weight, bias: ``(P, K, D)`` and ``(P, K)`` starting point (zeros, or a warm start).
        max_iter: Newton steps at most; a fit that reaches it is not converged.
        tolerance: stop when half the Newton decrement (the objective's predicted decrease
            to the minimum) falls below this.
        span: ``principal_span(features)``, when the caller fits several L2 strengths on
            the same features (computed here otherwise).

    Returns:
        ``(weight, bias, steps, converged)``, the last two ``(P,)``.
    """
    features, basis = span if span is not None else principal_span(features)
    padding = ~basis.any(2)  # (P, R): axes added to a problem of lower rank than the others
    weight = weight @ basis.mT
    n_problems, n, width = features.shape[0], features.shape[1], features.shape[2] + 1
    if multi_label or (n_outputs == 2 and n * width * width < DENSE_BINARY_LIMIT):
        if multi_label:
            labels, penalty = targets.mT.to(features.dtype), l2 * n_outputs
            theta = torch.cat([weight, bias[..., None]], 2)
        else:  # the logistic regression on the difference of the two logits
            labels, penalty = targets[:, None].to(features.dtype), l2 / 2
            theta = torch.cat([weight[:, 1] - weight[:, 0], (bias[:, 1] - bias[:, 0])[:, None]], 1)
            theta = theta[:, None]
        rows = theta.shape[1]  # labels per problem
        problem = _Logistic(features, labels, penalty, padding)
        theta, steps, converged = _newton(problem, theta.flatten(0, 1), max_iter, tolerance)
        theta = theta.reshape(n_problems, rows, -1)
        steps = steps.reshape(n_problems, rows).amax(1)
        converged = converged.reshape(n_problems, rows).all(1)
        weight, bias = theta[..., :-1], theta[..., -1]
        if not multi_label:
            weight, bias = torch.cat([-weight, weight], 1) / 2, torch.cat([-bias, bias], 1) / 2
    else:
        problem = Softmax(features, targets, n_outputs, l2, settled=tolerance, padding=padding)
        theta = problem.from_head(weight, bias)
        theta, steps, converged = _newton(problem, theta, max_iter, tolerance)
        weight, bias = problem.to_head(theta)
    return weight @ basis, bias, steps, converged


def principal_span(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(coordinates, basis)`` of the features' principal axes: ``features = coordinates @
    basis``, the columns of ``coordinates`` uncorrelated and by decreasing variance.

    Axes along which the (centred) features do not vary are dropped: the loss does not see
    a weight along them and the penalty sets it to zero, so the optimum is found in the
    remaining coordinates. There are at most ``N - 1``, and embeddings are often of lower
    rank still (a random-weight ResNet-18's 512 features span 206 axes on RetinaMNIST's
    training split). They come from the eigenvectors of the smaller Gram matrix (``X^T X``,
    or ``X X^T`` with fewer samples than features: 2-7x faster than a thin SVD), cut where
    its eigenvalues fall below ``max(N, D) eps`` of the largest, which it cannot resolve.
    Measured on MedMNIST embeddings, the optimum's objective moved by at most 7e-9 against
    a fit on all the features (RetinaMNIST at ``l2 = 1e-5``).

    ``features`` may be a batch, ``(P, N, D)``: each keeps its own axes, and one that spans
    fewer than the others is padded to their number with axes that are zero in its
    coordinates and its basis.
    """
    n, d = features.shape[-2:]
    eps = max(n, d) * torch.finfo(features.dtype).eps
    few = n < d  # then the samples' Gram matrix: coordinates U sqrt(values), basis U^T X / sqrt
    values, vectors = torch.linalg.eigh(features @ features.mT if few else features.mT @ features)
    values, vectors = values.flip(-1), vectors.flip(-1)
    keep = values > values[..., :1] * eps  # the leading axes
    width = int(keep.sum(-1).max())
    values, keep = values[..., :width], keep[..., :width]
    vectors = vectors[..., :width] * keep[..., None, :]
    if few:
        roots = torch.where(keep, values, 1.0).sqrt()
        return vectors * roots[..., None, :], (vectors.mT @ features) / roots[..., None]
    return features @ vectors, vectors.mT


class _Logistic:
    """Independent L2-penalised logistic regressions, ``L`` on each of ``P`` feature sets
    (``(P, N, R)`` features, ``(P, L, N)`` labels), the last unknown of each the unpenalised
    intercept: ``theta`` is ``(P L, R + 1)``. ``padding`` marks ``(P, R)`` coordinates that
    are zero in every sample (their system gets a unit diagonal there, and a zero gradient)."""

    def __init__(self, features, labels, penalty: float, padding=None) -> None:
        n_problems, n = features.shape[:2]
        self.x = torch.cat([features, features.new_ones(n_problems, n, 1)], 2)
        self.x_gram = _gram_features(self.x)
        self.labels = labels  # (P, L, N)
        self.penalty = features.new_full((self.x.shape[2],), penalty)
        self.penalty[-1] = 0.0
        ridge = self.penalty.expand(n_problems, -1).clone()
        # an intercept whose samples are all saturated has no curvature left
        ridge[:, -1] += torch.finfo(features.dtype).eps
        if padding is not None:
            ridge[:, :-1] += padding.to(ridge.dtype)
        self.ridge = ridge.repeat_interleave(labels.shape[1], 0)  # (P L, R + 1)

    def _theta(self, theta):
        return theta.reshape(self.labels.shape[0], self.labels.shape[1], -1)

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        z = self._theta(theta) @ self.x.mT
        loss = (F.softplus(z) - self.labels * z).mean(2).flatten()
        return loss + 0.5 * (self.penalty * theta.square()).sum(1)

    def step(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gradient, Newton direction)``, each ``(P L, R + 1)``."""
        n = self.x.shape[1]
        p = torch.sigmoid(self._theta(theta) @ self.x.mT)  # (P, L, N)
        gradient = ((p - self.labels) @ self.x / n).flatten(0, 1) + self.penalty * theta
        curvature = p * (1 - p) / n
        hessian = torch.stack(
            [_gram(x, c) for x, rows in zip(self.x_gram, curvature, strict=True) for c in rows]
        )
        hessian.diagonal(dim1=1, dim2=2).add_(self.ridge)
        return gradient, _solve(hessian, gradient)


def _gram_features(x: torch.Tensor) -> torch.Tensor:
    """The features Hessians are formed from: float32 where the product is large enough for
    float32's speed (half float64's time) to pay for the conversion. Only the Newton
    direction depends on them, not the optimum: the gradient, the objective and the stopping
    test stay in float64, and a direction off by float32 rounding still converges (measured
    on MedMNIST embeddings: the same steps, and the same objective to 1e-16)."""
    n, d = x.shape[-2:]
    return x.float() if n * d * d >= 1 << 24 else x


def _gram(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``x^T diag(weights) x`` in ``x``'s dtype, returned in the weights'."""
    return ((x.T * weights.to(x.dtype)) @ x).to(weights.dtype)


def _solve(hessian: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    """The Newton directions of a batch of positive definite systems (Cholesky; a least
    squares solve where rounding has left one indefinite)."""
    factor, info = torch.linalg.cholesky_ex(hessian)
    if bool((info == 0).all()):
        return torch.cholesky_solve(gradient[..., None], factor)[..., 0]
    return torch.linalg.lstsq(hessian, gradient[..., None]).solution[..., 0]


def _newton(problem, theta: torch.Tensor, max_iter: int, tolerance: float):
    """Damped Newton over a batch of problems (rows of ``theta``), each stopped on its own
    decrement; returns ``(theta, steps, converged)``, the last two per row."""
    value = problem.value(theta)
    active = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
    steps = torch.zeros(theta.shape[0], dtype=torch.long, device=theta.device)
    for _ in range(max_iter):
        gradient, direction = problem.step(theta)
        decrement = (gradient * direction).sum(1)  # the squared Newton decrement
        active &= decrement / 2 > tolerance
        if not bool(active.any()):
            return theta, steps, ~active
        steps += active
        direction = direction * active[:, None]
        size = torch.ones_like(value)
        for _ in range(60):  # halve each problem's step until it decreases enough
            candidate = theta - size[:, None] * direction
            new = problem.value(candidate)
            enough = (new <= value - 1e-4 * size * decrement) | ~active
            if bool(enough.all()):
                break
            size = torch.where(enough, size, size / 2)
        theta, value = candidate, torch.where(active, new, value)
    return theta, steps, ~active
