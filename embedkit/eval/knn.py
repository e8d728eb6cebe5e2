"""kNN classification on cached embeddings, with FAISS.

``weighted`` (default) follows solo-learn / Wu et al. 2018: cosine similarity on normalised
embeddings, k = 20 neighbours, each voting ``exp(similarity / temperature)`` with T = 0.07.
``majority`` is a plain vote among k neighbours (MedMNIST+ uses k = 11). ``metric`` is
``cosine`` (default) or ``l2`` (Euclidean on raw embeddings; a neighbour's similarity is then
minus its distance).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl

from ..errors import ConfigError
from ..store import EmbeddingStore
from .metrics import classification_metrics
from .neighbors import NeighborIndex
from .results import check_stores, encoder_columns, store_datasets

log = logging.getLogger(__name__)

WEIGHTINGS = ("weighted", "majority")
METRICS = ("cosine", "l2")


@dataclass(frozen=True)
class KNNConfig:
    """kNN classification protocol.

    Attributes:
        datasets: datasets to classify; empty means every dataset in the store.
        k: neighbours.
        temperature: softness of the weighted vote.
        weighting: ``weighted`` or ``majority``.
        metric: ``cosine`` or ``l2``.
    """

    datasets: tuple[str, ...] = ()
    k: int = 20
    temperature: float = 0.07
    weighting: str = "weighted"
    metric: str = "cosine"


def knn_predict(bank_x, bank_y, queries, n_classes: int, task: str, config: KNNConfig):
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
