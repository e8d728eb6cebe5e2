"""Linear probes on cached embeddings at label fractions, hyperparameters chosen on val.

For each label fraction and seed, a stratified subset of the training split (see
``embedkit.data.label_fraction_indices``) trains a logistic regression on standardised
embeddings; the inverse regularisation ``C`` is chosen by validation accuracy and the chosen
model is scored on the test split.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import polars as pl
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler

from ..data.sampler import check_fraction, label_fraction_indices
from ..errors import ConfigError
from ..store import EmbeddingStore
from .metrics import classification_metrics
from .results import check_dims, encoder_columns, mean_ci, store_datasets

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProbeConfig:
    """Linear-probe protocol.

    Attributes:
        datasets: datasets to probe; empty means every dataset in the store.
        label_fractions: shares of the training labels, each in (0, 1].
        seeds: one subset per seed (fraction 1.0 uses the whole split, so one seed).
        c_grid: inverse L2 regularisation strengths tried on the validation split.
        max_iter: L-BFGS iterations.
    """

    datasets: tuple[str, ...] = ()
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    c_grid: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0)
    max_iter: int = 1000


def _model(c: float, task: str, max_iter: int):
    model = LogisticRegression(C=c, max_iter=max_iter)
    return OneVsRestClassifier(model) if task == "multi-label" else model


def _probabilities(model, x: np.ndarray, n_classes: int, task: str) -> np.ndarray:
    proba = model.predict_proba(x)
    if task == "multi-label":
        return proba
    full = np.zeros((len(x), n_classes))
    full[:, model.classes_] = proba  # classes absent from a tiny subset get probability 0
    return full


def fit_probe(train_x, train_y, val_x, val_y, task: str, n_classes: int, config: ProbeConfig):
    """Fit one probe per C, keep the best on val; returns (model, scaler, C)."""
    targets = train_y if task == "multi-label" else train_y.ravel()
    if task != "multi-label" and len(np.unique(targets)) < 2:
        raise ConfigError("the label subset holds a single class: raise the label fraction")
    scaler = StandardScaler().fit(train_x)
    train_x, val_x = scaler.transform(train_x), scaler.transform(val_x)
    best = None
    for c in config.c_grid:
        model = _model(c, task, config.max_iter).fit(train_x, targets)
        val = classification_metrics(val_y, _probabilities(model, val_x, n_classes, task), task)
        if best is None or val["accuracy"] > best[0]:
            best = (val["accuracy"], model, c)
    return best[1], scaler, best[2]


def probe(stores: list[EmbeddingStore], config: ProbeConfig = ProbeConfig()) -> pl.DataFrame:
    """Linear-probe every dataset of every store; one row per fraction and seed.

    Returns:
        Columns: the encoder columns, ``dataset, label_fraction, seed, n_train, c,
        accuracy, auc, balanced_accuracy``.
    """
    for fraction in config.label_fractions:
        check_fraction(fraction)
    check_dims(stores)
    rows = []
    for store in stores:
        for dataset in store_datasets(store, config.datasets):
            attrs = store.dataset_attrs(dataset)
            task, n_classes = attrs["task"], len(attrs["class_names"])
            train, val, test = (store.get(dataset, s) for s in ("train", "val", "test"))
            for fraction in config.label_fractions:
                for seed in config.seeds[:1] if fraction == 1.0 else config.seeds:
                    subset = label_fraction_indices(
                        train.labels, fraction, seed, multi_label=task == "multi-label"
                    )
                    model, scaler, c = fit_probe(
                        train.embeddings[subset],
                        train.labels[subset],
                        val.embeddings,
                        val.labels,
                        task,
                        n_classes,
                        config,
                    )
                    proba = _probabilities(
                        model, scaler.transform(test.embeddings), n_classes, task
                    )
                    rows.append(
                        {
                            **encoder_columns(store),
                            "dataset": dataset,
                            "label_fraction": fraction,
                            "seed": seed,
                            "n_train": len(subset),
                            "c": c,
                            **classification_metrics(test.labels, proba, task),
                        }
                    )
                    log.debug(
                        "probe %s %s fraction %g seed %d: %.3f",
                        store.encoder_name,
                        dataset,
                        fraction,
                        seed,
                        rows[-1]["accuracy"],
                    )
    return pl.DataFrame(rows)


def summarise_probe(table: pl.DataFrame) -> pl.DataFrame:
    """Mean and 95 % t-interval over seeds per encoder, dataset and label fraction."""
    keys = ["encoder", "dataset", "label_fraction"]
    rows = []
    for key, group in table.group_by(keys, maintain_order=True):
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = group.height
        for metric in ("accuracy", "auc", "balanced_accuracy"):
            row[metric], row[f"{metric}_ci95"] = mean_ci(group[metric].to_numpy())
        rows.append(row)
    return pl.DataFrame(rows)
