"""Figures of evaluation tables: the ID x OOD heatmap, probe curves, scorer bars.

Each function takes a result table as the evaluations return it (or as read back from its
parquet file) and returns a ``matplotlib.figure.Figure``.
"""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..errors import ConfigError


def select_rows(table: pl.DataFrame, **equal) -> pl.DataFrame:
    for column, value in equal.items():
        table = table.filter(pl.col(column) == value)
    if table.is_empty():
        raise ConfigError(f"no rows with {equal} in the table")
    return table


def ood_heatmap(table: pl.DataFrame, encoder: str, scorer: str, metric: str = "auroc") -> Figure:
    """ID (rows) × OOD (columns) heatmap of one encoder and scorer, values written in cells."""
    rows = select_rows(table, encoder=encoder, scorer=scorer)
    ids = sorted(rows["id_dataset"].unique())
    oods = sorted(rows["ood_dataset"].unique())
    grid = np.full((len(ids), len(oods)), np.nan)
    for row in rows.iter_rows(named=True):
        grid[ids.index(row["id_dataset"]), oods.index(row["ood_dataset"])] = row[metric]
    size = (max(4.5, 2.0 + 0.8 * len(oods)), max(2.8, 1.5 + 0.45 * len(ids)))
    fig = Figure(figsize=size, layout="constrained")
    ax = fig.subplots()
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap="viridis", aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            ax.text(
                j,
                i,
                f"{value:.2f}",
                ha="center",
                va="center",
                fontsize=8,
                color="black" if value > 0.6 else "white",
            )
    ax.set_xticks(range(len(oods)), oods, rotation=45, ha="right")
    ax.set_yticks(range(len(ids)), ids)
    ax.set_xlabel("OOD dataset")
    ax.set_ylabel("ID dataset")
    ax.set_title(f"{metric.upper()}: {encoder}, {scorer}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def probe_curves(summary: pl.DataFrame, dataset: str, metric: str = "accuracy") -> Figure:
    """Probe ``metric`` against label fraction (log scale), one line per encoder, 95 % CIs."""
    rows = select_rows(summary, dataset=dataset).sort("label_fraction")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    for encoder in rows["encoder"].unique(maintain_order=True):
        part = rows.filter(pl.col("encoder") == encoder)
        ax.errorbar(
            part["label_fraction"].to_numpy() * 100,
            part[metric].to_numpy(),
            yerr=part[f"{metric}_ci95"].to_numpy(),
            marker="o",
            capsize=3,
            label=encoder,
        )
    ax.set_xscale("log")
    fractions = sorted(rows["label_fraction"].unique())
    ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    ax.set_ylim(0.0, 1.0)
    ax.set_xlabel("labels used")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def ood_bars(table: pl.DataFrame, metric: str = "auroc") -> Figure:
    """Mean ``metric`` over all ID × OOD pairs per scorer, one bar per encoder."""
    means = table.group_by("scorer", "encoder", maintain_order=True).agg(pl.col(metric).mean())
    scorers = means["scorer"].unique(maintain_order=True).to_list()
    encoders = means["encoder"].unique(maintain_order=True).to_list()
    width = 0.8 / len(encoders)
    fig = Figure(figsize=(1.5 + 0.9 * len(scorers), 3.5), layout="constrained")
    ax = fig.subplots()
    for k, encoder in enumerate(encoders):
        part = means.filter(pl.col("encoder") == encoder)
        values = [part.filter(pl.col("scorer") == s)[metric].mean() for s in scorers]
        ax.bar(
            np.arange(len(scorers)) + (k - (len(encoders) - 1) / 2) * width,
            values,
            width,
            label=encoder,
        )
    ax.set_xticks(range(len(scorers)), scorers, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(f"mean {metric.upper()} over pairs")
    ax.legend(fontsize=8)
    return fig
