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
- **the softmax** over ``K > 2`` classes by truncated Newton (``_Softmax``): each direction
  is a conjugate-gradient solve of the ``(K-1) (R+1)``-square system, preconditioned by its
  leading block, so no step pays for the whole Hessian (``N K^2 R^2``).

Steps are damped by a backtracking (Armijo) line search; the iteration stops when the Newton
decrement says the objective is within ``tolerance`` of its minimum.

Multi-label heads with many labels on wide features are left to L-BFGS (``newton_pays``),
which reaches the same optimum.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# labels x width of a multi-label head's Newton systems above which L-BFGS is the faster
# exact solver: on all the features, and on the samples' span (fewer samples than
# features), where the Hessian's blocks are cheaper to form
MAX_BLOCK_WIDTH = 2560
MAX_BLOCK_WIDTH_SPAN = 4096
# the softmax's preconditioner: the width of its dense block ((K-1) x leading coordinates);
# the conjugate-gradient iterations of one Newton direction at most; and how many the last
# direction may have taken for the next to keep the preconditioner (the Hessian changes
# little between late steps, and a rebuild costs about as much as 16 iterations on 1-2k x 512
# MedMNIST embeddings: 10-15 % less time than a rebuild at every step, measured)
TOP_WIDTH = 512
MAX_CG = 1000
REBUILD_AFTER = 16


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
        span: ``principal_span(features)``, when the caller fits several L2 strengths on
            the same features (computed here otherwise).

    Returns:
        ``(weight, bias, steps, converged)``.
    """
    features, basis = span if span is not None else principal_span(features)
    weight = weight @ basis.T
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
        problem = _Softmax(features, targets, n_outputs, l2)
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
    """
    n, d = features.shape
    eps = max(n, d) * torch.finfo(features.dtype).eps
    if n < d:  # the samples' Gram matrix: coordinates U sqrt(values), basis U^T X / sqrt(values)
        values, vectors = torch.linalg.eigh(features @ features.T)
        values, vectors = values.flip(0), vectors.flip(1)
        keep = values > values[0] * eps
        roots, vectors = values[keep].sqrt(), vectors[:, keep]
        return vectors * roots, (vectors.T @ features) / roots[:, None]
    values, vectors = torch.linalg.eigh(features.T @ features)
    values, vectors = values.flip(0), vectors.flip(1)
    vectors = vectors[:, values > values[0] * eps]
    return features @ vectors, vectors.T


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
    """The L2-penalised softmax regression over ``K`` classes as one problem, solved by
    truncated Newton: each direction is a preconditioned conjugate-gradient solve of the
    Newton system, never formed.

    ``theta`` is ``(1, (K-1) (R+1))``: the weights (intercept first, then one per principal
    coordinate) in an orthonormal basis of the class vectors that sum to zero. The loss does
    not change when one vector is added to every class's weights, and the penalty is least
    when they sum to zero, so the optimum lies in that subspace: ``K-1`` rows carry it
    exactly, and the system is definite without pinning the biases' common shift.

    The preconditioner is the Hessian itself on the leading principal coordinates (a dense
    ``(K-1) top``-square block, ``top`` at most ``TOP_WIDTH / (K-1)``, Cholesky-factored)
    and its diagonal on the rest, formed again at a step whose predecessor's solve took more
    than ``REBUILD_AFTER`` iterations. The leading principal coordinates carry most of the
    features' variance, hence most of the curvature: on MedMNIST embeddings the conjugate
    gradient takes 1-10 iterations a step at strong penalties and tens to a few hundred at
    ``l2 = 1e-5``, against a dense Newton step whose cost (``N K^2 R^2``) a path pays 30-60
    times. The products, the block and the conjugate gradient run in float32 (half
    float64's time and memory traffic); the gradient, the objective and the stopping test
    stay in float64, so the optimum is float64's (a direction off by float32 rounding still
    descends).
    """

    def __init__(self, features, targets, n_classes: int, l2: float) -> None:
        n = features.shape[0]
        self.x = torch.cat([features.new_ones(n, 1), features], 1)
        self.x32 = self.x.float()
        centred = torch.eye(n_classes, dtype=features.dtype, device=features.device)
        self.classes = torch.linalg.qr(centred - 1.0 / n_classes)[0][:, : n_classes - 1]
        self.targets = targets
        self.onehot = F.one_hot(targets, n_classes).to(features.dtype)
        self.penalty = features.new_full((self.x.shape[1],), l2)
        self.penalty[0] = 0.0
        self.m, self.d1 = n_classes - 1, self.x.shape[1]
        self.top = min(self.d1, max(16, TOP_WIDTH // self.m))
        self._precondition, self._last_cg = None, 0

    def from_head(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return (self.classes.T @ torch.cat([bias[:, None], weight], 1)).reshape(1, -1)

    def to_head(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = self.classes @ theta.reshape(self.m, self.d1)
        return coef[:, 1:], coef[:, 0]

    def _logits(self, theta: torch.Tensor) -> torch.Tensor:
        return self.x @ (self.classes @ theta.reshape(self.m, self.d1)).T

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        logits = self._logits(theta)
        picked = logits.gather(1, self.targets[:, None])[:, 0]
        loss = (torch.logsumexp(logits, 1) - picked).mean()
        return (loss + 0.5 * (self.penalty * theta.reshape(self.m, -1).square()).sum()).reshape(1)

    def step(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = theta.reshape(self.m, self.d1)
        p = torch.softmax(self._logits(theta), 1)  # (N, K)
        gradient = self.classes.T @ ((p - self.onehot).T @ self.x) / len(p) + self.penalty * coef
        # the forcing term of inexact Newton: loose far from the optimum, tight near it
        tolerance = max(min(0.5, float(gradient.norm()) ** 0.5), 1e-5)
        direction = self._solve(p, gradient.float(), tolerance)
        return gradient.reshape(1, -1), direction.to(theta.dtype).reshape(1, -1)

    def _solve(self, p: torch.Tensor, rhs: torch.Tensor, tolerance: float) -> torch.Tensor:
        """Preconditioned conjugate gradient on ``H d = rhs`` to a relative residual of
        ``tolerance`` (at most ``MAX_CG`` iterations: a truncated solve still descends)."""
        n, classes = len(p), self.classes.float()
        p32 = p.float()
        penalty = self.penalty.float()

        def hessian_times(v):  # the Gauss-Newton product, exact for the softmax loss
            t = self.x32 @ (classes @ v).T  # (N, K)
            j = p32 * (t - (p32 * t).sum(1, keepdim=True))
            return classes.T @ (j.T @ self.x32) / n + penalty * v

        if self._precondition is None or self._last_cg > REBUILD_AFTER:
            self._precondition = self._preconditioner(p, classes, penalty)
        precondition = self._precondition
        x, r = torch.zeros_like(rhs), rhs.clone()
        z = precondition(r)
        d = z.clone()
        rz, target = (r * z).sum(), tolerance * rhs.norm()
        for self._last_cg in range(1, MAX_CG + 1):
            hd = hessian_times(d)
            curvature = (d * hd).sum()
            if not curvature > 0:  # float32 rounding on a nearly flat direction
                break
            alpha = rz / curvature
            x += alpha * d
            r -= alpha * hd
            if r.norm() <= target:
                break
            z = precondition(r)
            rz, previous = (r * z).sum(), rz
            d = z + (rz / previous) * d
        return x if bool(x.any()) else precondition(rhs)

    def _preconditioner(self, p, classes, penalty):
        """The Hessian on the first ``top`` coordinates (dense, Cholesky-factored) and its
        diagonal on the others, as a function applying its inverse."""
        n, m, top = len(p), self.m, self.top
        pc = p @ self.classes
        # each sample's curvature block in the class basis, (N, m, m)
        curvature = torch.einsum("nk,ka,kb->nab", p, self.classes, self.classes)
        curvature = (curvature - pc[:, :, None] * pc[:, None, :]).float() / n
        x = self.x32[:, :top]
        block = x.new_empty(m, top, m, top)
        for a in range(m):  # a row of blocks in one product (the lower ones mirror the upper)
            weighted = (curvature[:, a, a:, None] * x[:, None, :]).reshape(n, -1)
            row = (x.T @ weighted).reshape(top, m - a, top)
            for b in range(a, m):
                block[a, :, b] = row[:, b - a]
                if b > a:
                    block[b, :, a] = row[:, b - a].T
        block = block.reshape(m * top, m * top)
        block.diagonal().add_(penalty[:top].repeat(m))
        # an intercept whose samples are all saturated has no curvature left
        block.diagonal()[::top].add_(torch.finfo(block.dtype).eps)
        factor, info = torch.linalg.cholesky_ex(block)
        diagonal = torch.diagonal(curvature, dim1=1, dim2=2).T @ self.x32[:, top:].square()
        diagonal += penalty[top:]
        if diagonal.numel():  # no division by zero where nothing curves (l2 = 0)
            diagonal.clamp_min_(float(diagonal.max()) * torch.finfo(diagonal.dtype).eps)
        if int(info) != 0:  # rounding left the block indefinite: its diagonal instead
            head = block.diagonal().reshape(m, top)
            return lambda r: r / torch.cat([head, diagonal], 1)

        def apply(r):
            out = torch.empty_like(r)
            out[:, :top] = torch.cholesky_solve(r[:, :top].reshape(-1, 1), factor).reshape(m, top)
            out[:, top:] = r[:, top:] / diagonal
            return out

        return apply


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
