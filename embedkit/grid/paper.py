"""A grid's results beside the paper's claims, as a page for the repository.

``results_page`` turns what ``collect`` computed into one markdown page: the scale of the
run (stated from the cells, never typed), SSL against random weights per dataset (the first
question on a small budget), OOD detection per pair of datasets (external test-only sets
included), the claims of Bundele et al. 2024 (arXiv:2412.19124) point by
point with this grid's answer and whether it agrees, then every finding. A claim the grid
cannot test (a method it does not train, a kind of training set it lacks) says so.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl

from .findings import COMPARED_PER, Finding, best_per_dataset, in_domain, markdown_table

PAPER = (
    "Bundele et al. 2024, *Evaluating Self-Supervised Learning in Medical Imaging* "
    "(arXiv:2412.19124)"
)


def finding_ssl_vs_random(summary: pl.DataFrame) -> Finding:
    """Per dataset and label fraction: the best SSL encoder pretrained on the dataset (alone
    or in a multi-domain set), against the same backbone's random weights (the baseline)."""
    finding = Finding("ssl_vs_random", "SSL against random weights", pl.DataFrame())
    ssl = summary.filter(pl.col("in_domain") & (pl.col("kind") == "ssl"))
    random = summary.filter((pl.col("kind") == "baseline") & (pl.col("init") == "random"))
    if not ssl.height or not random.height:
        missing = "SSL" if not ssl.height else "random-weight baseline"
        finding.sentences.append(f"Not compared: no {missing} cell is done.")
        return finding
    keys = COMPARED_PER
    table = (
        best_per_dataset(ssl, "auc")
        .select(
            *keys,
            pl.col("encoder").alias("best_ssl"),
            pl.col("auc").alias("ssl_auc"),
            pl.col("accuracy").alias("ssl_accuracy"),
        )
        .join(
            random.select(
                *keys,
                pl.col("auc").alias("random_auc"),
                pl.col("accuracy").alias("random_accuracy"),
            ),
            on=keys,
        )
        .with_columns(auc_gain=pl.col("ssl_auc") - pl.col("random_auc"))
        .sort(keys)
    )
    finding.table = table
    for (fraction,), group in table.group_by(["label_fraction"], maintain_order=True):
        wins = int((group["auc_gain"] > 0).sum())
        finding.sentences.append(
            f"{fraction * 100:g} % of the labels: the best SSL encoder's probe AUC beats random "
            f"weights' on {wins} of {group.height} datasets (mean gain "
            f"{group['auc_gain'].mean():+.3f})."
        )
    return finding


def finding_ood_pairs(ood: pl.DataFrame | None, probed: list[str]) -> Finding:
    """Per (ID, OOD) pair and scorer: the mean AUROC of the SSL encoders pretrained on the ID
    dataset alone, of the supervised ones and of random weights. OOD datasets never probed
    (``probed``) are external sets (test-only, never trained on)."""
    finding = Finding("ood_pairs", "OOD detection per pair of datasets", pl.DataFrame())
    if ood is None or not ood.height:
        finding.sentences.append("Not computed: no OOD table.")
        return finding
    own = ood.filter(~pl.col("multi_domain") & (pl.col("pretrain_dataset") == pl.col("id_dataset")))
    random = ood.filter((pl.col("kind") == "baseline") & (pl.col("init") == "random"))
    keys = ["id_dataset", "ood_dataset", "scorer"]
    parts = [
        own.filter(pl.col("kind") == kind).group_by(keys).agg(pl.col("auroc").mean().alias(kind))
        for kind in ("ssl", "supervised")
    ]
    parts.append(random.group_by(keys).agg(pl.col("auroc").mean().alias("random")))
    table = parts[0]
    for part in parts[1:]:
        table = table.join(part, on=keys, how="full", coalesce=True)
    if not table.height or "ssl" not in table.columns:
        finding.sentences.append("Not computed: no SSL encoder pretrained on an ID dataset.")
        return finding
    table = table.with_columns(external=~pl.col("ood_dataset").is_in(probed)).sort(
        "external", *keys
    )
    finding.table = table.select(*keys, "external", "ssl", "supervised", "random")
    for (scorer,), group in table.group_by(["scorer"], maintain_order=True):
        both = group.drop_nulls(["ssl", "random"])
        wins = int((both["ssl"] > both["random"]).sum())
        finding.sentences.append(
            f"{scorer}: SSL encoders (mean over methods, pretrained on the ID dataset) detect "
            f"OOD better than random weights on {wins} of {both.height} (ID, OOD) pairs "
            f"(mean AUROC {both['ssl'].mean():.3f} against {both['random'].mean():.3f})."
        )
    external = table.filter(pl.col("external")).drop_nulls(["ssl", "random"])
    for (name,), group in external.group_by(["ood_dataset"], maintain_order=True):
        means = group.group_by("scorer", maintain_order=True).agg(
            pl.col("ssl").mean(), pl.col("random").mean()
        )
        scores = ", ".join(
            f"{r['scorer']} {r['ssl']:.3f} (random weights {r['random']:.3f})"
            for r in means.iter_rows(named=True)
        )
        finding.sentences.append(
            f"Against the external set {name} (test-only, never trained on), mean SSL AUROC "
            f"over the ID datasets: {scores}."
        )
    if table.drop_nulls(["ssl"]).filter(pl.col("ssl") < 0.5).height:
        finding.sentences.append(
            "An AUROC below 0.5 means the scorer ranks the OOD images as more "
            "in-distribution than the ID test images."
        )
    return finding


# a mean change smaller than this is reported as no clear effect, either way
CLEAR = 0.01


def _verdict(value: bool | None) -> str:
    return "not tested" if value is None else ("agrees" if value else "does not agree")


def _gain_verdict(gain: float) -> str:
    return f"no clear effect (within ±{CLEAR:g})" if abs(gain) < CLEAR else _verdict(gain > 0)


def paper_claims(findings: dict[str, Finding], summary: pl.DataFrame) -> pl.DataFrame:
    """One row per claim of the paper: what it found, what this grid found, the verdict."""
    rows = []
    top = summary["label_fraction"].max() if summary.height else 1.0

    ranking = findings["ranking"].table
    methods = sorted(in_domain(summary).filter(pl.col("kind") == "ssl")["method"].unique())
    here, verdict = "no SSL cell done", None
    if ranking.height:
        full = ranking.filter(pl.col("label_fraction") == top)
        best = full.sort(["best_on", "within_interval_of_best_on"], descending=True).row(
            0, named=True
        )
        here = f"{best['method']} best on {best['best_on']} of {best['datasets']} datasets"
        if "mocov3" in methods:
            verdict = best["method"] == "mocov3"
        else:
            here += f" (MoCo v3 not in this grid; methods: {', '.join(methods)})"
    rows.append(
        {
            "claim": "MoCo v3 is the SSL method best on the most datasets",
            "paper": "best on 5 of 11 datasets",
            "here": here,
            "verdict": _verdict(verdict),
        }
    )

    versus = findings["ssl_vs_supervised"].table
    here, verdict = "no SSL and supervised cells from random init to compare", None
    if versus.height:
        full = versus.filter(pl.col("label_fraction") == top)
        wins = int(full["ssl_wins"].sum())
        here = f"SSL beats supervised on {wins} of {full.height} datasets"
        verdict = wins * 2 > full.height
    rows.append(
        {
            "claim": "SSL from random init beats supervised training from random init",
            "paper": "on 7 of 11 datasets",
            "here": here,
            "verdict": _verdict(verdict),
        }
    )

    multi = findings["multi_domain"].table
    for flag, claim, column, what in (
        (
            False,
            "Multi-domain training within one modality helps in-domain accuracy",
            "accuracy_gain",
            "accuracy",
        ),
        (
            True,
            "Multi-domain training across modalities helps OOD detection",
            "auroc_gain",
            "OOD AUROC",
        ),
    ):
        kind = "multi-modality" if flag else "single-modality multi-domain"
        here, verdict = f"not tested: no {kind} training set in this grid", None
        part = multi.filter(pl.col("multi_modality") == flag) if multi.height else multi
        gains = part[column].drop_nulls() if part.height else pl.Series([], dtype=pl.Float64)
        if len(gains):
            here = (
                f"mean {what} change {gains.mean():+.3f} over {len(gains)} (training set, "
                f"dataset) pairs ({', '.join(sorted(part['pretrain_dataset'].unique()))})"
            )
        rows.append(
            {
                "claim": claim,
                "paper": "yes (the paper's multi-domain experiments)",
                "here": here,
                "verdict": _gain_verdict(gains.mean()) if len(gains) else _verdict(None),
            }
        )
    return pl.DataFrame(rows)


def _hours(records: list[dict]) -> float:
    seconds = 0.0
    for record in records:
        if record.get("started") and record.get("finished"):
            start = dt.datetime.fromisoformat(record["started"])
            seconds += (dt.datetime.fromisoformat(record["finished"]) - start).total_seconds()
    return seconds / 3600


def results_page(
    path: str | Path,
    grid: str,
    summary: pl.DataFrame,
    ood: pl.DataFrame | None,
    findings: list[Finding],
    records: list[dict],
    missing: list[tuple[str, str, str]],
    findings_markdown: str,
    host: str,
    settings: str = "",
) -> Path:
    """Write the page (see the module docstring); ``records`` are the done cells'."""
    path = Path(path)
    by_name = {f.name: f for f in findings}
    versus_random = finding_ssl_vs_random(summary)
    claims = paper_claims(by_name, summary)
    datasets = sorted(summary["dataset"].unique()) if summary.height else []
    methods = sorted(summary.filter(pl.col("kind") != "baseline")["method"].unique())
    sizes = sorted(summary["size"].unique()) if summary.height else []
    backbones = sorted(summary["backbone"].unique()) if summary.height else []
    lines = [
        f"# Results of the `{grid}` grid on real MedMNIST",
        "",
        f"Generated by `embedkit grid collect --page` from {len(records)} done cells "
        f"({len(missing)} not done); not edited by hand. Run on {host}.",
        "",
        "**Scale.** "
        + ", ".join(
            [
                f"{len(datasets)} datasets ({', '.join(datasets)})",
                f"{'/'.join(str(s) for s in sizes)} px",
                f"backbone {', '.join(backbones)}",
                f"methods {', '.join(methods)}",
                *([settings] if settings else []),
                f"{_hours(records) * 60:.0f} minutes of cell time in the cells' latest "
                "attempts (pretraining that an earlier attempt finished is not counted)",
            ]
        )
        + ". The paper trained for hundreds of GPU epochs on 11 datasets at 64 px; these are "
        "CPU minutes per encoder, so agreement or disagreement is a hint, not a replication.",
        "",
        "## SSL against random weights",
        "",
        *[f"- {s}" for s in versus_random.sentences],
    ]
    if versus_random.table.height:
        lines += ["", markdown_table(versus_random.table)]
    pairs = finding_ood_pairs(ood, datasets)
    lines += ["", f"## {pairs.title}", "", *[f"- {s}" for s in pairs.sentences]]
    if pairs.table.height:
        lines += ["", markdown_table(pairs.table)]
    lines += [
        "",
        "## The paper's claims, point by point",
        "",
        f"The paper: {PAPER}.",
        "",
        markdown_table(claims),
        "",
        findings_markdown.replace("\n## ", "\n### ").replace("# Findings", "## Findings", 1),
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path
