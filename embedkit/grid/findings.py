"""The study's findings: each question answered by a table and sentences computed from it.

The questions follow Bundele et al. 2024, "Evaluating Self-Supervised Learning in Medical
Imaging" (arXiv:2412.19124); each function takes the collected probe summary (one row per
cell, dataset and label fraction, with every axis as a column) and the OOD table:

1. ``in_domain``: probe accuracy and AUC per dataset and method at each label fraction.
2. ``ranking``: on how many datasets each SSL method is best (and within the interval).
3. ``initialisation``: random vs ImageNet (supervised, self-supervised) per method.
4. ``backbone``: in-domain accuracy, OOD AUROC and transfer accuracy per backbone.
5. ``multi_domain``: multi-domain vs single-domain pretraining, on accuracy and OOD.
6. ``ssl_vs_supervised``: on how many datasets SSL beats supervised training from random.

A question the grid cannot answer (one backbone, no supervised cell) says so in a sentence.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl


@dataclass
class Finding:
    """One of the study's questions, answered by a table and sentences."""

    name: str
    title: str
    table: pl.DataFrame
    sentences: list[str] = field(default_factory=list)


def markdown_table(table: pl.DataFrame) -> str:
    """``table`` as a markdown table, three decimals."""
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        float_precision=3,
        tbl_formatting="ASCII_MARKDOWN",
        fmt_str_lengths=200,
        tbl_width_chars=400,
    ):
        return str(table)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _pct(fraction: float) -> str:
    return f"{fraction * 100:g} %"


def in_domain(summary: pl.DataFrame) -> pl.DataFrame:
    """The rows of single-domain pretrained encoders probed on their own dataset."""
    return summary.filter(
        pl.col("in_domain") & ~pl.col("multi_domain") & (pl.col("kind") != "baseline")
    )


def finding_in_domain(summary: pl.DataFrame) -> Finding:
    table = (
        in_domain(summary)
        .select(
            "dataset",
            "method",
            "backbone",
            "init",
            "size",
            "label_fraction",
            "seeds",
            "accuracy",
            "accuracy_ci95",
            "auc",
            "auc_ci95",
        )
        .sort("dataset", "label_fraction", "method", "backbone", "init")
    )
    finding = Finding("in_domain", "In-domain probes per dataset and method", table)
    for (fraction,), group in table.group_by(["label_fraction"], maintain_order=True):
        best = group.sort("accuracy", descending=True).row(0, named=True)
        finding.sentences.append(
            f"At {_pct(fraction)} of the labels, the highest in-domain accuracy is "
            f"{best['accuracy']:.3f} ± {_interval(best['accuracy_ci95'])} ({best['method']}, "
            f"{best['backbone']}, {best['init']} init, on {best['dataset']}), over "
            f"{_count(group['dataset'].n_unique(), 'dataset')} and "
            f"{_count(group['method'].n_unique(), 'method')}."
        )
    if not table.height:
        finding.sentences.append("No single-domain pretraining cell is done yet.")
    return finding


def _interval(half: float | None) -> str:
    return "-" if half is None else f"{half:.3f}"


def finding_ranking(summary: pl.DataFrame) -> Finding:
    ssl = in_domain(summary).filter(pl.col("kind") == "ssl")
    rows = []
    groups = ["backbone", "init", "size", "label_fraction"]
    for key, group in ssl.group_by(groups, maintain_order=True):
        datasets = group["dataset"].unique().sort().to_list()
        best_count: dict[str, int] = {m: 0 for m in group["method"].unique().sort()}
        within_count = dict(best_count)
        for dataset in datasets:
            rows_d = group.filter(pl.col("dataset") == dataset).sort("accuracy", descending=True)
            best = rows_d.row(0, named=True)
            best_count[best["method"]] += 1
            floor = best["accuracy"] - (best["accuracy_ci95"] or 0.0)  # one seed: ties only
            for row in rows_d.iter_rows(named=True):
                if row["accuracy"] >= floor:
                    within_count[row["method"]] += 1
        for method in best_count:
            rows.append(
                {
                    **dict(zip(groups, key, strict=True)),
                    "method": method,
                    "datasets": len(datasets),
                    "best_on": best_count[method],
                    "within_interval_of_best_on": within_count[method],
                }
            )
    table = pl.DataFrame(rows) if rows else pl.DataFrame()
    finding = Finding("ranking", "On how many datasets each SSL method is best", table)
    if table.height:
        for key, group in table.group_by(groups, maintain_order=True):
            top = group.sort(["best_on", "within_interval_of_best_on"], descending=True).row(
                0, named=True
            )
            backbone, init, size, fraction = key
            finding.sentences.append(
                f"{backbone}, {init} init, {size} px, {_pct(fraction)} of the labels: "
                f"{top['method']} is best on {top['best_on']} of {top['datasets']} datasets "
                f"(within the interval of the best on {top['within_interval_of_best_on']})."
            )
    else:
        finding.sentences.append("No SSL pretraining cell is done yet.")
    return finding


def finding_initialisation(summary: pl.DataFrame) -> Finding:
    cells = in_domain(summary)
    keys = ["method", "backbone", "size", "label_fraction"]
    inits = cells["init"].unique().sort().to_list() if cells.height else []
    finding = Finding(
        "initialisation", "Random vs ImageNet initialisation, per method", pl.DataFrame()
    )
    if len(inits) < 2:
        finding.sentences.append(
            "Not compared: the grid's pretraining cells use one initialisation "
            f"({', '.join(inits) or 'none done'})."
        )
        return finding
    # the datasets every init has, per method/backbone/size/fraction
    table = (
        cells.group_by([*keys, "init"])
        .agg(pl.col("accuracy").mean(), pl.col("accuracy_ci95").mean(), pl.len().alias("datasets"))
        .sort(keys + ["init"])
    )
    finding.table = table
    wide = table.pivot(on="init", index=keys, values="accuracy")
    ci = table.group_by(keys).agg(pl.col("accuracy_ci95").mean().alias("ci"))
    wide = wide.join(ci, on=keys)
    reference = "random" if "random" in inits else inits[0]
    for other in inits:
        if other == reference:
            continue
        pairs = wide.drop_nulls([reference, other])
        if not pairs.height:
            continue
        diff = pairs[other] - pairs[reference]
        wins = int((diff > 0).sum())
        finding.sentences.append(
            f"{other} vs {reference} initialisation: higher in-domain accuracy for {wins} of "
            f"{pairs.height} method × backbone × fraction settings (mean difference "
            f"{diff.mean():+.3f})."
        )
    others = [i for i in inits if i != reference]
    for i, a in enumerate(others):
        for b in others[i + 1 :]:
            pairs = wide.drop_nulls([a, b])
            if not pairs.height:
                continue
            diff, ci = pairs[a] - pairs[b], pairs["ci"].mean()
            if ci is None:  # one seed each: no interval to weigh the difference against
                finding.sentences.append(
                    f"{a} vs {b}: mean difference {diff.mean():+.3f} (one seed: no interval)."
                )
                continue
            verdict = "a clear difference" if abs(diff.mean()) > ci else "no clear difference"
            finding.sentences.append(
                f"{a} vs {b}: mean difference {diff.mean():+.3f}, against a mean 95 % interval "
                f"of ±{ci:.3f}: {verdict}."
            )
    return finding


def _ood_in_domain(ood: pl.DataFrame | None) -> pl.DataFrame | None:
    if ood is None or not ood.height:
        return None
    return ood.filter(
        (pl.col("kind") != "baseline")
        & ~pl.col("multi_domain")
        & (pl.col("id_dataset") == pl.col("pretrain_dataset"))
    )


def finding_backbone(summary: pl.DataFrame, ood: pl.DataFrame | None) -> Finding:
    cells = summary.filter(pl.col("kind") != "baseline")
    finding = Finding(
        "backbone", "Backbones: in-domain accuracy, OOD AUROC, transfer", pl.DataFrame()
    )
    backbones = cells["backbone"].unique().sort().to_list() if cells.height else []
    if not backbones:
        finding.sentences.append("No pretraining cell is done yet.")
        return finding
    top = cells["label_fraction"].max()
    cells = cells.filter(pl.col("label_fraction") == top)
    rows = []
    ood_in = _ood_in_domain(ood)
    for backbone in backbones:
        mine = cells.filter(pl.col("backbone") == backbone)
        row = {
            "backbone": backbone,
            "in_domain_accuracy": in_domain(mine)["accuracy"].mean(),
            "ood_auroc": None,
            # probes on datasets outside the encoder's pretraining set
            "transfer_accuracy": mine.filter(~pl.col("in_domain"))["accuracy"].mean(),
            "cells": mine["cell"].n_unique(),
        }
        if ood_in is not None:
            row["ood_auroc"] = ood_in.filter(pl.col("backbone") == backbone)["auroc"].mean()
        rows.append(row)
    table = pl.DataFrame(
        rows,
        schema_overrides={
            c: pl.Float64 for c in ("in_domain_accuracy", "ood_auroc", "transfer_accuracy")
        },
    )
    finding.table = table
    if len(backbones) < 2:
        finding.sentences.append(f"Not compared: the grid has one backbone ({backbones[0]}).")
        return finding

    def fmt(values):
        return " vs ".join("n/a" if v is None else f"{v:.3f}" for v in values)

    finding.sentences.append(
        f"{' vs '.join(backbones)} at {_pct(top)} of the labels: in-domain accuracy "
        f"{fmt(table['in_domain_accuracy'])}, mean OOD AUROC {fmt(table['ood_auroc'])}, "
        f"mean transfer accuracy {fmt(table['transfer_accuracy'])}."
    )
    return finding


def finding_multi_domain(summary: pl.DataFrame, ood: pl.DataFrame | None) -> Finding:
    finding = Finding("multi_domain", "Multi-domain vs single-domain pretraining", pl.DataFrame())
    multi = summary.filter(pl.col("multi_domain") & pl.col("in_domain"))
    single = in_domain(summary)
    if not multi.height:
        finding.sentences.append("Not compared: no multi-domain pretraining cell is done yet.")
        return finding
    top = summary["label_fraction"].max()
    keys = ["method", "backbone", "init", "size"]
    rows = []
    for row in multi.filter(pl.col("label_fraction") == top).iter_rows(named=True):
        match = single.filter(
            (pl.col("label_fraction") == top)
            & (pl.col("dataset") == row["dataset"])
            & pl.all_horizontal([pl.col(k) == row[k] for k in keys])
        )
        if not match.height:
            continue
        record = {
            "pretrain_dataset": row["pretrain_dataset"],
            "multi_modality": row["multi_modality"],
            "dataset": row["dataset"],
            **{k: row[k] for k in keys},
            "accuracy_single": match["accuracy"][0],
            "accuracy_multi": row["accuracy"],
            "auroc_single": None,
            "auroc_multi": None,
        }
        if ood is not None and ood.height:
            training = set(row["pretrain_dataset"].split("+"))
            common = ood.filter(
                (pl.col("id_dataset") == row["dataset"])
                & ~pl.col("ood_dataset").is_in(list(training))
                & pl.all_horizontal([pl.col(k) == row[k] for k in keys])
            )
            mine = common.filter(pl.col("pretrain_dataset") == row["pretrain_dataset"])
            theirs = common.filter(pl.col("pretrain_dataset") == row["dataset"])
            if mine.height and theirs.height:
                record["auroc_multi"] = mine["auroc"].mean()
                record["auroc_single"] = theirs["auroc"].mean()
        rows.append(record)
    if not rows:
        finding.sentences.append(
            "Not compared: no single-domain cell matches a multi-domain cell's method, "
            "backbone and initialisation on one of its datasets."
        )
        return finding
    table = pl.DataFrame(
        rows, schema_overrides={c: pl.Float64 for c in ("auroc_single", "auroc_multi")}
    )
    table = table.with_columns(
        accuracy_gain=pl.col("accuracy_multi") - pl.col("accuracy_single"),
        auroc_gain=pl.col("auroc_multi") - pl.col("auroc_single"),
    )
    finding.table = table
    for flag, name in ((True, "multi-modality"), (False, "single-modality multi-domain")):
        part = table.filter(pl.col("multi_modality") == flag)
        if not part.height:
            finding.sentences.append(f"No {name} training set in the grid.")
            continue
        auroc = part["auroc_gain"].drop_nulls()
        auroc_text = f"{auroc.mean():+.3f}" if len(auroc) else "n/a (no OOD table)"
        finding.sentences.append(
            f"{name.capitalize()} training sets ({part['pretrain_dataset'].n_unique()}): mean "
            f"accuracy change {part['accuracy_gain'].mean():+.3f} on their own datasets, mean "
            f"OOD AUROC change {auroc_text} against single-domain training ({_pct(top)} labels)."
        )
    return finding


COMPARED_PER = ["dataset", "backbone", "size", "label_fraction"]


def best_per_dataset(rows: pl.DataFrame, metric: str) -> pl.DataFrame:
    """The row with the highest ``metric`` per dataset, backbone, size and label fraction."""
    return rows.sort(metric, descending=True).group_by(COMPARED_PER, maintain_order=True).first()


def finding_ssl_vs_supervised(summary: pl.DataFrame) -> Finding:
    finding = Finding("ssl_vs_supervised", "SSL vs supervised training from random", pl.DataFrame())
    cells = in_domain(summary).filter(pl.col("init") == "random")
    supervised = cells.filter(pl.col("kind") == "supervised")
    ssl = cells.filter(pl.col("kind") == "ssl")
    if not supervised.height or not ssl.height:
        missing = "supervised" if not supervised.height else "SSL"
        finding.sentences.append(f"Not compared: no {missing} cell from random init is done.")
        return finding
    keys = COMPARED_PER
    table = (
        best_per_dataset(ssl, "accuracy")
        .select(*keys, pl.col("method").alias("best_ssl"), pl.col("accuracy").alias("ssl_accuracy"))
        .join(supervised.select(*keys, pl.col("accuracy").alias("supervised_accuracy")), on=keys)
        .with_columns(ssl_wins=pl.col("ssl_accuracy") > pl.col("supervised_accuracy"))
        .sort(keys)
    )
    finding.table = table
    for (backbone, fraction), group in table.group_by(
        ["backbone", "label_fraction"], maintain_order=True
    ):
        finding.sentences.append(
            f"{backbone}, {_pct(fraction)} of the labels: SSL (the best method per dataset) "
            f"beats supervised-from-random on {int(group['ssl_wins'].sum())} of "
            f"{group.height} datasets."
        )
    return finding


def study_findings(summary: pl.DataFrame, ood: pl.DataFrame | None) -> list[Finding]:
    """The six findings, in the study's order."""
    return [
        finding_in_domain(summary),
        finding_ranking(summary),
        finding_initialisation(summary),
        finding_backbone(summary, ood),
        finding_multi_domain(summary, ood),
        finding_ssl_vs_supervised(summary),
    ]
