"""Linear heads on cached embeddings, in torch, on the GPU when there is one.

Two protocols fit the same model, a linear layer on standardised embeddings with softmax
cross-entropy (binary cross-entropy per label for multi-label datasets):

- ``lbfgs`` (default): full-batch L-BFGS with an L2 penalty: the whole training subset is one
  batch, so a probe takes a fraction of a second even on CPU.
- ``sgd``: the benchmark paper's protocol, mini-batch SGD (momentum 0.9, cosine schedule) for
  100 epochs with weight decay.

The returned head maps raw embeddings to logits (the standardisation is folded into it), so
OOD scorers can use its weight and bias in feature space (ViM, residual).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..utils import resolve_device

PROTOCOLS = ("lbfgs", "sgd")


@dataclass(frozen=True)
class LinearHead:
    """``logits = X @ weight.T + bias`` for raw (unstandardised) embeddings."""

    weight: np.ndarray
    bias: np.ndarray
    multi_label: bool

    def logits(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(x, dtype=np.float64) @ self.weight.T + self.bias

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        z = self.logits(x)
        if self.multi_label:
            return 1.0 / (1.0 + np.exp(-z))
        z = z - z.max(axis=1, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=1, keepdims=True)


def _loss(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits, targets)
    return F.cross_entropy(logits, targets)


def _targets(y: np.ndarray, multi_label: bool, device) -> torch.Tensor:
    if multi_label:
        return torch.as_tensor(y, dtype=torch.float32, device=device)
    return torch.as_tensor(np.asarray(y).reshape(-1), dtype=torch.long, device=device)


def fit_linear(
    x: np.ndarray,
    y: np.ndarray,
    n_outputs: int,
    multi_label: bool = False,
    l2: float = 1e-4,
    protocol: str = "lbfgs",
    epochs: int = 100,
    lr: float = 0.1,
    batch_size: int = 256,
    max_iter: int = 200,
    seed: int = 0,
    device: str = "auto",
) -> LinearHead:
    """Fit a linear head on embeddings.

    Args:
        x: ``(N, D)`` embeddings.
        y: ``(N, 1)`` class indices, or ``(N, L)`` 0/1 labels when ``multi_label``.
        n_outputs: classes (or labels).
        l2: L2 penalty on the weights (``lbfgs``) or weight decay (``sgd``).
        protocol: ``lbfgs`` (full batch) or ``sgd`` (mini-batches for ``epochs``).
        epochs, lr, batch_size: of the ``sgd`` protocol.
        max_iter: L-BFGS iterations.
        seed: initialisation and batch order.
        device: ``auto``, ``cpu`` or ``cuda``.
    """
    dev = resolve_device(device)
    generator = torch.Generator().manual_seed(seed)
    features = torch.as_tensor(np.asarray(x), dtype=torch.float32, device=dev)
    mean, std = features.mean(0), features.std(0).clamp_min(1e-6)
    features = (features - mean) / std
    targets = _targets(y, multi_label, dev)
    weight = torch.zeros(n_outputs, features.shape[1], device=dev, requires_grad=True)
    bias = torch.zeros(n_outputs, device=dev, requires_grad=True)
    if protocol == "lbfgs":
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            lr=1,
            max_iter=max_iter,
            tolerance_grad=1e-6,
            tolerance_change=1e-9,
            history_size=20,
            line_search_fn="strong_wolfe",
        )

        def closure():
            optimizer.zero_grad()
            loss = _loss(features @ weight.T + bias, targets, multi_label)
            loss = loss + 0.5 * l2 * weight.square().sum()
            loss.backward()
            return loss

        optimizer.step(closure)
    elif protocol == "sgd":
        optimizer = torch.optim.SGD(  # the penalty falls on the weights only, as with lbfgs
            [{"params": [weight], "weight_decay": l2}, {"params": [bias], "weight_decay": 0.0}],
            lr=lr,
            momentum=0.9,
        )
        steps = epochs * max(1, -(-len(features) // batch_size))
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        for _ in range(epochs):
            order = torch.randperm(len(features), generator=generator).to(dev)
            for start in range(0, len(features), batch_size):
                batch = order[start : start + batch_size]
                optimizer.zero_grad()
                _loss(features[batch] @ weight.T + bias, targets[batch], multi_label).backward()
                optimizer.step()
                scheduler.step()
    else:
        raise ConfigError(f"unknown probe protocol '{protocol}': use {' or '.join(PROTOCOLS)}")
    with torch.no_grad():  # fold the standardisation into the head
        raw_weight = weight / std
        raw_bias = bias - raw_weight @ mean
    return LinearHead(
        raw_weight.double().cpu().numpy(), raw_bias.double().cpu().numpy(), multi_label
    )
