"""kNN classification on cached embeddings, with FAISS.

``weighted`` (default) follows solo-learn / Wu et al. 2018: cosine similarity on normalised
embeddings, k = 20 neighbours, each voting ``exp(similarity / temperature)`` with T = 0.07.
``majority`` is a plain vote among k neighbours (MedMNIST+ uses k = 11). ``metric`` is
``cosine`` (default) or ``l2`` (Euclidean on raw embeddings; a neighbour's similarity is then
minus its distance).
"""

from __future__ import annotations

import logging

import polars as pl

from ..configs import KNNConfig
from ..primitives.metrics import classification_metrics
from ..primitives.neighbors import knn_predict
from ..store import EmbeddingStore
from .results import check_stores, encoder_columns, store_datasets

log = logging.getLogger(__name__)


def knn_classify(stores: list[EmbeddingStore], config: KNNConfig = KNNConfig()) -> pl.DataFrame:
    """kNN-classify the test split of each dataset from its training split.

    Returns:
        Columns: the encoder columns, ``dataset, k, weighting, temperature, accuracy, auc,
        balanced_accuracy``.
    """
    check_stores(stores)
    rows = []
    for store, columns in zip(stores, encoder_columns(stores), strict=True):
        for dataset in store_datasets(store, config.datasets):
            log.info("knn %s on %s", columns["encoder"], dataset)
            attrs = store.dataset_attrs(dataset)
            train, test = store.get(dataset, "train"), store.get(dataset, "test")
            proba = knn_predict(
                train.embeddings,
                train.labels,
                test.embeddings,
                len(attrs["class_names"]),
                attrs["task"],
                config,
            )
            rows.append(
                {
                    **columns,
                    "dataset": dataset,
                    "k": config.k,
                    "weighting": config.weighting,
                    "metric": config.metric,
                    "temperature": config.temperature,
                    **classification_metrics(test.labels, proba, attrs["task"]),
                }
            )
    return pl.DataFrame(rows)
