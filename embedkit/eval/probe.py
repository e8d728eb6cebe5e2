"""Linear probes on cached embeddings at label fractions, hyperparameters chosen on val.

For each label fraction and seed, a stratified subset of the training split (see
``embedkit.data.label_fraction_indices``) trains a linear head (``embedkit.primitives.linear``)
for each L2 strength (and, for the ``sgd`` protocol, each learning rate); the setting with
the best validation accuracy is scored on the test split.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import polars as pl

from ..configs import ProbeConfig
from ..data.sampler import check_fraction, label_fraction_indices
from ..errors import ConfigError, StoreError
from ..primitives.linear import PROTOCOLS, LinearHead, fit_linear_paths
from ..primitives.metrics import accuracy, classification_metrics
from ..store import EmbeddingStore
from .results import check_stores, encoder_columns, mean_ci, store_datasets

log = logging.getLogger(__name__)


def fit_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    val_x: np.ndarray,
    val_y: np.ndarray,
    task: str,
    n_classes: int,
    config: ProbeConfig,
    seed: int = 0,
) -> tuple[LinearHead, dict[str, float]]:
    """Fit one head per setting of the grid; return the best on val and its setting.

    The L2 values are visited from the strongest to the weakest penalty, and with ``newton`` or
    ``lbfgs`` each fit starts from the previous solution (a warm-started regularisation path: the
    same optima in fewer iterations). On equal validation accuracy the stronger penalty wins. The
    setting records ``unconverged``: how many fits of the grid hit the iteration cap.
    """
    return fit_probes([train_x], [train_y], val_x, val_y, task, n_classes, config, [seed])[0]


def fit_probes(
    train_xs: Sequence[np.ndarray],
    train_ys: Sequence[np.ndarray],
    val_x: np.ndarray,
    val_y: np.ndarray,
    task: str,
    n_classes: int,
    config: ProbeConfig,
    seeds: Sequence[int],
) -> list[tuple[LinearHead, dict[str, float]]]:
    """``fit_probe`` for several training subsets (the seeds of a label fraction), one
    result per subset: the same heads, with the exact protocols' fits of every subset solved
    side by side (``primitives.linear.fit_linear_paths``)."""
    multi_label = task == "multi-label"
    if not multi_label and any(len(np.unique(y)) < 2 for y in train_ys):
        raise ConfigError("the label subset holds a single class: raise the label fraction")
    l2_path = sorted(config.l2_grid, reverse=True)
    rates = config.lr_grid if config.protocol == "sgd" else (None,)  # one path per lr
    paths = {
        lr: fit_linear_paths(
            train_xs,
            train_ys,
            n_classes,
            tuple(l2_path),
            multi_label,
            protocol=config.protocol,
            device=config.device,
            seeds=seeds,
            epochs=config.epochs,
            **({} if lr is None else {"lr": lr}),
        )
        for lr in rates
    }
    chosen = []
    for subset in range(len(train_xs)):
        fitted = [  # the grid's order: L2 strongest first, each with every lr
            ({"l2": l2} if lr is None else {"l2": l2, "lr": lr}, paths[lr][subset][i])
            for i, l2 in enumerate(l2_path)
            for lr in rates
        ]
        best, unconverged = None, 0
        for setting, head in fitted:
            unconverged += not head.converged
            score = accuracy(val_y, head.probabilities(val_x), task)
            if best is None or score > best[0]:
                best = (score, head, setting)
        if unconverged:
            log.warning(
                "%d of %d probe fits stopped at the iteration cap before converging",
                unconverged,
                len(fitted),
            )
        chosen.append((best[1], {**best[2], "unconverged": unconverged}))
    return chosen


def _require_splits(store: EmbeddingStore, dataset: str) -> None:
    """A probe trains on train, picks L2 on val and scores test: all three must be stored."""
    missing = [s for s in ("train", "val", "test") if s not in store.splits(dataset)]
    if missing:
        raise StoreError(
            f"store {store.path} lacks the {', '.join(missing)} split of {dataset}, which the "
            f"probe needs (train fits, val chooses L2, test scores): embed it with `embedkit "
            f"embed --dataset {dataset} --splits train,val,test --store {store.path}` and the "
            f"same encoder (a dataset without them, such as a test-only external set, can be "
            f"scored as OOD but not probed)"
        )


def probe(stores: list[EmbeddingStore], config: ProbeConfig = ProbeConfig()) -> pl.DataFrame:
    """Linear-probe every dataset of every store; one row per fraction and seed.

    Returns:
        Columns: the encoder columns, ``dataset, label_fraction, seed, n_train, protocol,
        l2, converged, unconverged_fits, accuracy, auc, balanced_accuracy``: ``converged``
        is False when the chosen head stopped at the Newton or L-BFGS iteration cap, and
        ``unconverged_fits`` counts such fits over the whole L2 grid.
    """
    check_probe_config(config)
    check_stores(stores)
    rows = []
    for store, columns in zip(stores, encoder_columns(stores), strict=True):
        for dataset in store_datasets(store, config.datasets):
            attrs = store.dataset_attrs(dataset)
            task, n_classes = attrs["task"], len(attrs["class_names"])
            _require_splits(store, dataset)
            train, val, test = (store.get(dataset, s) for s in ("train", "val", "test"))
            _check_classes(train.labels, test.labels, task, dataset)
            fits = sum(1 if f == 1.0 else len(config.seeds) for f in config.label_fractions)
            log.info("probe %s on %s: %d fits", columns["encoder"], dataset, fits)
            for fraction in config.label_fractions:
                seeds = config.seeds[:1] if fraction == 1.0 else config.seeds
                subsets = [
                    label_fraction_indices(
                        train.labels, fraction, seed, multi_label=task == "multi-label"
                    )
                    for seed in seeds
                ]
                fits = fit_probes(
                    [train.embeddings[subset] for subset in subsets],
                    [train.labels[subset] for subset in subsets],
                    val.embeddings,
                    val.labels,
                    task,
                    n_classes,
                    config,
                    seeds,
                )
                for seed, subset, (head, setting) in zip(seeds, subsets, fits, strict=True):
                    metrics = classification_metrics(
                        test.labels, head.probabilities(test.embeddings), task
                    )
                    rows.append(
                        {
                            **columns,
                            "dataset": dataset,
                            "label_fraction": fraction,
                            "seed": seed,
                            "n_train": len(subset),
                            "protocol": config.protocol,
                            "l2": setting["l2"],
                            "converged": head.converged,
                            "unconverged_fits": setting["unconverged"],
                            **metrics,
                        }
                    )
                    log.debug(
                        "probe %s %s %g/%d: %.3f",
                        store.encoder_name,
                        dataset,
                        fraction,
                        seed,
                        metrics["accuracy"],
                    )
    return pl.DataFrame(rows)


def check_probe_config(config: ProbeConfig) -> None:
    """Refuse a protocol that cannot run, before any store is read."""
    for name in ("label_fractions", "seeds", "l2_grid"):
        if not getattr(config, name):
            raise ConfigError(f"the probe needs at least one value in {name}")
    for fraction in config.label_fractions:
        check_fraction(fraction)
    if any(seed < 0 for seed in config.seeds):
        raise ConfigError(f"seeds must be 0 or more, not {list(config.seeds)}")
    if config.protocol not in PROTOCOLS:
        raise ConfigError(f"unknown probe protocol '{config.protocol}': use {', '.join(PROTOCOLS)}")
    if any(not l2 >= 0 for l2 in config.l2_grid):
        raise ConfigError(f"L2 strengths must be 0 or more, not {list(config.l2_grid)}")
    if config.protocol == "sgd":
        if not config.lr_grid or any(not lr > 0 for lr in config.lr_grid):
            raise ConfigError(f"SGD learning rates must be above 0, not {list(config.lr_grid)}")
        if config.epochs < 1:
            raise ConfigError(f"the SGD protocol needs at least 1 epoch, not {config.epochs}")


def _check_classes(train_labels, test_labels, task: str, dataset: str) -> None:
    if task == "multi-label":
        return
    missing = sorted(set(np.unique(test_labels).tolist()) - set(np.unique(train_labels).tolist()))
    if missing:
        raise ConfigError(
            f"{dataset}: classes {missing} appear in test but not in the training "
            f"split, so no label fraction can include them"
        )


def summarise_probe(
    table: pl.DataFrame, keys: Sequence[str] = ("encoder", "dataset", "label_fraction")
) -> pl.DataFrame:
    """Mean and 95 % t-interval over seeds per encoder, dataset and label fraction (or
    per ``keys``), with the number of seeds, the training-subset size (its mean, should a
    multi-label subset differ between seeds) and how many seeds' chosen heads did not
    converge. The interval is null where one seed leaves none (a fraction of 100 % uses
    every label, so it is fitted once)."""
    keys = list(keys)
    rows = []
    for key, group in table.group_by(keys, maintain_order=True):
        row = dict(zip(keys, key, strict=True))
        row["seeds"] = group.height
        if "n_train" in group.columns:
            row["n_train"] = round(float(group["n_train"].mean()))
        if "converged" in group.columns:
            row["unconverged"] = int((~group["converged"]).sum())
        for metric in ("accuracy", "auc", "balanced_accuracy"):
            mean, half = mean_ci(group[metric].to_numpy())
            row[metric], row[f"{metric}_ci95"] = mean, None if np.isnan(half) else half
        rows.append(row)
    return pl.DataFrame(rows)
