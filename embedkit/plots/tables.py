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
    image = _heatmap_cells(ax, grid, ids, oods, metric)
    ax.set_title(f"{metric.upper()}: {encoder}, {scorer}", fontsize=10)
    fig.colorbar(image, ax=ax, shrink=0.8)
    return fig


def _heatmap_cells(ax, grid: np.ndarray, ids: list, oods: list, metric: str, labels=True):
    """Cells on a diverging map centred at chance (0.5 for AUROC): pairs worse than chance
    stand out in red; FPR@95 runs the other way (low is good), so its map is reversed."""
    cmap = "RdBu_r" if metric == "fpr95" else "RdBu"
    image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap=cmap, aspect="auto")
    for (i, j), value in np.ndenumerate(grid):
        if np.isfinite(value):
            colour = "white" if abs(value - 0.5) > 0.3 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(len(oods)), oods if labels else [], rotation=45, ha="right")
    ax.set_yticks(range(len(ids)), ids)
    return image


def ood_heatmap_grid(table: pl.DataFrame, metric: str = "auroc") -> Figure:
    """ID × OOD heatmaps faceted by encoder (rows) and scorer (columns), one shared colour
    bar: every pair of every encoder and scorer in one figure."""
    encoders = table["encoder"].unique(maintain_order=True).to_list()
    scorers = table["scorer"].unique(maintain_order=True).to_list()
    ids = sorted(table["id_dataset"].unique())
    oods = sorted(table["ood_dataset"].unique())
    cell_w, cell_h = 0.45 * len(oods) + 1.2, 0.32 * len(ids) + 0.9
    fig = Figure(
        figsize=(1.5 + cell_w * len(scorers), 0.8 + cell_h * len(encoders)), layout="constrained"
    )
    axes = np.atleast_2d(fig.subplots(len(encoders), len(scorers), squeeze=False))
    image = None
    for r, encoder in enumerate(encoders):
        for c, scorer in enumerate(scorers):
            ax = axes[r, c]
            grid = np.full((len(ids), len(oods)), np.nan)
            part = table.filter((pl.col("encoder") == encoder) & (pl.col("scorer") == scorer))
            for row in part.iter_rows(named=True):
                grid[ids.index(row["id_dataset"]), oods.index(row["ood_dataset"])] = row[metric]
            image = _heatmap_cells(ax, grid, ids, oods, metric, labels=r == len(encoders) - 1)
            if c:
                ax.set_yticks(range(len(ids)), [])
            ax.set_title(f"{encoder}\n{scorer}" if len(encoders) > 1 else scorer, fontsize=9)
    fig.supxlabel("OOD dataset", fontsize=9)
    fig.supylabel("ID dataset", fontsize=9)
    fig.colorbar(image, ax=axes, shrink=0.8, label=metric.upper())
    return fig


def probe_curves(summary: pl.DataFrame, dataset: str, metric: str = "accuracy") -> Figure:
    """Probe ``metric`` against label fraction (log scale), one line per encoder, 95 % CIs."""
    rows = select_rows(summary, dataset=dataset).sort("label_fraction")
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.subplots()
    low, high = 1.0, 0.0
    for encoder in rows["encoder"].unique(maintain_order=True):
        part = rows.filter(pl.col("encoder") == encoder)
        mean = part[metric].to_numpy()
        ci = np.nan_to_num(part[f"{metric}_ci95"].to_numpy())
        # a t-interval can reach past 0 or 1; the metric cannot: draw it clipped
        below, above = np.minimum(ci, mean), np.minimum(ci, 1.0 - mean)
        ax.errorbar(
            part["label_fraction"].to_numpy() * 100,
            mean,
            yerr=np.vstack([below, above]),
            marker="o",
            capsize=3,
            label=encoder,
        )
        low, high = min(low, float((mean - below).min())), max(high, float((mean + above).max()))
    ax.set_xscale("log")
    fractions = sorted(rows["label_fraction"].unique())
    ax.set_xticks([f * 100 for f in fractions], [f"{f:.0%}" for f in fractions])
    ax.minorticks_off()
    margin = max(0.02, 0.08 * (high - low))  # fitted to the data, inside [0, 1]
    ax.set_ylim(max(0.0, low - margin), min(1.0, high + margin))
    ax.set_xlabel("labels used")
    ax.set_ylabel(f"test {metric.replace('_', ' ')}")
    ax.set_title(dataset)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def ood_bars(table: pl.DataFrame, metric: str = "auroc") -> Figure:
    """Mean ``metric`` over the table's ID × OOD pairs per scorer, one bar per encoder, with
    the 95 % t-interval over pairs and every pair drawn as a point."""
    from ..eval.results import mean_ci

    scorers = table["scorer"].unique(maintain_order=True).to_list()
    encoders = table["encoder"].unique(maintain_order=True).to_list()
    width = 0.8 / len(encoders)
    fig = Figure(figsize=(1.5 + 0.9 * len(scorers), 3.5), layout="constrained")
    ax = fig.subplots()
    jitter = np.random.default_rng(0)
    for k, encoder in enumerate(encoders):
        centres = np.arange(len(scorers)) + (k - (len(encoders) - 1) / 2) * width
        stats = []
        for centre, scorer in zip(centres, scorers, strict=True):
            values = table.filter((pl.col("encoder") == encoder) & (pl.col("scorer") == scorer))[
                metric
            ].to_numpy()
            stats.append(mean_ci(values))
            spread = jitter.uniform(-0.25, 0.25, len(values)) * width
            ax.scatter(centre + spread, values, s=6, color="black", alpha=0.5, zorder=3)
        means, cis = np.array(stats).T
        cis = np.nan_to_num(cis)  # one pair: no interval
        # a t-interval over few pairs can reach past 0 or 1; AUROC cannot: draw it clipped
        below, above = np.minimum(cis, means), np.minimum(cis, 1.0 - means)
        ax.bar(
            centres,
            means,
            width,
            yerr=np.vstack([below, above]),
            capsize=2,
            label=encoder,
            alpha=0.8,
        )
    n_pairs = table.group_by("encoder", "scorer").len()["len"].max()
    ax.set_xticks(range(len(scorers)), scorers, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.axhline(0.5, color="grey", lw=0.8, ls="--")
    ax.set_ylabel(f"{metric.upper()}: mean of {n_pairs} pairs")
    ax.legend(fontsize=8)
    return fig
