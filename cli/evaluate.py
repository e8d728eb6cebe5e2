"""Commands that read only embedding stores: probe, knn, ood and transfer."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedkit.catalog import SCORER_NAMES
from embedkit.configs import ExploreConfig, KNNConfig, OODConfig, ProbeConfig, TransferConfig

from .app import (
    ConfigOpt,
    DebugOpt,
    DeviceOpt,
    StoresOpt,
    TableFormatOpt,
    app,
    dataset_option,
    field_help,
    listed,
    run_command,
)
from .output import parse_groups, parse_params, show_table, split_floats, split_ints, split_names


@app.command()
def probe(
    store: StoresOpt,
    datasets: Annotated[
        str,
        typer.Option(
            "--dataset",
            help=field_help(ProbeConfig, "datasets", "Comma-separated."),
        ),
    ] = listed(ProbeConfig.datasets),
    label_fractions: Annotated[
        str,
        typer.Option(
            "--label-fraction", help=field_help(ProbeConfig, "label_fractions", "Comma-separated.")
        ),
    ] = listed(ProbeConfig.label_fractions),
    seeds: Annotated[
        str, typer.Option("--seeds", help=field_help(ProbeConfig, "seeds", "Comma-separated."))
    ] = listed(ProbeConfig.seeds),
    protocol: Annotated[
        str,
        typer.Option(
            "--protocol",
            help=field_help(ProbeConfig, "protocol"),
        ),
    ] = ProbeConfig.protocol,
    device: DeviceOpt = ProbeConfig.device,
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path(
        "probe.parquet"
    ),
    table_format: TableFormatOpt = "parquet",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Linear probes at label fractions over cached embeddings."""
    from embedkit.eval import probe as run_probe
    from embedkit.eval import summarise_probe, write_table
    from embedkit.eval.results import check_table_path
    from embedkit.store import open_stores

    def action():
        formats = table_formats(table_format)  # before the work
        check_table_path(out)  # before the work, not after it
        stores = open_stores(store)
        config = ProbeConfig(
            datasets=dataset_option(datasets),
            label_fractions=split_floats(label_fractions),
            seeds=split_ints(seeds),
            protocol=protocol,
            device=device,
        )
        table = run_probe(stores, config)
        show_table(summarise_probe(table))
        print(f"wrote {write_table(table, out, config, stores, formats)}")

    run_command(debug, action)


def table_formats(value: str) -> tuple[str, ...]:
    """--format as write_table's extra formats (parquet is always written)."""
    from embedkit.eval.results import check_formats

    return tuple(f for f in check_formats(split_names(value)) if f != "parquet")


@app.command()
def scorers(
    scorer: Annotated[
        str | None, typer.Option("--scorer", help="Only this scorer (default: all).")
    ] = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The OOD scorers and their --param names (ood --param SCORER.NAME=VALUE)."""

    def action():
        import polars as pl

        from embedkit.ood import SCORERS, scorer_parameters

        rows = []
        for name in [SCORERS[scorer].name] if scorer else list(SCORERS):
            rows += scorer_parameters(name) or [
                {"scorer": name, "parameter": "-", "type": "", "default": "", "description": ""}
            ]
        show_table(pl.DataFrame(rows))

    run_command(debug, action)


@app.command()
def knn(
    store: StoresOpt,
    datasets: Annotated[
        str,
        typer.Option(
            "--dataset",
            help=field_help(KNNConfig, "datasets", "Comma-separated."),
        ),
    ] = listed(KNNConfig.datasets),
    k: Annotated[int, typer.Option("--k", help=field_help(KNNConfig, "k"))] = KNNConfig.k,
    temperature: Annotated[
        float,
        typer.Option("--temperature", help=field_help(KNNConfig, "temperature")),
    ] = KNNConfig.temperature,
    weighting: Annotated[
        str, typer.Option("--weighting", help=field_help(KNNConfig, "weighting"))
    ] = KNNConfig.weighting,
    metric: Annotated[
        str, typer.Option("--metric", help=field_help(KNNConfig, "metric"))
    ] = KNNConfig.metric,
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path(
        "knn.parquet"
    ),
    table_format: TableFormatOpt = "parquet",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """kNN classification of each test split from its training split (FAISS)."""
    from embedkit.eval import knn_classify, write_table
    from embedkit.eval.results import check_table_path
    from embedkit.store import open_stores

    def action():
        formats = table_formats(table_format)  # before the work
        check_table_path(out)  # before the work, not after it
        stores = open_stores(store)
        config = KNNConfig(
            datasets=dataset_option(datasets),
            k=k,
            temperature=temperature,
            weighting=weighting,
            metric=metric,
        )
        table = knn_classify(stores, config)
        show_table(table, drop=("method", "backbone", "init", "pretrain_dataset"))
        print(f"wrote {write_table(table, out, config, stores, formats)}")

    run_command(debug, action)


@app.command()
def ood(
    store: StoresOpt,
    id_datasets: Annotated[
        str,
        typer.Option(
            "--id",
            help=field_help(OODConfig, "id_datasets", "Comma-separated."),
        ),
    ] = listed(OODConfig.id_datasets),
    ood_datasets: Annotated[
        str,
        typer.Option(
            "--ood",
            help=field_help(OODConfig, "ood_datasets", "Comma-separated."),
        ),
    ] = listed(OODConfig.ood_datasets),
    scorers: Annotated[
        str,
        typer.Option(
            "--scorer",
            help=f"Scorers, comma-separated: {', '.join(SCORER_NAMES)}, "
            "or path/to/file.py:ClassName.",
        ),
    ] = listed(OODConfig.scorers),
    ood_splits: Annotated[
        str, typer.Option("--ood-splits", help=field_help(OODConfig, "ood_splits"))
    ] = OODConfig.ood_splits,
    scorer_params: Annotated[
        list[str] | None,
        typer.Option(
            "--param", metavar="SCORER.NAME=VALUE", help="A scorer parameter, e.g. knn.k=20."
        ),
    ] = None,
    save_scores: Annotated[
        Path | None,
        typer.Option("--save-scores", help=field_help(OODConfig, "save_scores")),
    ] = OODConfig.save_scores,
    ood_groups: Annotated[
        list[str] | None,
        typer.Option(
            "--ood-group",
            metavar="NAME=a,b",
            help="A named group of OOD datasets, e.g. near=a,b (repeat: far=c,d); each is "
            "averaged on its own, as OpenOOD's near/far-OOD.",
        ),
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path(
        "ood.parquet"
    ),
    table_format: TableFormatOpt = "parquet",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """OOD detection: every scorer on every ID × OOD pair (OpenOOD metrics, OOD positive)."""
    from embedkit.eval import evaluate_ood, summarise_ood_groups, write_table
    from embedkit.eval.results import check_table_path
    from embedkit.store import open_stores

    def action():
        formats = table_formats(table_format)  # before the work
        check_table_path(out)  # before the work, not after it
        stores = open_stores(store)
        config = OODConfig(
            id_datasets=dataset_option(id_datasets),
            ood_datasets=dataset_option(ood_datasets),
            scorers=split_names(scorers),
            scorer_params=parse_params(scorer_params or []),
            ood_splits=ood_splits,
            save_scores=None if save_scores is None else str(save_scores),
            ood_groups=parse_groups(ood_groups or []),
        )
        table = evaluate_ood(stores, config)
        show_table(table, drop=("method", "backbone", "init", "pretrain_dataset", "params"))
        if config.ood_groups:
            show_table(summarise_ood_groups(table))
        print(f"wrote {write_table(table, out, config, stores, formats)}")

    run_command(debug, action)


@app.command()
def transfer(
    store: StoresOpt,
    datasets: Annotated[
        str,
        typer.Option(
            "--dataset",
            help=field_help(TransferConfig, "datasets", "Comma-separated."),
        ),
    ] = listed(TransferConfig.datasets),
    label_fractions: Annotated[
        str, typer.Option("--label-fraction", help="Label fractions in (0, 1], comma-separated.")
    ] = listed(TransferConfig.probe.label_fractions),
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, comma-separated.")] = listed(
        TransferConfig.probe.seeds
    ),
    metric: Annotated[
        str, typer.Option("--metric", help=field_help(TransferConfig, "metric"))
    ] = TransferConfig.metric,
    device: DeviceOpt = TransferConfig.probe.device,
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path(
        "transfer.parquet"
    ),
    table_format: TableFormatOpt = "parquet",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Cross-dataset transfer: every encoder probed on every target, as a matrix."""
    from embedkit.eval import write_table
    from embedkit.eval.results import check_table_path
    from embedkit.eval.transfer import check_metric, transfer_matrix
    from embedkit.eval.transfer import transfer as run_transfer
    from embedkit.store import open_stores

    def action():
        formats = table_formats(table_format)  # before the work
        check_metric(metric)
        check_table_path(out)
        stores = open_stores(store)
        probe_config = ProbeConfig(
            label_fractions=split_floats(label_fractions), seeds=split_ints(seeds), device=device
        )
        config = TransferConfig(
            datasets=dataset_option(datasets), probe=probe_config, metric=metric
        )
        table = run_transfer(stores, config)
        show_table(transfer_matrix(table, metric))
        print(f"wrote {write_table(table, out, config, stores, formats)}")

    run_command(debug, action)


@app.command()
def report(
    output: Annotated[Path, typer.Option("--output", help="Folder for the report and figures.")],
    probe: Annotated[
        Path | None, typer.Option("--probe", help="Table of `embedkit probe --out`.")
    ] = None,
    knn: Annotated[
        Path | None, typer.Option("--knn", help="Table of `embedkit knn --out`.")
    ] = None,
    ood: Annotated[
        Path | None, typer.Option("--ood", help="Table of `embedkit ood --out`.")
    ] = None,
    transfer: Annotated[
        Path | None, typer.Option("--transfer", help="Table of `embedkit transfer --out`.")
    ] = None,
    scores: Annotated[
        Path | None,
        typer.Option("--scores", help="Folder of `embedkit ood --save-scores`: histograms, ROC."),
    ] = None,
    run: Annotated[
        list[Path] | None,
        typer.Option(
            "--run", help="A pretraining run folder: its loss and kNN curves (repeatable)."
        ),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="markdown or html.")] = "markdown",
    title: Annotated[
        str, typer.Option("--title", help="Heading of the report (Markdown or HTML).")
    ] = "embedkit report",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """A Markdown or HTML summary of result tables and pretraining runs, with figures."""
    from embedkit.eval.results import read_provenance
    from embedkit.report import ReportConfig, build_report, read_scores, read_table
    from embedkit.runs import read_metrics
    from embedkit.utils import check_output_folder

    def action():
        check_output_folder(output)  # before reading the tables, which takes a while
        tables = {
            name: read_table(path, name)
            for name, path in (("probe", probe), ("knn", knn), ("ood", ood), ("transfer", transfer))
            if path is not None
        }
        if scores is not None:
            tables["scores"] = read_scores(scores)
        # the metric `embedkit transfer --metric` showed, from the table's provenance
        made_by = read_provenance(transfer).get("config", {}) if transfer else {}
        config = ReportConfig(
            title=title, format=format, transfer_metric=made_by.get("metric", "accuracy")
        )
        for folder in run or []:  # before any figure is drawn
            read_metrics(folder)
        path = build_report(output, **tables, config=config, runs=run)
        print(f"wrote {path}")

    run_command(debug, action)


@app.command()
def explore(
    store: StoresOpt,
    output: Annotated[
        Path, typer.Option("--output", help="The page to write (one .html file, opens offline).")
    ] = Path("explore.html"),
    datasets: Annotated[
        str,
        typer.Option("--dataset", help=field_help(ExploreConfig, "datasets", "Comma-separated.")),
    ] = listed(ExploreConfig.datasets),
    splits: Annotated[
        str, typer.Option("--split", help=field_help(ExploreConfig, "splits", "Comma-separated."))
    ] = listed(ExploreConfig.splits),
    scores: Annotated[
        Path | None, typer.Option("--scores", help=field_help(ExploreConfig, "scores"))
    ] = None,
    max_points: Annotated[
        int, typer.Option("--max-points", help=field_help(ExploreConfig, "max_points"))
    ] = ExploreConfig.max_points,
    k: Annotated[int, typer.Option("--k", help=field_help(ExploreConfig, "k"))] = ExploreConfig.k,
    projection: Annotated[
        str, typer.Option("--projection", help=field_help(ExploreConfig, "projection"))
    ] = ExploreConfig.projection,
    thumbnail: Annotated[
        int, typer.Option("--thumbnail", help=field_help(ExploreConfig, "thumbnail"))
    ] = ExploreConfig.thumbnail,
    seed: Annotated[int, typer.Option("--seed", help=field_help(ExploreConfig, "seed"))] = 0,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """An interactive map of one store (or two side by side) in one HTML file: hover for
    images, click for nearest neighbours, colour and filter by OOD scores, select to CSV."""
    from embedkit.explore import write_explorer
    from embedkit.store import open_stores

    def action():
        config = ExploreConfig(
            datasets=dataset_option(datasets),
            splits=split_names(splits),
            scores=None if scores is None else str(scores),
            max_points=max_points,
            k=k,
            projection=projection,
            thumbnail=thumbnail,
            seed=seed,
        )
        path = write_explorer(open_stores(store), output, config)
        print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MiB): open it in a browser")

    run_command(debug, action)
