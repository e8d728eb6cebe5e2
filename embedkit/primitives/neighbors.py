"""Exact nearest-neighbour search: FAISS, or blocked matmul + top-k in torch on a GPU.

Which engine searches (``backend="auto"``): FAISS on the GPU when FAISS sees one (faiss-gpu),
else torch on the GPU when torch sees one (a CUDA torch beside a CPU-only FAISS, e.g. where
no faiss-gpu wheel matches the CUDA of torch), else FAISS on the CPU. Both are exact, in
float32: they return the same neighbours up to the order of tied scores. FAISS is imported on
first use: where it is not installed, ``auto`` picks torch (on the CPU too) and ``faiss``
is refused with a one-line error.

``knn_predict`` is the kNN vote over such a search (solo-learn's weighted vote, or a majority
vote), with its settings in ``KNNVote``: kNN classification, the pretraining monitor and
their tests share it.
"""

from __future__ import annotations

from contextlib import contextmanager
from functools import cache

import numpy as np

from ..configs import KNNVote
from ..errors import ConfigError

BACKENDS = ("auto", "faiss", "torch")
# the (query block x bank) score matrix of the torch search stays under this many floats
_BLOCK_FLOATS = 2**28  # 1 GiB in float32


_EPS = 1e-10  # guards the division by a row's length, in both normalisations below


def l2_normalise(x: np.ndarray, eps: float = _EPS) -> np.ndarray:
    """Rows scaled to unit length (the epsilon guards the division, not the result)."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)


@contextmanager
def _no_tf32():
    """Exact float32 CUDA matmuls inside the block (TF32 off), the setting restored after."""
    import torch

    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


@cache
def _faiss():
    """The faiss module, or None where it is not installed."""
    try:
        import faiss
    except ImportError:
        return None
    return faiss


def _torch_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_backend(backend: str = "auto") -> str:
    """``faiss`` or ``torch`` for ``backend`` (see the module docstring for ``auto``)."""
    if backend not in BACKENDS:
        raise ConfigError(f"unknown search backend '{backend}': use {', '.join(BACKENDS)}")
    faiss = _faiss()
    if backend == "faiss" and faiss is None:
        raise ConfigError(
            "the faiss search backend needs FAISS: pip install faiss-gpu (or faiss-cpu), or "
            "use the torch backend"
        )
    if backend != "auto":
        return backend
    if faiss is None:
        return "torch"
    if faiss.get_num_gpus() > 0:
        return "faiss"
    return "torch" if _torch_cuda() else "faiss"


class NeighborIndex:
    """A flat (exact) index over a bank of vectors.

    Args:
        bank: ``(N, D)`` float vectors.
        metric: ``ip`` (inner product), ``cosine`` (inner product of rows scaled to unit
            length by the index: on the GPU for the torch search, with ``l2_normalise`` for
            FAISS) or ``l2`` (squared Euclidean distance, as FAISS returns it).
        backend: ``auto``, ``faiss`` or ``torch`` (see the module docstring).
        device: the torch backend's device (default: CUDA when present, else CPU).
    """

    def __init__(
        self, bank: np.ndarray, metric: str = "ip", backend: str = "auto", device=None
    ) -> None:
        if metric not in ("ip", "cosine", "l2"):
            raise ConfigError(f"unknown metric '{metric}': use ip, cosine or l2")
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        self.metric, self.size = metric, len(bank)
        self.backend = resolve_backend(backend)
        if self.backend == "torch":
            import torch

            device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.bank = self._rows(torch.from_numpy(bank).to(device))
            self.bank_sq = (self.bank * self.bank).sum(1) if metric == "l2" else None
            return
        if metric == "cosine":
            bank = l2_normalise(bank)
        faiss = _faiss()
        index = (
            faiss.IndexFlatL2(bank.shape[1]) if metric == "l2" else faiss.IndexFlatIP(bank.shape[1])
        )
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(bank)
        self.index = index

    def search(self, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (``ip``) or squared distances (``l2``) and indices of the k nearest,
        best first. ``k`` must lie in 1..N: FAISS pads a larger one with -1, which would read
        as the last row of the bank. ``queries``: an array, or for the torch search the
        tensor ``device_rows`` made of one (to upload queries searched several times once)."""
        if not 1 <= k <= self.size:
            raise ConfigError(
                f"k={k} neighbours asked of a bank of {self.size} embeddings: use 1 to {self.size}"
            )
        if self.backend == "torch":
            import torch

            if isinstance(queries, torch.Tensor):
                return self._torch_search(queries, k, prepared=True)
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if self.backend == "faiss":
            return self.index.search(
                l2_normalise(queries) if self.metric == "cosine" else queries, k
            )
        return self._torch_search(queries, k)

    def device_rows(self, queries: np.ndarray):
        """``queries`` as the torch search compares them, on its device, for ``search``."""
        import torch

        queries = np.ascontiguousarray(queries, dtype=np.float32)
        return self._rows(torch.from_numpy(queries).to(self.bank.device))

    def _rows(self, x):
        """Rows as the metric compares them: scaled to unit length for ``cosine``, in float32
        as ``l2_normalise`` does (on the device, where the torch search runs)."""
        if self.metric != "cosine":
            return x
        return x / (x.norm(dim=1, keepdim=True) + _EPS)

    def _torch_search(self, queries, k: int, prepared: bool = False):
        import torch

        block = max(1, min(len(queries), _BLOCK_FLOATS // max(1, self.size)))
        scores, indices = [], []
        # exact float32 products: no TF32 on Ampere and later, whatever the global setting
        with torch.no_grad(), _no_tf32():
            for start in range(0, len(queries), block):
                part = queries[start : start + block]
                q = part if prepared else self._rows(torch.from_numpy(part).to(self.bank.device))
                product = q @ self.bank.T
                if self.metric != "l2":
                    values, rows = product.topk(k, dim=1)
                else:  # |q|^2 - 2 q.b + |b|^2, clamped at 0 as FAISS does
                    squared = (q * q).sum(1, keepdim=True) - 2 * product + self.bank_sq
                    values, rows = squared.clamp_min_(0).topk(k, dim=1, largest=False)
                scores.append(values.cpu())
                indices.append(rows.cpu())
        return torch.cat(scores).numpy(), torch.cat(indices).numpy().astype(np.int64)


WEIGHTINGS = ("weighted", "majority")
METRICS = ("cosine", "l2")


def knn_predict(bank_x, bank_y, queries, n_classes: int, task: str, config: KNNVote = KNNVote()):
    """Class (or label) probabilities of ``queries`` from their neighbours in the bank."""
    if config.weighting not in WEIGHTINGS:
        raise ConfigError(
            f"unknown kNN weighting '{config.weighting}': use {' or '.join(WEIGHTINGS)}"
        )
    if config.metric not in METRICS:
        raise ConfigError(f"unknown kNN metric '{config.metric}': use {' or '.join(METRICS)}")
    if config.k < 1:
        raise ConfigError(f"k must be at least 1, not {config.k}")
    if config.weighting == "weighted" and not config.temperature > 0:
        raise ConfigError(
            f"the temperature of the weighted vote must be above 0, not {config.temperature} "
            f"(solo-learn uses 0.07; --weighting majority takes no temperature)"
        )
    if config.metric == "cosine":
        index = NeighborIndex(bank_x, metric="cosine")  # rows normalised where it searches
        similarity, neighbours = index.search(queries, config.k)
    else:
        squared, neighbours = NeighborIndex(bank_x, metric="l2").search(queries, config.k)
        similarity = -np.sqrt(np.maximum(squared, 0.0))
    if config.weighting == "weighted":
        weights = np.exp((similarity - similarity.max(axis=1, keepdims=True)) / config.temperature)
    else:
        weights = np.ones_like(similarity)
    if task == "multi-label":
        votes = np.einsum("qk,qkl->ql", weights, bank_y[neighbours].astype(np.float64))
    else:
        votes = np.zeros((len(queries), n_classes))
        np.add.at(votes, (np.arange(len(queries))[:, None], bank_y.ravel()[neighbours]), weights)
    return votes / weights.sum(axis=1, keepdims=True)
