"""The whole chain on the demo family: pretrain → embed → probe, kNN and OOD, in minutes on CPU.

A SimCLR encoder and a randomly initialised encoder of the same backbone are embedded into
two stores and evaluated side by side. Every artefact lands in one folder; running again
reuses what is complete (a finished run, complete store splits) and resumes the rest.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from pathlib import Path

import polars as pl

from .configs import QuickstartConfig
from .embed import EmbedConfig, embed
from .eval import KNNConfig, OODConfig, ProbeConfig, evaluate_ood, knn_classify, probe
from .eval.probe import summarise_probe
from .eval.results import write_table
from .pretrain import PretrainConfig, pretrain
from .report import ReportConfig, build_report, read_scores
from .utils import check_output_folder

log = logging.getLogger(__name__)

ID_DATASET = "demo-med"
OOD_DATASETS = ("demo-natural", "demo-texture")


@dataclass(frozen=True)
class QuickstartResult:
    """What the quickstart made: its summary table and the paths of every artefact."""

    summary: pl.DataFrame
    run: Path
    stores: tuple[Path, ...]
    tables: dict[str, Path]


def quickstart(
    config: QuickstartConfig, output: str | Path, progress: bool = True
) -> QuickstartResult:
    """Run the chain into ``output`` and return a one-row-per-encoder summary."""
    output = check_output_folder(output)
    run = output / "simclr-run"  # pretrain creates the folders once its input checks pass
    pretrain_config = PretrainConfig(
        dataset=ID_DATASET,
        size=config.size,
        method="simclr",
        backbone=config.backbone,
        recipe=config.recipe,
        epochs=config.epochs,
        batch_size=config.batch_size,
        seed=config.seed,
        device=config.device,
        data_root=config.data_root,
    )
    pretrain(pretrain_config, run, resume=True, progress=progress)
    base = EmbedConfig(
        dataset="demo",
        size=config.size,
        backbone=config.backbone,
        seed=config.seed,
        device=config.device,
        data_root=config.data_root,
    )
    stores = (
        embed(replace(base, run=str(run)), output / "simclr.zarr", progress=progress),
        embed(replace(base, init="random"), output / "random.zarr", progress=progress),
    )
    probe_config = ProbeConfig(
        datasets=(ID_DATASET,), label_fractions=config.label_fractions, seeds=config.seeds
    )
    knn_config = KNNConfig(datasets=(ID_DATASET,))
    ood_config = OODConfig(
        id_datasets=(ID_DATASET,), ood_datasets=OOD_DATASETS, save_scores=str(output / "scores")
    )
    tables = {
        "probe": write_table(
            probe(list(stores), probe_config), output / "probe.parquet", probe_config, list(stores)
        ),
        "knn": write_table(
            knn_classify(list(stores), knn_config), output / "knn.parquet", knn_config, list(stores)
        ),
        "ood": write_table(
            evaluate_ood(list(stores), ood_config), output / "ood.parquet", ood_config, list(stores)
        ),
    }
    summary = summarise(
        pl.read_parquet(tables["probe"]),
        pl.read_parquet(tables["knn"]),
        pl.read_parquet(tables["ood"]),
    )
    tables["summary"] = write_table(summary, output / "summary.parquet", config, list(stores))
    tables["report"] = build_report(
        output / "report",
        probe=pl.read_parquet(tables["probe"]),
        knn=pl.read_parquet(tables["knn"]),
        ood=pl.read_parquet(tables["ood"]),
        scores=read_scores(output / "scores"),
        config=ReportConfig(title="embedkit quickstart: SimCLR against random weights"),
    )
    return QuickstartResult(summary, run, tuple(s.path for s in stores), tables)


def probe_column(label_fraction: float) -> str:
    """The summary's column of the probe at ``label_fraction`` (``probe_acc_0_01`` for 1 %)."""
    return f"probe_acc_{label_fraction:g}".replace(".", "_")


def summarise(
    probe_table: pl.DataFrame, knn_table: pl.DataFrame, ood_table: pl.DataFrame
) -> pl.DataFrame:
    """One row per encoder: probe accuracy per label fraction, kNN accuracy, OOD AUROC/FPR95."""
    columns: dict[str, dict[str, float]] = {}
    for row in summarise_probe(probe_table).iter_rows(named=True):
        name = probe_column(row["label_fraction"])
        columns.setdefault(row["encoder"], {})[name] = row["accuracy"]
    for row in knn_table.iter_rows(named=True):
        columns.setdefault(row["encoder"], {})["knn_acc"] = row["accuracy"]
    for row in ood_table.iter_rows(named=True):
        short = row["ood_dataset"].removeprefix("demo-")
        columns.setdefault(row["encoder"], {})[f"auroc_{short}"] = row["auroc"]
        columns[row["encoder"]][f"fpr95_{short}"] = row["fpr95"]
    return pl.DataFrame([{"encoder": name, **values} for name, values in columns.items()])
