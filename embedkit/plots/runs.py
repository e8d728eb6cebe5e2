"""Figures of pretraining runs: the loss per step with its epoch mean, the learning rate, and
the online kNN accuracy when the run monitored it (``pretrain --knn-every``); several runs on
shared axes (``compare_runs``)."""

from __future__ import annotations

import polars as pl
from matplotlib.figure import Figure

from ..errors import ConfigError


def _check(metrics: pl.DataFrame) -> None:
    if not {"epoch", "step", "loss"} <= set(metrics.columns) or metrics.is_empty():
        raise ConfigError("a run's metrics need epoch, step and loss: is it a pretraining run?")


def _knn_rows(metrics: pl.DataFrame) -> pl.DataFrame:
    if "knn_accuracy" not in metrics.columns:
        return metrics.clear()
    return metrics.filter(pl.col("knn_accuracy").is_not_null())


def _epoch_means(metrics: pl.DataFrame) -> pl.DataFrame:
    """Each epoch's last step and mean loss (kNN rows have no loss)."""
    return (
        metrics.filter(pl.col("loss").is_not_null())
        .group_by("epoch", maintain_order=True)
        .agg(pl.col("step").max(), pl.col("loss").mean())
    )


def training_curves(metrics: pl.DataFrame, title: str = "") -> Figure:
    """Loss against optimiser step (thin: every step, thick: epoch means, drawn at each epoch's
    last step), the learning rate on a second axis and, beside it, kNN validation accuracy
    per epoch when ``metrics`` has ``knn_accuracy``.

    Args:
        metrics: the run's ``metrics.jsonl`` as a table (``embedkit.pretrain.read_metrics``).
        title: the figure's title, e.g. the run's method and dataset.
    """
    _check(metrics)
    knn = _knn_rows(metrics)
    metrics = metrics.filter(pl.col("loss").is_not_null())
    fig = Figure(figsize=(9 if knn.height else 5.5, 3.5), layout="constrained")
    axes = fig.subplots(1, 2 if knn.height else 1, squeeze=False)[0]
    ax = axes[0]
    steps = metrics["step"].to_numpy()
    ax.plot(steps, metrics["loss"].to_numpy(), lw=0.6, alpha=0.5, color="C0", label="step")
    epochs = _epoch_means(metrics)
    ax.plot(epochs["step"], epochs["loss"], marker="o", lw=2, color="C0", label="epoch mean")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    if "lr" in metrics.columns:
        twin = ax.twinx()
        twin.plot(steps, metrics["lr"].to_numpy(), color="grey", lw=0.8, ls="--")
        twin.set_ylabel("learning rate", color="grey")
    if knn.height:
        axes[1].plot(knn["epoch"] + 1, knn["knn_accuracy"], marker="o", color="C2")
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("kNN validation accuracy")
        axes[1].set_ylim(0, 1)
        axes[1].grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig


def compare_runs(runs: dict[str, pl.DataFrame], title: str = "") -> Figure:
    """Several runs on shared axes: the epoch-mean loss against the epoch and, when any run
    monitored it, the kNN validation accuracy per epoch (one colour per run).

    Losses of different methods are on different scales (InfoNCE against a redundancy
    reduction term): compare their shapes, and compare methods by the kNN accuracy.

    Args:
        runs: label -> the run's metrics (``embedkit.pretrain.read_metrics``).
        title: the figure's title.
    """
    if not runs:
        raise ConfigError("compare_runs needs at least one run")
    for metrics in runs.values():
        _check(metrics)
    with_knn = any(_knn_rows(m).height for m in runs.values())
    fig = Figure(figsize=(9 if with_knn else 5.5, 3.5), layout="constrained")
    axes = fig.subplots(1, 2 if with_knn else 1, squeeze=False)[0]
    for i, (label, metrics) in enumerate(runs.items()):
        epochs = _epoch_means(metrics)
        axes[0].plot(
            epochs["epoch"] + 1, epochs["loss"], marker="o", ms=3, color=f"C{i}", label=label
        )
        knn = _knn_rows(metrics)
        if with_knn and knn.height:
            axes[1].plot(
                knn["epoch"] + 1, knn["knn_accuracy"], marker="o", ms=3, color=f"C{i}", label=label
            )
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss (epoch mean)")
    axes[0].grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    if with_knn:
        axes[1].set_xlabel("epoch")
        axes[1].set_ylabel("kNN validation accuracy")
        axes[1].grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    return fig
