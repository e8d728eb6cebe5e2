"""Commands that read images: datasets, pretrain, embed and quickstart."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from embedkit.configs import EmbedConfig, PretrainConfig, QuickstartConfig

from .app import (
    BackboneOpt,
    BatchOpt,
    ConfigOpt,
    DataRootOpt,
    DatasetOpt,
    DebugOpt,
    DeviceOpt,
    DownloadOpt,
    EpochsOpt,
    InitOpt,
    MethodOpt,
    ProgressOpt,
    SeedOpt,
    SizeOpt,
    app,
    dataset_option,
    field_help,
    is_other_rank,
    listed,
    run_command,
)
from .output import parse_method_params, show_table, split_ints, split_names


@app.command()
def datasets(
    data_root: DataRootOpt = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List the registered datasets, which of them the data root holds at each size, and
    the datasets of your own there (folders, manifests, npz files) with their source."""
    from embedkit.data.listing import dataset_table

    run_command(debug, lambda: show_table(dataset_table(data_root)))


@app.command()
def download(
    dataset: Annotated[
        str,
        typer.Option("--dataset", help="Datasets, comma-separated, or 'all' (the 12 MedMNIST 2D)."),
    ] = "all",
    size: Annotated[
        str, typer.Option("--size", help="Image sizes, comma-separated: 28, 64, 128, 224.")
    ] = "28",
    data_root: DataRootOpt = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Fetch MedMNIST files into the data root with medmnist's downloader; lists their sizes."""

    def action():
        from embedkit.data.listing import download as run_download

        names = dataset_option(dataset) or ("all",)
        sizes = split_ints(size)
        show_table(run_download(names, sizes, data_root))

    run_command(debug, action)


@app.command()
def methods(
    method: Annotated[
        str | None, typer.Option("--method", help="Only this method (default: all).")
    ] = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The pretraining methods and their --param names, types, defaults and meaning."""

    def action():
        import polars as pl

        from embedkit.methods import METHODS, method_parameters

        names = [METHODS[method].name] if method else list(METHODS)
        show_table(pl.DataFrame([row for name in names for row in method_parameters(name)]))

    run_command(debug, action)


@app.command()
def pretrain(
    output: Annotated[Path, typer.Option("--output", help="The run folder to create.")],
    dataset: DatasetOpt = PretrainConfig.dataset,
    size: SizeOpt = PretrainConfig.size,
    method: MethodOpt = PretrainConfig.method,
    backbone: BackboneOpt = PretrainConfig.backbone,
    init: InitOpt = PretrainConfig.init,
    recipe: Annotated[
        str, typer.Option("--recipe", help=field_help(PretrainConfig, "recipe"))
    ] = PretrainConfig.recipe,
    epochs: EpochsOpt = PretrainConfig.epochs,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", help=field_help(PretrainConfig, "batch_size"))
    ] = PretrainConfig.batch_size,
    accumulate: Annotated[
        int, typer.Option("--accumulate", help=field_help(PretrainConfig, "accumulate"))
    ] = PretrainConfig.accumulate,
    lr: Annotated[
        float | None, typer.Option("--lr", help=field_help(PretrainConfig, "lr"))
    ] = PretrainConfig.lr,
    weight_decay: Annotated[
        float, typer.Option("--weight-decay", help=field_help(PretrainConfig, "weight_decay"))
    ] = PretrainConfig.weight_decay,
    warmup_fraction: Annotated[
        float | None,
        typer.Option(
            "--warmup-fraction", "--warmup", help=field_help(PretrainConfig, "warmup_fraction")
        ),
    ] = PretrainConfig.warmup_fraction,
    warmup_steps: Annotated[
        int | None,
        typer.Option("--warmup-steps", help=field_help(PretrainConfig, "warmup_steps")),
    ] = PretrainConfig.warmup_steps,
    patch_size: Annotated[
        int, typer.Option("--patch-size", help=field_help(PretrainConfig, "patch_size"))
    ] = PretrainConfig.patch_size,
    method_params: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            metavar="NAME=VALUE",
            help=field_help(
                PretrainConfig,
                "method_params",
                "One NAME=VALUE each (temperature=0.1); see embedkit methods.",
            ),
        ),
    ] = None,
    seed: SeedOpt = PretrainConfig.seed,
    data_fraction: Annotated[
        float, typer.Option("--data-fraction", help=field_help(PretrainConfig, "data_fraction"))
    ] = PretrainConfig.data_fraction,
    device: DeviceOpt = PretrainConfig.device,
    devices: Annotated[
        int, typer.Option("--devices", help=field_help(PretrainConfig, "devices"))
    ] = PretrainConfig.devices,
    num_nodes: Annotated[
        int, typer.Option("--num-nodes", help=field_help(PretrainConfig, "num_nodes"))
    ] = PretrainConfig.num_nodes,
    precision: Annotated[
        str, typer.Option("--precision", help=field_help(PretrainConfig, "precision"))
    ] = PretrainConfig.precision,
    compile: Annotated[
        bool,
        typer.Option("--compile", help=field_help(PretrainConfig, "compile")),
    ] = PretrainConfig.compile,
    checkpoint_every: Annotated[
        int, typer.Option("--checkpoint-every", help=field_help(PretrainConfig, "checkpoint_every"))
    ] = PretrainConfig.checkpoint_every,
    knn_every: Annotated[
        int, typer.Option("--knn-every", help=field_help(PretrainConfig, "knn_every"))
    ] = PretrainConfig.knn_every,
    loggers: Annotated[
        str,
        typer.Option(
            "--logger",
            help=field_help(PretrainConfig, "loggers", "Comma-separated; under RUN/logs."),
        ),
    ] = ",".join(PretrainConfig.loggers),
    data_root: DataRootOpt = PretrainConfig.data_root,
    download: DownloadOpt = PretrainConfig.download,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output.")] = False,
    progress: ProgressOpt = True,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Pretrain an encoder with a self-supervised method; writes a run folder."""
    from embedkit.pretrain import pretrain as run_pretrain

    def action():
        config = PretrainConfig(
            dataset=dataset,
            size=size,
            method=method,
            backbone=backbone,
            init=init,
            patch_size=patch_size,
            recipe=recipe,
            epochs=epochs,
            batch_size=batch_size,
            accumulate=accumulate,
            lr=lr,
            weight_decay=weight_decay,
            warmup_fraction=warmup_fraction,
            warmup_steps=warmup_steps,
            seed=seed,
            data_fraction=data_fraction,
            device=device,
            devices=devices,
            num_nodes=num_nodes,
            precision=precision,
            compile=compile,
            data_root=data_root,
            download=download,
            checkpoint_every=checkpoint_every,
            knn_every=knn_every,
            loggers=split_names(loggers) if loggers else (),
            method_params=parse_method_params(method_params or []),
        )
        run = run_pretrain(config, output, resume=resume, progress=progress)
        if is_other_rank():
            return
        print(f"encoder written to {run}; embed it with `embedkit embed --run {run}`")

    run_command(debug, action)


@app.command()
def embed(
    store: Annotated[Path, typer.Option("--store", help="The store to write (a *.zarr folder).")],
    dataset: DatasetOpt = EmbedConfig.dataset,
    size: SizeOpt = EmbedConfig.size,
    run: Annotated[Path | None, typer.Option("--run", help=field_help(EmbedConfig, "run"))] = None,
    backbone: BackboneOpt = EmbedConfig.backbone,
    init: InitOpt = EmbedConfig.init,
    splits: Annotated[
        str,
        typer.Option(
            "--split", "--splits", help=field_help(EmbedConfig, "splits", "Comma-separated.")
        ),
    ] = listed(EmbedConfig.splits),
    batch_size: BatchOpt = EmbedConfig.batch_size,
    seed: SeedOpt = EmbedConfig.seed,
    device: DeviceOpt = EmbedConfig.device,
    data_root: DataRootOpt = EmbedConfig.data_root,
    download: DownloadOpt = EmbedConfig.download,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help=field_help(EmbedConfig, "overwrite"))
    ] = EmbedConfig.overwrite,
    resume: Annotated[
        bool, typer.Option("--resume", help=field_help(EmbedConfig, "resume"))
    ] = EmbedConfig.resume,
    dtype: Annotated[
        str, typer.Option("--dtype", help=field_help(EmbedConfig, "dtype"))
    ] = EmbedConfig.dtype,
    with_head: Annotated[
        bool, typer.Option("--with-head", help=field_help(EmbedConfig, "with_head"))
    ] = EmbedConfig.with_head,
    progress: ProgressOpt = True,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Embed dataset splits with an encoder (a run, or a backbone) into a zarr store."""
    from embedkit.embed import embed as run_embed

    def action():
        config = EmbedConfig(
            dataset=dataset,
            splits=split_names(splits),
            size=size,
            run=None if run is None else str(run),
            backbone=backbone,
            init=init,
            seed=seed,
            batch_size=batch_size,
            device=device,
            data_root=data_root,
            download=download,
            overwrite=overwrite,
            resume=resume,
            dtype=dtype,
            with_head=with_head,
        )
        written = run_embed(config, store, progress=progress)
        if not is_other_rank():
            show_table(written.catalog(), drop=("store", "md5", "created"))

    run_command(debug, action)


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", help="Folder for every artefact.")] = Path(
        "embedkit-quickstart"
    ),
    size: SizeOpt = QuickstartConfig.size,
    backbone: BackboneOpt = QuickstartConfig.backbone,
    recipe: Annotated[
        str, typer.Option("--recipe", help=field_help(QuickstartConfig, "recipe"))
    ] = QuickstartConfig.recipe,
    epochs: EpochsOpt = QuickstartConfig.epochs,
    batch_size: BatchOpt = QuickstartConfig.batch_size,
    seed: SeedOpt = QuickstartConfig.seed,
    device: DeviceOpt = QuickstartConfig.device,
    data_root: DataRootOpt = QuickstartConfig.data_root,
    progress: ProgressOpt = True,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The whole chain on the built-in demo data, SimCLR against random weights."""
    from embedkit.quickstart import quickstart as run_quickstart

    def action():
        config = QuickstartConfig(
            size=size,
            backbone=backbone,
            recipe=recipe,
            epochs=epochs,
            batch_size=batch_size,
            seed=seed,
            device=device,
            data_root=data_root,
        )
        result = run_quickstart(config, output, progress=progress)
        print("\nSimCLR against random weights on demo-med (ID); OOD: demo-natural, demo-texture")
        show_table(result.summary)
        print(f"artefacts in {output}: run, stores, probe/knn/ood/summary tables (parquet + json)")
        print(f"report with figures: {result.tables['report']}")

    run_command(debug, action)
