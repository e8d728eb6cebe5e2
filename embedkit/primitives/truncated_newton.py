"""Truncated Newton for the probe's softmax head: Newton directions from preconditioned
conjugate gradients, so no step forms the ``(K-1) (R+1)``-square Hessian.

Used by ``embedkit.primitives.newton.fit_newton`` for heads of ``K > 2`` classes, and for
binary heads on many samples (``K = 2``), on the features' principal coordinates
(``newton.principal_span``), inside its damped Newton loop (``Softmax.value`` and
``Softmax.step``). One ``Softmax`` holds a batch of independent problems of the same shape
(the seeds of a label fraction), solved side by side: each row of ``theta`` is one problem.
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
    """The L2-penalised softmax regression over ``K`` classes, solved by truncated Newton:
    each direction is a preconditioned conjugate-gradient solve of the Newton system, never
    formed. ``features`` is ``(P, N, R)`` and ``targets`` ``(P, N)``: ``P`` independent
    problems of the same shape (one is ``P = 1``), each solved as if alone, and ``padding``
    an optional ``(P, R)`` mask of coordinates that are zero in every sample (a problem of
    lower rank than the others, padded to their width).

    ``theta`` is ``(P, (K-1) (R+1))``: the weights (intercept first, then one per principal
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

    def __init__(
        self, features, targets, n_classes: int, l2: float, settled: float = 0.0, padding=None
    ) -> None:
        n_problems, n = features.shape[:2]
        self.x = torch.cat([features.new_ones(n_problems, n, 1), features], 2)
        self.x32 = self.x.float()
        # one problem's features transposed, for the faster of the Hessian's two products
        # with K > 2 (with K = 2 that product is a matrix-vector one, faster as it was)
        self.x32t = self.x32[0].T.contiguous() if n_problems == 1 and n_classes > 2 else None
        centred = torch.eye(n_classes, dtype=features.dtype, device=features.device)
        self.classes = torch.linalg.qr(centred - 1.0 / n_classes)[0][:, : n_classes - 1]
        self.targets = targets
        self.onehot = F.one_hot(targets, n_classes).to(features.dtype)
        self.penalty = features.new_full((self.x.shape[2],), l2)
        self.penalty[0] = 0.0
        # a padded coordinate has no curvature: its preconditioner is one, not zero (its
        # gradient, hence every conjugate-gradient vector, is zero there)
        self.padded = None
        if padding is not None and bool(padding.any()):
            self.padded = torch.cat([padding.new_zeros(n_problems, 1), padding], 1).float()
        self.m, self.d1 = n_classes - 1, self.x.shape[2]
        self.top = min(self.d1, max(16, TOP_WIDTH // self.m))
        # the preconditioner's Cholesky factor (P, (K-1) top, (K-1) top) and trailing
        # diagonal (P, K-1, R+1-top), and the iterations each problem's last solve took
        self._factor, self._diagonal = None, None
        self.cg_iterations = torch.zeros(n_problems, dtype=torch.long, device=features.device)
        self.settled = settled

    def from_head(self, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """``(P, K, R)`` weights and ``(P, K)`` biases to ``theta``."""
        coef = self.classes.T @ torch.cat([bias[..., None], weight], 2)
        return coef.reshape(len(coef), -1)

    def to_head(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        coef = self.classes @ theta.reshape(-1, self.m, self.d1)
        return coef[..., 1:], coef[..., 0]

    def _logits(self, theta: torch.Tensor) -> torch.Tensor:
        # K columns, not K-1 then the class basis: float64's matrix-vector product (K = 2)
        # is slower than its product with two columns
        return self.x @ (self.classes @ theta.reshape(-1, self.m, self.d1)).mT

    def value(self, theta: torch.Tensor) -> torch.Tensor:
        logits = self._logits(theta)
        picked = logits.gather(2, self.targets[..., None])[..., 0]
        loss = (torch.logsumexp(logits, 2) - picked).mean(1)
        coef = theta.reshape(-1, self.m, self.d1)
        return loss + 0.5 * (self.penalty * coef.square()).sum((1, 2))

    def step(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n_problems, n = self.x.shape[:2]
        coef = theta.reshape(n_problems, self.m, self.d1)
        p = torch.softmax(self._logits(theta), 2)  # (P, N, K)
        residual = ((p - self.onehot) @ self.classes).mT @ self.x  # (P, K-1, R+1)
        gradient = residual / n + self.penalty * coef
        # the forcing term of inexact Newton: loose far from the optimum, tight near it
        norm = gradient.reshape(n_problems, -1).norm(dim=1)
        tolerance = norm.sqrt().clamp(1e-5, 0.5).float()
        direction = self._solve(p, gradient.float(), tolerance)
        return gradient.reshape(n_problems, -1), direction.to(theta.dtype).reshape(n_problems, -1)

    def _solve(self, p: torch.Tensor, rhs: torch.Tensor, tolerance: torch.Tensor) -> torch.Tensor:
        """Preconditioned conjugate gradients on ``H d = rhs``, one per problem, each to a
        relative residual of its ``tolerance`` (at most ``MAX_CG`` iterations: a truncated
        solve still descends). A problem whose solve has ended leaves the batch, so the
        others' iterations cost only what they need.

        A solve also ends once the Newton decrement it estimates, ``rhs.x`` so far plus the
        preconditioned residual ``r.z`` for the rest (exact were the preconditioner the
        Hessian), is ``SETTLED_MARGIN`` times below twice ``settled``, the caller's stopping
        threshold: that direction would only confirm convergence, and the last solve of
        every fit is the most precise (it took 15-35 % of the iterations on MedMNIST
        embeddings, with the same objective to 1e-12).
        """
        n, classes = p.shape[1], self.classes.float()
        penalty = self.penalty.float()

        def hessian_times(v, x, p):  # the Gauss-Newton product, exact for the softmax loss
            # the large products on K-1 columns (the class basis applied on the small side):
            # (K-1)/K of the work of products on K, half for a binary head
            t = (x @ v.mT) @ classes.T  # (P, N, K)
            j = (p * (t - (p * t).sum(2, keepdim=True))) @ classes  # (P, N, K-1)
            # one problem (never batched): x^T times j laid out by columns, 1.1-1.4x faster
            # than j^T x on 1-5k x 500 float32 features with 5 classes (measured in the
            # conjugate gradient)
            single = self.x32t is not None
            jx = (self.x32t @ j[0].T.contiguous().T).T[None] if single else j.mT @ x
            return jx / n + penalty * v

        def dot(a, b):
            return (a * b).sum((1, 2))

        stale = self.cg_iterations > REBUILD_AFTER
        if self._factor is None or bool(stale.any()):  # each problem's own, when stale
            self._refresh(p, None if self._factor is None else stale, classes, penalty)
        # the problems still being solved, and their data: a problem whose solve has ended
        # leaves the batch, so that each iteration costs what the live problems need
        rows = torch.arange(len(rhs), device=rhs.device)
        x32, p32, factor, diagonal = self.x32, p.float(), self._factor, self._diagonal
        b, x, r = rhs, torch.zeros_like(rhs), rhs.clone()
        z = _precondition(r, factor, diagonal)
        d = z.clone()
        rz = dot(r, z)
        target = tolerance * rhs.flatten(1).norm(dim=1)
        reached, settled = torch.zeros_like(rz), 2 * self.settled / SETTLED_MARGIN
        solution = torch.zeros_like(rhs)
        self.cg_iterations = torch.full_like(self.cg_iterations, MAX_CG)
        for iteration in range(1, MAX_CG + 1):
            hd = hessian_times(d, x32, p32)
            curvature = dot(d, hd)
            alpha = rz / curvature
            flat = ~(curvature > 0)  # float32 rounding on a nearly flat direction: stop
            if bool(flat.any()):
                alpha = torch.where(flat, 0.0, alpha)
            step = alpha[:, None, None]
            x += step * d
            r -= step * hd
            done = flat | (r.flatten(1).norm(dim=1) <= target)
            if not bool(done.all()):
                z = _precondition(r, factor, diagonal)
                rz, previous = dot(r, z), rz
                reached = reached + alpha * dot(b, d)  # rhs.x
                done |= reached + rz < settled
            if bool(done.any()):
                solution[rows[done]] = x[done]
                self.cg_iterations[rows[done]] = iteration
                live = ~done
                if not bool(live.any()):
                    break
                rows, b, x, r, z, d = (t[live] for t in (rows, b, x, r, z, d))
                rz, previous, reached, target = (t[live] for t in (rz, previous, reached, target))
                x32, p32, factor, diagonal = (t[live] for t in (x32, p32, factor, diagonal))
            d = z + (rz / previous)[:, None, None] * d
        else:  # MAX_CG iterations: the solves still going are truncated there
            solution[rows] = x
        empty = ~solution.flatten(1).any(1)  # no step made: the preconditioned gradient
        if bool(empty.any()):
            fallback = _precondition(rhs, self._factor, self._diagonal)
            solution = torch.where(empty[:, None, None], fallback, solution)
        return solution

    def _refresh(self, p, which, classes, penalty) -> None:
        """Form the preconditioner again for the problems ``which`` marks (all: None): the
        Hessian on the first ``top`` coordinates (dense, Cholesky-factored) and its diagonal
        on the others."""
        if which is not None and bool(which.all()):
            which = None
        x32 = self.x32 if which is None else self.x32[which]
        padded = self.padded if which is None or self.padded is None else self.padded[which]
        p = p if which is None else p[which]
        n_problems, n = p.shape[:2]
        m, top = self.m, self.top
        pc = p @ self.classes
        # each sample's curvature block in the class basis, (P, N, m, m)
        curvature = torch.einsum("pnk,ka,kb->pnab", p, self.classes, self.classes)
        curvature = (curvature - pc[..., :, None] * pc[..., None, :]).float() / n
        x = x32[..., :top]
        block = x.new_empty(n_problems, m, top, m, top)
        for a in range(m):  # a row of blocks in one product (the lower ones mirror the upper)
            weighted = (curvature[:, :, a, a:, None] * x[:, :, None, :]).reshape(n_problems, n, -1)
            row = (x.mT @ weighted).reshape(n_problems, top, m - a, top)
            for b in range(a, m):
                block[:, a, :, b] = row[:, :, b - a]
                if b > a:
                    block[:, b, :, a] = row[:, :, b - a].mT
        block = block.reshape(n_problems, m * top, m * top)
        lead = penalty[:top].clone()
        lead[0] += torch.finfo(block.dtype).eps  # an intercept with all samples saturated
        lead = lead.repeat(m)
        if padded is not None:
            lead = lead + padded[:, :top].repeat(1, m)
        block.diagonal(dim1=1, dim2=2).add_(lead)
        factor, info = torch.linalg.cholesky_ex(block)
        diagonal = torch.diagonal(curvature, dim1=2, dim2=3).mT @ x32[..., top:].square()
        diagonal += penalty[top:]
        if padded is not None:
            diagonal += padded[:, None, top:]
        if diagonal.numel():  # no division by zero where nothing curves (l2 = 0)
            floor = diagonal.flatten(1).amax(1) * torch.finfo(diagonal.dtype).eps
            diagonal = torch.maximum(diagonal, floor[:, None, None])
        failed = info != 0
        if bool(failed.any()):  # rounding left a block indefinite: its diagonal instead
            own = block.diagonal(dim1=1, dim2=2).clamp_min(torch.finfo(block.dtype).tiny)
            own = torch.diag_embed(own)
            factor = torch.linalg.cholesky(torch.where(failed[:, None, None], own, block))
        if which is None:
            self._factor, self._diagonal = factor, diagonal
        else:
            self._factor[which], self._diagonal[which] = factor, diagonal


def _precondition(r: torch.Tensor, factor: torch.Tensor, diagonal: torch.Tensor) -> torch.Tensor:
    """The preconditioner's inverse applied to ``(P, K-1, R+1)`` vectors: two triangular
    solves with the Cholesky ``factor``, ``(P, (K-1) top, (K-1) top)``, on the leading
    coordinates, a division by the ``(P, K-1, R+1-top)`` ``diagonal`` on the others."""
    top = r.shape[2] - diagonal.shape[2]
    out = torch.empty_like(r)
    head = r[..., :top].reshape(len(r), -1, 1)
    head = torch.linalg.solve_triangular(factor, head, upper=False)
    head = torch.linalg.solve_triangular(factor.mT, head, upper=True)
    out[..., :top] = head.reshape(len(r), -1, top)
    out[..., top:] = r[..., top:] / diagonal
    return out
