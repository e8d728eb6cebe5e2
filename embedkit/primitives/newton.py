"""Newton's method for the linear probe's objective: the exact optimum in a handful of steps.

The probe minimises ``mean cross-entropy + l2/2 * ||W||^2`` over a linear head on standardised
(hence centred) embeddings, the intercept unpenalised. The problem is small (D <= 2048
features, K <= 14 outputs) and smooth, so Newton's method reaches the optimum in 5-10 steps
where L-BFGS takes hundreds to thousands at small L2 (the loss is nearly flat along the
directions that separate the classes). Each step solves the dense Hessian system, in float64:

- **one logistic problem per output** where the softmax couples nothing: with two classes,
  the softmax optimum is ``(-w/2, w/2)`` for the logistic regression on ``z = w.x + b`` with
  penalty ``l2/4 * ||w||^2`` (the two weight vectors sum to zero at the optimum), a
  ``(D+1)``-square system; multi-label heads are one logistic regression per label
  (binary cross-entropy is averaged over samples and labels, so each label's penalty is
  ``L * l2``), solved as a batch of ``L`` systems;
- **the softmax** over ``K > 2`` classes as one ``K (D+1)``-square system. The biases'
  common shift does not change the loss, so a penalty on their sum (zero at the returned
  optimum) makes the system definite without moving the minimum.

With fewer samples than features (small label fractions), the weights of the optimum lie in
the span of the samples (the penalty removes any other component and the loss does not see
it), so the problem is solved in that span's coordinates (a thin SVD), exactly.

Steps are damped by a backtracking (Armijo) line search; the iteration stops when the Newton
decrement says the objective is within ``tolerance`` of its minimum.

A Newton step costs ``N (D+1)^2`` per logistic problem and per pair of classes of the
softmax, plus the factorisation of its system, against ``N (D+1) K`` for an L-BFGS
iteration; it pays where the blocks are few and narrow (``newton_pays``: measured on
MedMNIST embeddings, a binary head on 512-d features converges 3-6x faster than L-BFGS, a
5-class one on 1,080 x 512 three times slower, on 250 samples (a span of 250) 1.4x faster,
on 350 slower). Other heads are left to L-BFGS, which reaches the same optimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# blocks x width of the Newton system above which L-BFGS is the faster exact solver: on
# all the features, and on the samples' span (fewer samples than features), where the
# Hessian's blocks are cheaper to form
MAX_BLOCK_WIDTH = 2560
MAX_BLOCK_WIDTH_SPAN = 4096


def newton_pays(n_samples: int, n_features: int, n_outputs: int, multi_label: bool) -> bool:
    """Whether Newton's method is the faster exact solver for this head: its Hessian's
    ``(D+1)``-square blocks (one per label, one for a binary head, ``K (K+1) / 2`` for the
    softmax), times their width, stay within ``MAX_BLOCK_WIDTH`` (``MAX_BLOCK_WIDTH_SPAN``
    where the samples' span is smaller than ``D`` and replaces it, see ``fit_newton``)."""
    width = min(n_features, max(n_samples - 1, 1)) + 1
    limit = MAX_BLOCK_WIDTH_SPAN if n_samples - 1 < n_features else MAX_BLOCK_WIDTH
    if multi_label:
        blocks = n_outputs
    elif n_outputs == 2:
        blocks = 1
    else:
        blocks = n_outputs * (n_outputs + 1) // 2
    return blocks * width <= limit


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
    span: tuple[torch.Tensor, torch.Tensor | None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int, bool]:
    """Minimise the probe's objective from ``(weight, bias)``.

    Args:
        features: ``(N, D)`` standardised embeddings (float64).
        targets: ``(N,)`` class indices, or ``(N, L)`` 0/1 labels when ``multi_label``.
        n_outputs: classes (or labels).
        l2: the penalty on the weights.
        weight, bias: ``(K, D)`` and ``(K,)`` starting point (zeros, or a warm start).
        max_iter: Newton steps at most; a fit that reaches it is not converged.
        tolerance: stop when half the Newton decrement (the objective's predicted decrease
            to the minimum) falls below this.
        span: ``samples_span(features)``, when the caller fits several L2 strengths on the
            same features (computed here otherwise).

    Returns:
        ``(weight, bias, steps, converged)``.
    """
    features, basis = span if span is not None else samples_span(features)
    weight = weight @ basis.T if basis is not None else weight
    if multi_label or n_outputs == 2:
        if multi_label:
            labels, penalty = targets.T.to(features.dtype), l2 * n_outputs
            theta = torch.cat([weight, bias[:, None]], 1)
        else:  # the logistic regression on the difference of the two logits
            labels, penalty = targets[None].to(features.dtype), l2 / 2
            theta = torch.cat([weight[1] - weight[0], (bias[1] - bias[0])[None]])[None]
        theta, steps, converged = _newton(
            _Logistic(features, labels, penalty), theta, max_iter, tolerance
        )
        weight, bias = theta[:, :-1], theta[:, -1]
        if not multi_label:
            weight, bias = torch.cat([-weight, weight]) / 2, torch.cat([-bias, bias]) / 2
    else:
        theta = torch.cat([weight, bias[:, None]], 1).reshape(1, -1)
        theta, steps, converged = _newton(
            _Softmax(features, targets, n_outputs, l2), theta, max_iter, tolerance
        )
        theta = theta.reshape(n_outputs, -1)
        weight, bias = theta[:, :-1], theta[:, -1] - theta[:, -1].mean()
    if basis is not None:
        weight = weight @ basis
    return weight, bias, steps, converged


def samples_span(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(coordinates, basis)`` of the samples' span when it is smaller than the feature
    space (``features = coordinates @ basis``), else ``(features, None)``."""
    n, d = features.shape
    if n >= d:
        return features, None
    u, s, vh = torch.linalg.svd(features, full_matrices=False)
    keep = s > s[0] * max(n, d) * torch.finfo(features.dtype).eps
    return u[:, keep] * s[keep], vh[keep]


class _Logistic:
    """``P`` independent L2-penalised logistic regressions on the same features, the last
    unknown of each the unpenalised intercept: ``theta`` is ``(P, D + 1)``."""

    def __init__(self, features: torch.Tensor, labels: torch.Tensor, penalty: float) -> None:
        n = features.shape[0]
        self.x = torch.cat([features, features.new_ones(n, 1)], 1)
        self.x_gram = _gram_features(self.x)
        self.labels = labels  # (P, N)
        self.penalty = features.new_full((self.x.shape[1],), penalty)
        self.penalty[-1] = 0.0

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        z = theta @ self.x.T
        loss = (F.softplus(z) - self.labels * z).mean(1)
        return loss + 0.5 * (self.penalty * theta.square()).sum(1)

    def step(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(gradient, Newton direction)``, each ``(P, D + 1)``."""
        n = self.x.shape[0]
        p = torch.sigmoid(theta @ self.x.T)
        gradient = (p - self.labels) @ self.x / n + self.penalty * theta
        curvature = p * (1 - p) / n  # (P, N)
        hessian = torch.stack([_gram(self.x_gram, c) for c in curvature])
        hessian.diagonal(dim1=1, dim2=2).add_(self.penalty)
        # an intercept whose samples are all saturated has no curvature left
        hessian[:, -1, -1] += torch.finfo(theta.dtype).eps
        return gradient, _solve(hessian, gradient)


class _Softmax:
    """The L2-penalised softmax regression over ``K`` classes as one problem:
    ``theta`` is ``(1, K (D + 1))``, class by class, each ending with its intercept."""

    def __init__(self, features, targets, n_classes: int, l2: float) -> None:
        n = features.shape[0]
        self.x = torch.cat([features, features.new_ones(n, 1)], 1)
        self.x_gram = _gram_features(self.x)
        self.onehot = F.one_hot(targets, n_classes).to(features.dtype)
        self.k, self.d1, self.l2 = n_classes, self.x.shape[1], l2

    def _split(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = theta.reshape(self.k, self.d1)
        return coef, coef[:, -1]

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        coef, bias = self._split(theta)
        logits = self.x @ coef.T
        loss = (torch.logsumexp(logits, 1) - (self.onehot * logits).sum(1)).mean()
        # the biases' common shift is free; the penalty on their sum pins it at zero
        pinned = 0.5 * bias.sum().square() / self.k
        return (loss + 0.5 * self.l2 * coef[:, :-1].square().sum() + pinned).reshape(1)

    def step(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n, k, d1 = self.x.shape[0], self.k, self.d1
        coef, bias = self._split(theta)
        p = torch.softmax(self.x @ coef.T, 1)  # (N, K)
        gradient = (p - self.onehot).T @ self.x / n  # (K, D + 1)
        gradient[:, :-1] += self.l2 * coef[:, :-1]
        gradient[:, -1] += bias.sum() / k
        # block (c, e) of the Hessian is X^T diag(p_c (delta_ce - p_e)) X / N, all K^2 blocks
        # in one product per chunk of samples (a loop over blocks costs more in dispatch)
        curvature = p[:, :, None] * (torch.eye(k, dtype=p.dtype, device=p.device) - p[:, None, :])
        curvature = (curvature / n).reshape(n, k * k).to(self.x_gram.dtype)
        hessian = theta.new_zeros(d1, k * k * d1, dtype=self.x_gram.dtype)
        rows = max(1, (1 << 24) // (k * k * d1))
        for start in range(0, n, rows):
            x = self.x_gram[start : start + rows]
            weighted = curvature[start : start + rows, :, None] * x[:, None, :]
            hessian += x.T @ weighted.reshape(len(x), -1)
        hessian = hessian.to(theta.dtype).reshape(d1, k, k, d1).permute(1, 0, 2, 3)
        hessian = hessian.reshape(k * d1, k * d1)
        penalty = torch.full((d1,), self.l2, dtype=theta.dtype, device=theta.device)
        penalty[-1] = 0.0
        hessian.diagonal().add_(penalty.repeat(k))
        intercepts = torch.arange(k, device=theta.device) * d1 + d1 - 1
        hessian[intercepts[:, None], intercepts[None, :]] += 1.0 / k
        gradient = gradient.reshape(1, -1)
        return gradient, _solve(hessian[None], gradient)


def _gram_features(x: torch.Tensor) -> torch.Tensor:
    """The features Hessians are formed from: float32 where the product is large enough for
    float32's speed (half float64's time) to pay for the conversion. Only the Newton
    direction depends on them, not the optimum: the gradient, the objective and the stopping
    test stay in float64, and a direction off by float32 rounding still converges (measured
    on MedMNIST embeddings: the same steps, and the same objective to 1e-16)."""
    n, d = x.shape
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
    decrement; returns ``(theta, steps, converged)``."""
    value = problem.value(theta)
    active = torch.ones(theta.shape[0], dtype=torch.bool, device=theta.device)
    for step in range(1, max_iter + 1):
        gradient, direction = problem.step(theta)
        decrement = (gradient * direction).sum(1)  # the squared Newton decrement
        active &= decrement / 2 > tolerance
        if not bool(active.any()):
            return theta, step - 1, True
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
    return theta, max_iter, False
