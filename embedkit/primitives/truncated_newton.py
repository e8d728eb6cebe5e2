"""Truncated Newton for the probe's softmax head: Newton directions from preconditioned
conjugate gradients, so no step forms the ``(K-1) (R+1)``-square Hessian.

Used by ``embedkit.primitives.newton.fit_newton`` for heads of ``K > 2`` classes, and for
binary heads on many samples (``K = 2``), on the features' principal coordinates
(``newton.principal_span``), inside its damped Newton loop (``Softmax.value`` and
``Softmax.step``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# the softmax's preconditioner: the width of its dense block ((K-1) x leading coordinates);
# the conjugate-gradient iterations of one Newton direction at most; and how many the last
# direction may have taken for the next to keep the preconditioner (the Hessian changes
# little between late steps, and a rebuild costs about as much as 16 iterations on 1-2k x 512
# MedMNIST embeddings: 10-15 % less time than a rebuild at every step, measured)
TOP_WIDTH = 512
MAX_CG = 1000
REBUILD_AFTER = 16
# how far below the caller's stopping threshold the conjugate gradient's estimate of the
# Newton decrement must fall for it to end early (see Softmax._solve)
SETTLED_MARGIN = 10.0


class Softmax:
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
    descends). ``settled`` is the caller's stopping threshold on half the Newton decrement
    (``newton.fit_newton``'s ``tolerance``; 0: solve every direction to ``tolerance``).
    """

    def __init__(self, features, targets, n_classes: int, l2: float, settled: float = 0.0) -> None:
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
        self.settled = settled

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
        ``tolerance`` (at most ``MAX_CG`` iterations: a truncated solve still descends).

        It also ends once the Newton decrement it estimates, ``rhs.x`` so far plus the
        preconditioned residual ``r.z`` for the rest (exact were the preconditioner the
        Hessian), is ``SETTLED_MARGIN`` times below twice ``settled``, the caller's stopping
        threshold: that direction would only confirm convergence, and the last solve of
        every fit is the most precise (it took 15-35 % of the iterations on MedMNIST
        embeddings, with the same objective to 1e-12).
        """
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
        reached, settled = 0.0, 2 * self.settled / SETTLED_MARGIN
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
            reached = reached + alpha * (rhs * d).sum()  # rhs.x
            if float(reached + rz) < settled:
                break
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
