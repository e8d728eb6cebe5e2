"""OOD detection over cached embeddings: every scorer on every (ID, OOD) dataset pair.

A scorer is fitted once per encoder and ID dataset on the ID training split; the ID test
split and the OOD datasets' splits are scored; metrics follow OpenOOD (OOD positive).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ..errors import ConfigError
from ..ood import get_scorer
from ..store import EmbeddingStore
from .metrics import ood_metrics
from .results import check_dims, encoder_columns, store_datasets


@dataclass(frozen=True)
class OODConfig:
    """Which pairs and scorers to evaluate.

    Attributes:
        id_datasets: in-distribution datasets; empty means every dataset in the store.
        ood_datasets: OOD datasets; empty means every other dataset in the store.
        scorers: registered scorer names.
        scorer_params: keyword arguments per scorer name, e.g. ``{"knn": {"k": 50}}``.
        ood_splits: ``test`` (the test split of each OOD dataset) or ``all`` (every split).
    """

    id_datasets: tuple[str, ...] = ()
    ood_datasets: tuple[str, ...] = ()
    scorers: tuple[str, ...] = ("knn",)
    scorer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood_splits: str = "test"


def _ood_embeddings(store: EmbeddingStore, dataset: str, ood_splits: str) -> np.ndarray:
    if ood_splits == "test":
        return store.get(dataset, "test").embeddings
    if ood_splits == "all":
        return np.concatenate([store.get(dataset, s).embeddings for s in store.splits(dataset)])
    raise ConfigError(f"--ood-splits must be 'test' or 'all', not '{ood_splits}'")


def evaluate_ood(stores: list[EmbeddingStore], config: OODConfig = OODConfig()) -> pl.DataFrame:
    """Evaluate every scorer on every ID × OOD pair of every store.

    Returns:
        One row per (encoder, id_dataset, ood_dataset, scorer) with ``params, auroc,
        fpr95, aupr_in, aupr_out, n_id, n_ood``; metrics are fractions in [0, 1].
    """
    scorer_classes = {name: get_scorer(name) for name in config.scorers}
    check_dims(stores)
    rows = []
    for store in stores:
        id_datasets = store_datasets(store, config.id_datasets)
        for id_dataset in id_datasets:
            ood_datasets = [
                d for d in store_datasets(store, config.ood_datasets) if d != id_dataset
            ]
            if not ood_datasets:
                raise ConfigError(
                    f"no OOD dataset for {id_dataset}: the store holds no other "
                    f"dataset; embed one, or name it with --ood"
                )
            train = store.get(id_dataset, "train")
            id_test = store.get(id_dataset, "test").embeddings
            for name, cls in scorer_classes.items():
                scorer = cls(**config.scorer_params.get(name, {})).fit(
                    train.embeddings, train.labels
                )
                id_scores = scorer.score_samples(id_test)
                params = json.dumps(scorer.get_params(), sort_keys=True)
                for ood_dataset in ood_datasets:
                    ood_scores = scorer.score_samples(
                        _ood_embeddings(store, ood_dataset, config.ood_splits)
                    )
                    rows.append(
                        {
                            **encoder_columns(store),
                            "id_dataset": id_dataset,
                            "ood_dataset": ood_dataset,
                            "scorer": name,
                            "params": params,
                            **ood_metrics(id_scores, ood_scores),
                            "n_id": len(id_scores),
                            "n_ood": len(ood_scores),
                        }
                    )
    return pl.DataFrame(rows)
