"""Building blocks that several families use, below all of them.

- ``inference``: batched encoding of uint8 images (prefetched batches, pinned copies,
  autocast), used by extraction and by the pretraining stage's kNN monitor.
- ``linear``: the L2-regularised linear head fitted to tolerance (probes, logit OOD scorers),
  by ``newton`` (with ``truncated_newton`` for the softmax) or ``first_order`` (L-BFGS, and
  the paper's SGD).
- ``neighbors``: exact nearest-neighbour search (FAISS, or torch) and the kNN vote
  (kNN classification, the kNN monitor, the kNN OOD scorer, maps).
- ``metrics``: classification and OOD metrics (scikit-learn's and OpenOOD's definitions).

Nothing here imports a stage (``pretrain``, ``embed``, ``eval``) or a family (``methods``,
``ood``): the import-linter contract in ``pyproject.toml`` says so.
"""

from .inference import EncoderWithHead, encode
from .linear import LinearHead, fit_linear
from .metrics import classification_metrics, ood_metrics
from .neighbors import KNNVote, NeighborIndex, knn_predict, l2_normalise

__all__ = [
    "EncoderWithHead",
    "KNNVote",
    "LinearHead",
    "NeighborIndex",
    "classification_metrics",
    "encode",
    "fit_linear",
    "knn_predict",
    "l2_normalise",
    "ood_metrics",
]
