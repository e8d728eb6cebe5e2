"""A readable summary of result tables: Markdown or HTML, with figures as PNG files beside it.

Tables take the benchmark paper's shape (encoder × dataset, one table per label fraction);
each scorer gets an ID × OOD AUROC heatmap per encoder, and bar charts compare scorers.
The report reads result tables only (``embedkit probe/knn/ood/transfer --out``).
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .errors import ConfigError
from .eval.ood import summarise_ood_groups
from .eval.probe import summarise_probe
from .eval.transfer import check_metric
from .plots import (
    compare_runs,
    ood_bars,
    ood_heatmap_grid,
    probe_curves,
    roc_curves,
    score_histograms,
    training_curves,
)
from .utils import check_output_folder, stamp

FORMATS = ("markdown", "html")


@dataclass(frozen=True)
class ReportConfig:
    """What the report shows.

    Attributes:
        title: the report's heading.
        format: ``markdown`` (``report.md``) or ``html`` (``report.html``, one self-contained
            file: the figures are embedded, and written beside it as PNG too).
        transfer_metric: the metric of the transfer matrix (``embedkit transfer --metric``).
    """

    title: str = "embedkit report"
    format: str = "markdown"
    transfer_metric: str = "accuracy"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _pivot(table: pl.DataFrame, index: str, columns: str, values: str) -> pl.DataFrame:
    return table.pivot(on=columns, index=index, values=values, aggregate_function="mean")


class _Document:
    def __init__(self, folder: Path) -> None:
        self.folder, self.blocks = folder, []

    def heading(self, text: str, level: int = 2) -> None:
        self.blocks.append(("heading", level, text))

    def text(self, text: str) -> None:
        self.blocks.append(("text", text))

    def table(self, frame: pl.DataFrame) -> None:
        self.blocks.append(("table", frame))

    def figure(self, fig, name: str, caption: str) -> None:
        path = self.folder / f"{_slug(name)}.png"
        fig.savefig(path, dpi=110)
        self.blocks.append(("figure", path.name, caption))

    @staticmethod
    def _cell(value) -> str:
        if value is None:  # a value the row does not have (no kNN monitor, one seed)
            return "-"
        return f"{value:.3f}" if isinstance(value, float) else str(value)

    def markdown(self) -> str:
        out = []
        for block in self.blocks:
            if block[0] == "heading":
                out.append(f"{'#' * block[1]} {block[2]}\n")
            elif block[0] == "text":
                out.append(block[1] + "\n")
            elif block[0] == "table":
                frame = block[1]
                out.append("| " + " | ".join(frame.columns) + " |")
                out.append("|" + "---|" * len(frame.columns))
                out.extend("| " + " | ".join(map(self._cell, row)) + " |" for row in frame.rows())
                out.append("")
            else:
                out.append(f"![{block[2]}]({block[1]})\n")
        return "\n".join(out)

    def html(self, title: str) -> str:
        out = [
            f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            "</title><style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
            "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;"
            "padding:3px 8px;text-align:right}</style></head><body>"
        ]
        for block in self.blocks:
            if block[0] == "heading":
                out.append(f"<h{block[1]}>{html.escape(block[2])}</h{block[1]}>")
            elif block[0] == "text":
                out.append(f"<p>{html.escape(block[1])}</p>")
            elif block[0] == "table":
                frame = block[1]
                out.append(
                    "<table><tr>"
                    + "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
                    + "</tr>"
                )
                for row in frame.rows():
                    cells = "".join(f"<td>{html.escape(self._cell(v))}</td>" for v in row)
                    out.append(f"<tr>{cells}</tr>")
                out.append("</table>")
            else:  # embedded: the page is one file that can be mailed (PNGs stay beside it)
                data = base64.b64encode((self.folder / block[1]).read_bytes()).decode("ascii")
                out.append(
                    f"<figure><img src='data:image/png;base64,{data}' alt='{block[1]}'>"
                    f"<figcaption>{html.escape(block[2])}</figcaption></figure>"
                )
        return "\n".join(out) + "</body></html>\n"


def _runs_section(doc: _Document, runs: list[Path]) -> None:
    from .runs import read_metrics, summarise_runs

    doc.heading("Pretraining runs")
    summary = summarise_runs(runs)
    empty = [c for c in summary.columns if summary[c].null_count() == summary.height]
    doc.table(summary.drop(empty))
    metrics = [read_metrics(run) for run in runs]
    same_names = summary["run"].is_duplicated().any()  # then label runs by their paths
    labels = [str(run) if same_names else run.name for run in runs]
    if len(runs) > 1:
        doc.figure(
            compare_runs(dict(zip(labels, metrics, strict=True))),
            "runs-compared",
            "Epoch-mean loss and kNN validation accuracy of every run (losses of different "
            "methods are on different scales: compare shapes, and methods by kNN accuracy)",
        )
    rows = summary.iter_rows(named=True)
    for i, (label, run_metrics, row) in enumerate(zip(labels, metrics, rows, strict=True)):
        title = f"{label}: {row['method']}/{row['backbone']} on {row['dataset']}"
        doc.figure(
            training_curves(run_metrics, title),
            f"run-{i + 1}-{row['run']}",
            f"Loss (every step and epoch means), learning rate and kNN accuracy of {label}",
        )


def _probe_section(doc: _Document, table: pl.DataFrame) -> None:
    summary = summarise_probe(table)
    doc.heading("Linear probes")
    doc.text(
        "Test accuracy, mean over seeds ± 95 % t-interval, per label fraction (± - where one "
        "seed leaves no interval: a fraction of 100 % uses every label, so one seed)."
    )
    for fraction in sorted(summary["label_fraction"].unique()):
        part = summary.filter(pl.col("label_fraction") == fraction)
        cells = [
            f"{m:.3f} ± {c:.3f}" if n > 1 else f"{m:.3f} ± -"
            for m, c, n in zip(part["accuracy"], part["accuracy_ci95"], part["seeds"], strict=True)
        ]
        part = part.with_columns(cell=pl.Series(cells))
        doc.heading(f"{fraction:.0%} of the labels", 3)
        if "n_train" in part.columns:  # tables of embedkit probe have it
            sizes = part.group_by("dataset", maintain_order=True).agg(
                pl.col("n_train").first(), pl.col("seeds").max()
            )
            doc.text(
                "Training rows × seeds: "
                + "; ".join(f"{d} {n} × {k}" for d, n, k in sizes.iter_rows())
                + "."
            )
        doc.table(part.pivot(on="dataset", index="encoder", values="cell"))
    for dataset in summary["dataset"].unique(maintain_order=True):
        doc.figure(
            probe_curves(summary, dataset),
            f"probe-{dataset}",
            f"Probe accuracy against label fraction on {dataset}",
        )


def _ood_section(doc: _Document, table: pl.DataFrame) -> None:
    doc.heading("OOD detection")
    labelled = table.with_columns(
        pl.concat_str("encoder", "scorer", separator=" / ").alias("encoder / scorer")
    )
    doc.text(
        "AUROC (higher is better, 0.5 is chance) with OOD as the positive class, mean over "
        "the OOD datasets of each ID dataset."
    )
    doc.table(_pivot(labelled, "encoder / scorer", "id_dataset", "auroc"))
    if "fpr95" in table.columns:
        doc.text(
            "FPR@95: the share of ID samples flagged at the threshold that detects 95 % of "
            "the OOD samples (lower is better), mean over the OOD datasets."
        )
        doc.table(_pivot(labelled, "encoder / scorer", "id_dataset", "fpr95"))
    if "ood_group" in table.columns and table["ood_group"].drop_nulls().len():
        grouped = summarise_ood_groups(table).with_columns(
            pl.concat_str("encoder", "scorer", "id_dataset", separator=" / ").alias(
                "encoder / scorer / ID"
            )
        )
        doc.text(
            "Per OOD group (`--ood-group`, as OpenOOD's near- and far-OOD): mean AUROC, then "
            "mean FPR@95, over the group's datasets."
        )
        doc.table(_pivot(grouped, "encoder / scorer / ID", "ood_group", "auroc"))
        doc.table(_pivot(grouped, "encoder / scorer / ID", "ood_group", "fpr95"))
    doc.figure(
        ood_bars(table),
        "ood-bars",
        "AUROC per scorer and encoder: mean over the ID × OOD pairs with its 95 % interval, "
        "each pair a point",
    )
    doc.figure(
        ood_heatmap_grid(table),
        "ood-heatmaps",
        "ID × OOD AUROC of every encoder (rows) and scorer (columns); red is worse than chance",
    )


def _scores_section(doc: _Document, scores: pl.DataFrame) -> None:
    doc.heading("OOD score distributions")
    doc.text(
        "Per-sample scores (higher = more in-distribution) of the ID test split and each OOD set."
    )
    groups = scores.select("encoder", "id_dataset", "scorer").unique(maintain_order=True)
    for encoder, id_dataset, scorer in groups.iter_rows():
        part = scores.filter(
            (pl.col("encoder") == encoder)
            & (pl.col("id_dataset") == id_dataset)
            & (pl.col("scorer") == scorer)
        )
        name = f"{encoder}-{id_dataset}-{scorer}"
        what = f"{encoder}, {scorer}, ID {id_dataset}"
        doc.figure(score_histograms(part), f"hist-{name}", f"Score histograms: {what}")
        doc.figure(roc_curves(part), f"roc-{name}", f"ROC curves: {what}")


def read_scores(folder: str | Path) -> pl.DataFrame:
    """Read every per-sample score table that ``embedkit ood --save-scores DIR`` wrote."""
    files = sorted(Path(folder).glob("*.parquet"))
    if not files:
        raise ConfigError(
            f"--scores {folder} holds no score tables: write them with "
            f"`embedkit ood --save-scores {folder}`"
        )
    return pl.concat([read_table(path, "scores") for path in files])


REQUIRED_COLUMNS = {
    "probe": {"encoder", "dataset", "label_fraction", "accuracy"},
    "knn": {"encoder", "dataset", "accuracy"},
    "ood": {"encoder", "id_dataset", "ood_dataset", "scorer", "auroc"},
    "transfer": {"encoder", "dataset", "accuracy"},
    "scores": {"encoder", "id_dataset", "scorer", "dataset", "score", "is_ood"},
}


def read_table(path: str | Path, kind: str) -> pl.DataFrame:
    """Read a result table written by ``embedkit <kind> --out``, checking its columns."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"--{kind} {path} does not exist: write it with `embedkit {kind} --out`")
    try:
        table = pl.read_parquet(path)
    except Exception as exc:  # polars raises several types for a non-parquet file
        raise ConfigError(
            f"--{kind} {path} is not a parquet table ({type(exc).__name__})"
        ) from None
    missing = REQUIRED_COLUMNS[kind] - set(table.columns)
    if missing:
        raise ConfigError(
            f"--{kind} {path} lacks columns {', '.join(sorted(missing))}: is it "
            f"a table of `embedkit {kind}`?"
        )
    return table


def build_report(
    output: str | Path,
    probe: pl.DataFrame | None = None,
    knn: pl.DataFrame | None = None,
    ood: pl.DataFrame | None = None,
    transfer: pl.DataFrame | None = None,
    config: ReportConfig = ReportConfig(),
    scores: pl.DataFrame | None = None,
    runs: list[str | Path] | None = None,
) -> Path:
    """Write the report and its figures into ``output``; return the report's path.

    ``scores`` are per-sample OOD scores (``read_scores``), drawn as histograms and ROC
    curves per encoder, ID dataset and scorer.
    """
    if config.format not in FORMATS:
        raise ConfigError(f"unknown report format '{config.format}': use markdown or html")
    if all(t is None for t in (probe, knn, ood, transfer, scores)) and not runs:
        raise ConfigError("nothing to report: pass at least one result table (--probe, --ood, ...)")
    tables = {"probe": probe, "knn": knn, "ood": ood, "transfer": transfer, "scores": scores}
    empty = [name for name, table in tables.items() if table is not None and table.height == 0]
    if empty:  # before the folder is made: nothing half-written
        raise ConfigError(f"the {empty[0]} table holds no rows: there is nothing to report")
    folder = check_output_folder(output)
    folder.mkdir(parents=True, exist_ok=True)
    doc = _Document(folder)
    doc.heading(config.title, 1)
    made = stamp()
    doc.text(f"Made by embedkit {made['embedkit_version']} on {made['created']}.")
    if runs:
        _runs_section(doc, [Path(r) for r in runs])
    if probe is not None:
        _probe_section(doc, probe)
    if knn is not None:
        doc.heading("kNN classification")
        doc.table(_pivot(knn, "encoder", "dataset", "accuracy"))
    if ood is not None:
        _ood_section(doc, ood)
    if scores is not None:
        _scores_section(doc, scores)
    if transfer is not None:
        metric = check_metric(config.transfer_metric)
        doc.heading("Transfer")
        doc.text(
            f"Probe {metric.replace('_', ' ')} of each encoder (rows, with its pretraining "
            f"data) on each target."
        )
        doc.table(_pivot(transfer, "encoder", "dataset", metric))
    path = folder / ("report.md" if config.format == "markdown" else "report.html")
    path.write_text(doc.markdown() if config.format == "markdown" else doc.html(config.title))
    return path
