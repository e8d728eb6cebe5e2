"""The probe's first-order protocols for one training set in the standardised space
(``embedkit.primitives.linear`` prepares the data and folds the standardisation back):

- ``fit_lbfgs``: full-batch L-BFGS on ``mean cross-entropy + l2/2 * ||W||^2`` (intercept
  unpenalised), with the loss and its gradient in closed form, run to a tolerance;
- ``fit_sgd``: the benchmark paper's protocol, mini-batch SGD (momentum 0.9, cosine
  schedule) with weight decay on the weights only.

Both take and return ``(K, D)`` weights and ``(K,)`` biases (torch tensors on the data's
device) and give ``(weight, bias, iterations, converged)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def _loss_and_residual(logits: torch.Tensor, targets: torch.Tensor):
    """``_loss`` and its gradient with respect to the logits: softmax cross-entropy for
    class indices, binary cross-entropy per label for 0/1 targets (averaged over samples
    and labels, as ``F.binary_cross_entropy_with_logits``)."""
    if targets.dtype == torch.long:
        log_p = torch.log_softmax(logits, 1)
        loss = -log_p.gather(1, targets[:, None]).mean()
        residual = log_p.exp()
        residual[torch.arange(len(targets), device=targets.device), targets] -= 1.0
        return loss, residual / len(targets)
    loss = (F.softplus(logits) - targets * logits).mean()
    return loss, (torch.sigmoid(logits) - targets) / targets.numel()


def fit_lbfgs(features, targets, weight, bias, l2, multi_label, options):
    """Full-batch L-BFGS from ``(weight, bias)``: ``(weight, bias, iterations, converged)``."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1,
        max_iter=options.max_iter,
        tolerance_grad=options.tolerance_grad,
        tolerance_change=options.tolerance_change,
        history_size=50,  # halves the iterations of an ill-conditioned fit vs 20
        line_search_fn="strong_wolfe",
    )

    def closure():  # the loss and its gradient in closed form: no autograd graph
        with torch.no_grad():
            loss, residual = _loss_and_residual(features @ weight.T + bias, targets)
            weight.grad = residual.T @ features + l2 * weight
            bias.grad = residual.sum(0)
            return loss + 0.5 * l2 * weight.square().sum()

    optimizer.step(closure)
    state = optimizer.state[weight]
    n_iter = int(state["n_iter"])
    # torch stops at a tolerance, or at max_iter iterations / 1.25 * max_iter evaluations
    converged = n_iter < options.max_iter and state["func_evals"] < options.max_iter * 5 // 4
    return weight.detach(), bias.detach(), n_iter, converged


def fit_sgd(features, targets, weight, bias, l2, multi_label, options):
    """The paper's protocol from ``(weight, bias)`` (the penalty falls on the weights only,
    as with ``lbfgs``): ``(weight, bias, 0, True)``."""
    weight, bias = weight.clone().requires_grad_(), bias.clone().requires_grad_()
    generator = torch.Generator().manual_seed(options.seed)
    optimizer = torch.optim.SGD(
        [{"params": [weight], "weight_decay": l2}, {"params": [bias], "weight_decay": 0.0}],
        lr=options.lr,
        momentum=0.9,
    )
    steps = options.epochs * max(1, -(-len(features) // options.batch_size))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(options.epochs):
        order = torch.randperm(len(features), generator=generator).to(features.device)
        for start in range(0, len(features), options.batch_size):
            batch = order[start : start + options.batch_size]
            optimizer.zero_grad()
            logits = features[batch] @ weight.T + bias
            _loss(logits, targets[batch], multi_label).backward()
            optimizer.step()
            scheduler.step()
    return weight.detach(), bias.detach(), 0, True
