"""The online kNN monitor: how well the encoder's features classify, while it trains.

Every few epochs the encoder embeds a fixed subset of the training split (the bank) and the
validation split, and the weighted kNN vote of ``embedkit.primitives.neighbors`` (cosine, k = 20,
T = 0.07) reports validation accuracy. Nothing random is drawn from the training RNGs, so
monitoring does not change the run; it costs one inference pass over bank and validation.
"""

from __future__ import annotations

import numpy as np
import torch

from ..backbones import Encoder
from ..data import SplitData
from ..primitives.inference import encode
from ..primitives.metrics import classification_metrics
from ..primitives.neighbors import knn_predict


class KNNMonitor:
    """kNN validation accuracy of an encoder during training.

    Args:
        train: the training split (the bank is drawn from it).
        val: the split to classify.
        task: the dataset's task (``multi-class``, ``binary-class``, ``multi-label``...).
        n_classes: number of classes (or labels).
        max_bank: at most this many training images in the bank (a fixed random subset).
        batch_size: images per inference batch.
    """

    def __init__(
        self,
        train: SplitData,
        val: SplitData,
        task: str,
        n_classes: int,
        max_bank: int = 10_000,
        batch_size: int = 512,
    ) -> None:
        keep = np.arange(len(train))
        if len(train) > max_bank:
            keep = np.sort(np.random.default_rng(0).choice(len(train), max_bank, replace=False))
        self.bank_images, self.bank_labels = train.images[keep], train.labels[keep]
        self.val_images, self.val_labels = val.images, val.labels
        self.task, self.n_classes, self.batch_size = task, n_classes, batch_size

    def _embed(self, encoder: Encoder, images: np.ndarray, device: torch.device) -> np.ndarray:
        return np.concatenate(
            [f for _, f in encode(encoder, images, self.batch_size, device)]
        ).astype(np.float32)

    def __call__(self, encoder: Encoder, device: torch.device) -> dict[str, float]:
        """Validation ``knn_accuracy`` and ``knn_auc``; leaves the encoder in train mode."""
        try:
            bank = self._embed(encoder, self.bank_images, device)
            val = self._embed(encoder, self.val_images, device)
        finally:
            encoder.train()
        proba = knn_predict(bank, self.bank_labels, val, self.n_classes, self.task)
        metrics = classification_metrics(self.val_labels, proba, self.task)
        return {"knn_accuracy": metrics["accuracy"], "knn_auc": metrics["auc"]}
