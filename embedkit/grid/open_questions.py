"""Findings on the paper's open questions, computed when a grid varies what they ask about.

Bundele et al. 2024 (arXiv:2412.19124) end by asking how their findings change with the
amount of unlabelled data, with resolution and across imaging modalities. Each function
takes the collected probe summary (``collect``: one row per cell, probed dataset and label
fraction, every axis a column) and says so in a sentence when the grid cannot answer:

1. ``data_fraction``: SSL's probe AUC against random weights and against supervised
   pretraining on the same images, per share of the unlabelled training images
   (``[pretrain] data_fraction = [0.1, 0.5, 1.0]``).
2. ``resolution``: the same comparison per image size (``sizes = [28, 64]``).
3. ``transfer_modality``: encoders probed on datasets they were not pretrained on, split
   into same-modality and cross-modality pairs, against random weights on the same datasets.

Where a grid varies the data fraction, the other findings read its full-data cells only
(``full_data``), so that they compare what the paper compares.
"""

from __future__ import annotations

import polars as pl

from .findings import Finding, in_domain

FRACTION = "pretrain_data_fraction"  # the column ``collect`` gives a varied data_fraction


def _pct(value: float) -> str:
    return f"{value * 100:g} %"


def full_data(table: pl.DataFrame | None) -> pl.DataFrame | None:
    """The rows of cells pretrained on all their training images (and the baselines):
    ``table`` itself unless the grid varies the data fraction."""
    if table is None or FRACTION not in table.columns:
        return table
    share = pl.col(FRACTION).cast(pl.Float64, strict=False)  # baselines: "" (no share)
    top = table.filter(pl.col("kind") != "baseline").select(share.max()).item()
    return table.filter((pl.col("kind") == "baseline") | (share == top))


def _from_random(rows: pl.DataFrame) -> pl.DataFrame:
    """The rows of encoders trained from random weights, where the grid has any."""
    random = rows.filter(pl.col("init") == "random")
    return random if random.height else rows


def _advantage(summary: pl.DataFrame, axis: str, baseline_varies: bool) -> pl.DataFrame:
    """Per value of ``axis``, backbone and label fraction (and size, unless the axis is the
    size): the mean over datasets of the best SSL encoder's in-domain probe AUC, of the
    supervised encoder's on the same datasets and of random weights, and the gains."""
    cells = _from_random(in_domain(summary))
    per = ["dataset", "backbone", "size", "label_fraction"]
    keys = per if axis in per else [*per, axis]
    ssl = (
        cells.filter(pl.col("kind") == "ssl")
        .sort("auc", descending=True)
        .group_by(keys, maintain_order=True)
        .first()
        .select(*keys, pl.col("auc").alias("ssl_auc"))
    )
    supervised = (
        cells.filter(pl.col("kind") == "supervised")
        .group_by(keys)
        .agg(pl.col("auc").max().alias("supervised_auc"))
    )
    random = (
        summary.filter((pl.col("kind") == "baseline") & (pl.col("init") == "random"))
        .group_by(keys if baseline_varies else per)
        .agg(pl.col("auc").mean().alias("random_auc"))
    )
    rows = ssl.join(random, on=keys if baseline_varies else per, how="inner").join(
        supervised, on=keys, how="left"
    )
    groups = [c for c in (axis, "backbone", "size", "label_fraction") if c in keys]
    groups = list(dict.fromkeys(groups))
    return (
        rows.group_by(groups)
        .agg(
            pl.col("dataset").n_unique().alias("datasets"),
            pl.col("ssl_auc").mean(),
            pl.col("supervised_auc").mean(),
            pl.col("random_auc").mean(),
        )
        .with_columns(
            gain_over_random=pl.col("ssl_auc") - pl.col("random_auc"),
            gain_over_supervised=pl.col("ssl_auc") - pl.col("supervised_auc"),
        )
        .sort(groups)
    )


def _series(values) -> str:
    return " / ".join("n/a" if v is None else f"{v:+.3f}" for v in values)


def _plain(values) -> str:
    return " / ".join("n/a" if v is None else f"{v:.3f}" for v in values)


def finding_data_fraction(summary: pl.DataFrame) -> Finding:
    """SSL's advantage over random weights and supervised pretraining per share of the
    unlabelled training images."""
    finding = Finding(
        "data_fraction", "Amount of unlabelled data: SSL's advantage per share", pl.DataFrame()
    )
    if FRACTION not in summary.columns:
        finding.sentences.append(
            "Not varied: the grid pretrains on all training images (set [pretrain] "
            "data_fraction = [0.1, 0.5, 1.0] to ask)."
        )
        return finding
    shares = summary.with_columns(pl.col(FRACTION).cast(pl.Float64, strict=False))
    table = _advantage(shares, FRACTION, False)
    table = table.rename({FRACTION: "data_fraction"})
    finding.table = table
    if not table.height:
        finding.sentences.append("Not compared: no SSL cell beside a random-weight baseline.")
        return finding
    for (backbone, size, labels), group in table.group_by(
        ["backbone", "size", "label_fraction"], maintain_order=True
    ):
        group = group.sort("data_fraction")
        shares = " / ".join(_pct(v) for v in group["data_fraction"])
        finding.sentences.append(
            f"{backbone}, {size} px, {_pct(labels)} of the labels, pretrained on {shares} of the "
            f"training images: the best SSL encoder's probe AUC is "
            f"{_plain(group['ssl_auc'])} (mean over {group['datasets'].max()} datasets), "
            f"{_series(group['gain_over_random'])} over random weights and "
            f"{_series(group['gain_over_supervised'])} over supervised pretraining on the same "
            f"images."
        )
    return finding


def finding_resolution(summary: pl.DataFrame) -> Finding:
    """SSL's advantage over random weights and supervised pretraining per image size."""
    finding = Finding("resolution", "Resolution: SSL's advantage per image size", pl.DataFrame())
    sizes = summary["size"].unique().sort().to_list() if summary.height else []
    if len(sizes) < 2:
        finding.sentences.append(
            f"Not varied: the grid has one image size ({sizes[0] if sizes else '-'} px; set "
            f"[pretrain] sizes = [28, 64] to ask)."
        )
        return finding
    table = _advantage(summary, "size", True)
    finding.table = table
    if not table.height:
        finding.sentences.append("Not compared: no SSL cell beside a random-weight baseline.")
        return finding
    for (backbone, labels), group in table.group_by(
        ["backbone", "label_fraction"], maintain_order=True
    ):
        group = group.sort("size")
        finding.sentences.append(
            f"{backbone}, {_pct(labels)} of the labels, at "
            f"{' / '.join(str(s) for s in group['size'])} px: the best SSL encoder's probe AUC "
            f"is {_plain(group['ssl_auc'])}, {_series(group['gain_over_random'])} over random "
            f"weights and {_series(group['gain_over_supervised'])} over supervised pretraining."
        )
    return finding


def finding_transfer_modality(summary: pl.DataFrame) -> Finding:
    """Transfer to datasets outside the pretraining set, same-modality pairs apart from
    cross-modality ones, each against random weights on the same datasets."""
    finding = Finding("transfer_modality", "Transfer within and across modalities", pl.DataFrame())
    needed = {"probed_modality", "pretrain_modalities"}
    pretrained = summary.filter(pl.col("kind").is_in(["ssl", "supervised"]) & ~pl.col("in_domain"))
    if not needed <= set(summary.columns) or not pretrained.height:
        finding.sentences.append("Not compared: no encoder was probed outside its training set.")
        return finding
    per = ["dataset", "backbone", "size", "label_fraction"]
    random = (
        summary.filter((pl.col("kind") == "baseline") & (pl.col("init") == "random"))
        .group_by(per)
        .agg(pl.col("auc").mean().alias("random_auc"))
    )
    pairs = pretrained.with_columns(
        pairs=pl.when(
            pl.col("pretrain_modalities").str.split("+").list.contains(pl.col("probed_modality"))
        )
        .then(pl.lit("same modality"))
        .otherwise(pl.lit("cross modality"))
    ).join(random, on=per, how="left")
    groups = ["kind", "pairs", "backbone", "size", "label_fraction"]
    table = (
        pairs.group_by(groups)
        .agg(
            pl.len().alias("pairs_probed"),
            pl.col("auc").mean().alias("transfer_auc"),
            pl.col("random_auc").mean(),
        )
        .with_columns(gain_over_random=pl.col("transfer_auc") - pl.col("random_auc"))
        .sort(groups)
    )
    finding.table = table
    ssl = table.filter(pl.col("kind") == "ssl")
    for (backbone, size, labels), group in ssl.group_by(
        ["backbone", "size", "label_fraction"], maintain_order=True
    ):
        parts = []
        for kind in ("same modality", "cross modality"):
            row = group.filter(pl.col("pairs") == kind)
            if not row.height:
                parts.append(f"no {kind} pair")
                continue
            r = row.row(0, named=True)
            gain = "n/a" if r["gain_over_random"] is None else f"{r['gain_over_random']:+.3f}"
            parts.append(
                f"{kind} ({r['pairs_probed']} encoder-dataset pairs): AUC "
                f"{r['transfer_auc']:.3f}, {gain} over random weights"
            )
        finding.sentences.append(
            f"SSL transfer, {backbone}, {size} px, {_pct(labels)} of the labels: "
            f"{'; '.join(parts)}."
        )
    return finding


def open_question_findings(summary: pl.DataFrame) -> list[Finding]:
    """The three findings, in the order of the paper's questions."""
    return [
        finding_data_fraction(summary),
        finding_resolution(full_data(summary)),
        finding_transfer_modality(full_data(summary)),
    ]
