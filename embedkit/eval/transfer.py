"""Cross-dataset transfer: encoders pretrained on one dataset, probed on every other one.

The stores of several encoders (each pretrained on its own dataset, read from provenance)
are probed on the same target datasets; the result is a long table and, pivoted, a matrix
with one row per encoder and one column per target dataset.
"""

from __future__ import annotations

from dataclasses import replace

import polars as pl

from ..configs import TransferConfig
from ..errors import ConfigError, StoreError
from ..store import EmbeddingStore
from .probe import probe

METRICS = ("accuracy", "auc", "balanced_accuracy")


def shared_datasets(stores: list[EmbeddingStore]) -> tuple[str, ...]:
    """Datasets present in every store."""
    common = set(stores[0].datasets())
    for store in stores[1:]:
        common &= set(store.datasets())
    if not common:
        raise StoreError("the stores share no dataset: embed the same targets with every encoder")
    return tuple(sorted(common))


def transfer(
    stores: list[EmbeddingStore], config: TransferConfig = TransferConfig()
) -> pl.DataFrame:
    """Probe every encoder on every target; one row per (encoder, target, fraction).

    Returns:
        The probe summary columns plus ``pretrain_dataset``, ``unconverged`` (seeds whose
        chosen head stopped at the iteration cap) and ``in_domain`` (the target is the
        encoder's pretraining data, or one of its domains).
    """
    check_metric(config.metric)
    targets = config.datasets or shared_datasets(stores)
    table = probe(stores, replace(config.probe, datasets=targets))
    return (
        table.group_by(
            ["encoder", "pretrain_dataset", "dataset", "label_fraction"], maintain_order=True
        )
        .agg(
            pl.len().alias("seeds"),
            (~pl.col("converged")).sum().alias("unconverged"),
            *(pl.col(m).mean() for m in METRICS),
        )
        .with_columns(
            in_domain=pl.struct("pretrain_dataset", "dataset").map_elements(
                lambda r: r["dataset"] in r["pretrain_dataset"].split("+"), return_dtype=pl.Boolean
            )
        )
    )


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise ConfigError(f"unknown metric '{metric}': use {', '.join(METRICS)}")
    return metric


def transfer_matrix(table: pl.DataFrame, metric: str = "accuracy") -> pl.DataFrame:
    """Pivot a transfer table: one row per encoder, one column per target dataset."""
    check_metric(metric)
    return table.pivot(
        on="dataset", index=["encoder", "pretrain_dataset", "label_fraction"], values=metric
    )
