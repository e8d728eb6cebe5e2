"""Figures of per-sample OOD scores: histograms of ID against OOD, and ROC curves."""

from __future__ import annotations

import numpy as np
import polars as pl
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..primitives.metrics import ood_metrics


def _check(scores: pl.DataFrame) -> tuple[np.ndarray, list[str]]:
    needed = {"dataset", "score", "is_ood"}
    if not needed <= set(scores.columns):
        raise ConfigError(
            f"a score table needs columns {sorted(needed)}: make it with "
            f"embedkit.eval.sample_scores or read a --save-scores file"
        )
    if "scorer" in scores.columns and scores["scorer"].n_unique() > 1:
        raise ConfigError("the score table holds several scorers: filter it to one")
    id_scores = scores.filter(~pl.col("is_ood"))["score"].to_numpy()
    oods = scores.filter(pl.col("is_ood"))["dataset"].unique(maintain_order=True).to_list()
    if len(id_scores) == 0 or not oods:
        raise ConfigError("a score table needs ID rows and at least one OOD dataset")
    return id_scores, oods


def _title(scores: pl.DataFrame) -> str:
    parts = [scores[c][0] for c in ("encoder", "scorer") if c in scores.columns]
    return ", ".join(str(p) for p in parts)


def score_histograms(scores: pl.DataFrame, bins: int = 50) -> Figure:
    """Density histograms of the score: the ID test split and each OOD dataset, overlaid."""
    id_scores, oods = _check(scores)
    edges = np.histogram_bin_edges(scores["score"].to_numpy(), bins=bins)
    fig = Figure(figsize=(5.5, 3.5), layout="constrained")
    ax = fig.subplots()
    id_name = scores.filter(~pl.col("is_ood"))["dataset"][0]
    # the ID split filled and faint, each OOD dataset an outline: overlaps stay readable
    ax.hist(id_scores, bins=edges, density=True, alpha=0.35, color="C0", label=f"{id_name} (ID)")
    for k, dataset in enumerate(oods, start=1):
        values = scores.filter(pl.col("dataset") == dataset)["score"].to_numpy()
        ax.hist(
            values, bins=edges, density=True, histtype="step", lw=1.5, color=f"C{k}", label=dataset
        )
    ax.set_xlabel("score (higher = more in-distribution)")
    ax.set_ylabel("density")
    ax.set_title(_title(scores), fontsize=10)
    ax.legend(fontsize=8)
    return fig


def roc_curves(scores: pl.DataFrame) -> Figure:
    """ROC curve of ID test against each OOD dataset (OOD positive, as OpenOOD), AUROC in
    the legend."""
    from sklearn.metrics import roc_curve

    id_scores, oods = _check(scores)
    fig = Figure(figsize=(4.5, 4.2), layout="constrained")
    ax = fig.subplots()
    for dataset in oods:
        ood_scores = scores.filter(pl.col("dataset") == dataset)["score"].to_numpy()
        truth = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
        fpr, tpr, _ = roc_curve(truth, -np.r_[id_scores, ood_scores])
        metrics = ood_metrics(id_scores, ood_scores)
        (line,) = ax.plot(fpr, tpr, label=f"{dataset} (AUROC {metrics['auroc']:.3f})")
        # the operating point FPR@95 reads off: 95 % of the OOD samples detected
        ax.scatter([metrics["fpr95"]], [0.95], color=line.get_color(), marker="o", s=25, zorder=3)
    ax.axhline(0.95, color="grey", lw=0.6, ls=":", label="TPR 95 % (FPR@95)")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls="--")
    ax.set_xlabel("false positive rate (ID flagged OOD)")
    ax.set_ylabel("true positive rate (OOD flagged)")
    ax.set_title(_title(scores), fontsize=10)
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="lower right")
    return fig
