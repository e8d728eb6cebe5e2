"""Exact nearest-neighbour search with FAISS, on the GPU when FAISS sees one."""

from __future__ import annotations

import faiss
import numpy as np

from ..errors import ConfigError


def l2_normalise(x: np.ndarray, eps: float = 1e-10) -> np.ndarray:
    """Rows scaled to unit length (the epsilon guards the division, not the result)."""
    x = np.asarray(x, dtype=np.float32)
    return x / (np.linalg.norm(x, axis=1, keepdims=True) + eps)


class NeighborIndex:
    """A flat (exact) FAISS index over a bank of vectors.

    Args:
        bank: ``(N, D)`` float vectors.
        metric: ``ip`` (inner product: cosine on normalised rows) or ``l2`` (squared
            Euclidean distance, as FAISS returns it).
    """

    def __init__(self, bank: np.ndarray, metric: str = "ip") -> None:
        bank = np.ascontiguousarray(bank, dtype=np.float32)
        dim = bank.shape[1]
        index = faiss.IndexFlatIP(dim) if metric == "ip" else faiss.IndexFlatL2(dim)
        if faiss.get_num_gpus() > 0:
            index = faiss.index_cpu_to_all_gpus(index)
        index.add(bank)
        self.index, self.metric, self.size = index, metric, len(bank)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities (``ip``) or squared distances (``l2``) and indices of the k nearest.
        ``k`` must lie in 1..N: FAISS pads a larger one with -1, which would read as the
        last row of the bank."""
        if not 1 <= k <= self.size:
            raise ConfigError(
                f"k={k} neighbours asked of a bank of {self.size} embeddings: use 1 to {self.size}"
            )
        return self.index.search(np.ascontiguousarray(queries, dtype=np.float32), k)
