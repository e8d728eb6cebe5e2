"""The ``embedkit`` command: a thin typer layer over the library.

Each command parses options, builds the library's frozen config, calls one library function
and prints a table. ``EmbedkitError`` becomes one line on stderr and exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from embedkit.backbones import BACKBONES
from embedkit.data import SIZES
from embedkit.errors import EmbedkitError
from embedkit.methods import METHODS
from embedkit.ood import SCORERS

from .output import show_table, split_floats, split_ints, split_names

app = typer.Typer(
    name="embedkit",
    help="SSL benchmarks on MedMNIST over cached embedding stores: pretrain → embed → evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)

_sizes = ", ".join(map(str, SIZES))
DatasetOpt = Annotated[str, typer.Option("--dataset", help="A dataset, a comma-separated list, "
                       "an a+b multi-domain spec, 'all' (the 12 MedMNIST 2D) or 'demo'.")]  # fmt: skip
SizeOpt = Annotated[int, typer.Option("--size", help=f"Image size in pixels: {_sizes}.")]
DataRootOpt = Annotated[Optional[str], typer.Option(
    "--data-root", help="Folder of the npz files (default: $EMBEDKIT_DATA, else ~/.medmnist).")]
MethodOpt = Annotated[str, typer.Option("--method", help=f"One of: {', '.join(METHODS)}.")]
BackboneOpt = Annotated[str, typer.Option("--backbone", help=f"One of: {', '.join(BACKBONES)}.")]
InitOpt = Annotated[str, typer.Option("--init", help="random, imagenet, or a weights file.")]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Passes over the training split.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per step.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
StoresOpt = Annotated[list[Path], typer.Option("--store", metavar="PATH", help="An embedding store (repeatable).")]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


def _run(debug: bool, action):
    """Call ``action``; turn EmbedkitError into one line and exit code 2."""
    logging.basicConfig(level=logging.INFO, format="embedkit: %(message)s", stream=sys.stderr)
    for noisy in ("lightning_fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    warnings.showwarning = lambda message, category, *_: print(
        f"warning: {message}", file=sys.stderr)  # fmt: skip
    try:
        return action()
    except EmbedkitError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None


@app.command()
def datasets(
    data_root: DataRootOpt = None,
    debug: DebugOpt = False,
) -> None:
    """List the registered datasets and which of them the data root holds at each size."""
    from embedkit.data.listing import dataset_table

    _run(debug, lambda: show_table(dataset_table(data_root)))


@app.command()
def pretrain(
    output: Annotated[Path, typer.Option("--output", help="The run folder to create.")],
    dataset: DatasetOpt = "demo-med",
    size: SizeOpt = 28,
    method: MethodOpt = "simclr",
    backbone: BackboneOpt = "resnet18",
    init: InitOpt = "random",
    epochs: EpochsOpt = 100,
    batch_size: BatchOpt = 256,
    lr: Annotated[float, typer.Option("--lr", help="Peak AdamW learning rate.")] = 3e-4,
    weight_decay: Annotated[float, typer.Option("--weight-decay")] = 0.05,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue the run in --output.")] = False,
    progress: ProgressOpt = True,
    debug: DebugOpt = False,
) -> None:
    """Pretrain an encoder with a self-supervised method; writes a run folder."""
    from embedkit.pretrain import PretrainConfig
    from embedkit.pretrain import pretrain as run_pretrain

    def action():
        config = PretrainConfig(dataset=dataset, size=size, method=method, backbone=backbone,
                                init=init, epochs=epochs, batch_size=batch_size, lr=lr,
                                weight_decay=weight_decay, seed=seed, device=device,
                                data_root=data_root)  # fmt: skip
        run = run_pretrain(config, output, resume=resume, progress=progress)
        print(f"encoder written to {run}; embed it with `embedkit embed --run {run}`")

    _run(debug, action)


@app.command()
def embed(
    store: Annotated[Path, typer.Option("--store", help="The store to write (a *.zarr folder).")],
    dataset: DatasetOpt = "demo",
    size: SizeOpt = 28,
    run: Annotated[Optional[Path], typer.Option("--run", help="A pretraining run folder.")] = None,
    backbone: BackboneOpt = "resnet18",
    init: InitOpt = "random",
    split: Annotated[str, typer.Option("--split", help="Splits, comma-separated.")] = "train,val,test",
    batch_size: BatchOpt = 256,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace existing splits.")] = False,
    progress: ProgressOpt = True,
    debug: DebugOpt = False,
) -> None:
    """Embed dataset splits with an encoder (a run, or a backbone) into a zarr store."""
    from embedkit.embed import EmbedConfig
    from embedkit.embed import embed as run_embed

    def action():
        config = EmbedConfig(dataset=dataset, splits=split_names(split), size=size,
                             run=None if run is None else str(run), backbone=backbone, init=init,
                             seed=seed, batch_size=batch_size, device=device,
                             data_root=data_root, overwrite=overwrite)  # fmt: skip
        show_table(run_embed(config, store, progress=progress).catalog(),
                   drop=("store", "md5", "created"))  # fmt: skip

    _run(debug, action)


@app.command()
def probe(
    store: StoresOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="Datasets to probe "
                                         "(comma-separated); 'all' = every one in the store.")] = "all",  # fmt: skip
    label_fraction: Annotated[str, typer.Option("--label-fraction",
                              help="Label fractions in (0, 1], comma-separated.")] = "0.01,0.1,1",  # fmt: skip
    seeds: Annotated[str, typer.Option("--seeds", help="Seeds, comma-separated.")] = "0,1,2,3,4",
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path("probe.parquet"),
    debug: DebugOpt = False,
) -> None:
    """Linear probes at label fractions over cached embeddings."""
    from embedkit.eval import ProbeConfig, summarise_probe, write_table
    from embedkit.eval import probe as run_probe
    from embedkit.store import open_stores

    def action():
        stores = open_stores(store)
        config = ProbeConfig(datasets=_datasets(dataset), label_fractions=split_floats(label_fraction),
                             seeds=split_ints(seeds))  # fmt: skip
        table = run_probe(stores, config)
        show_table(summarise_probe(table))
        print(f"wrote {write_table(table, out, config, stores)}")

    _run(debug, action)


@app.command()
def knn(
    store: StoresOpt,
    dataset: Annotated[str, typer.Option("--dataset", help="Datasets to classify "
                                         "(comma-separated); 'all' = every one in the store.")] = "all",  # fmt: skip
    k: Annotated[int, typer.Option("--k", help="Neighbours.")] = 20,
    temperature: Annotated[float, typer.Option("--temperature")] = 0.07,
    weighting: Annotated[str, typer.Option("--weighting", help="weighted or majority.")] = "weighted",
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path("knn.parquet"),
    debug: DebugOpt = False,
) -> None:
    """kNN classification of each test split from its training split (FAISS)."""
    from embedkit.eval import KNNConfig, knn_classify, write_table
    from embedkit.store import open_stores

    def action():
        stores = open_stores(store)
        config = KNNConfig(datasets=_datasets(dataset), k=k, temperature=temperature,
                           weighting=weighting)  # fmt: skip
        table = knn_classify(stores, config)
        show_table(table, drop=("method", "backbone", "init", "pretrain_dataset"))
        print(f"wrote {write_table(table, out, config, stores)}")

    _run(debug, action)


@app.command()
def ood(
    store: StoresOpt,
    id_dataset: Annotated[str, typer.Option("--id", help="In-distribution datasets; 'all' = "
                                            "every one in the store.")] = "all",  # fmt: skip
    ood_dataset: Annotated[str, typer.Option("--ood", help="OOD datasets; 'all' = every "
                                             "other one in the store.")] = "all",  # fmt: skip
    scorer: Annotated[str, typer.Option("--scorer", help=f"Scorers, comma-separated: "
                                        f"{', '.join(SCORERS)}.")] = "knn",  # fmt: skip
    ood_splits: Annotated[str, typer.Option("--ood-splits", help="test or all.")] = "test",
    out: Annotated[Path, typer.Option("--out", help="Result table (parquet).")] = Path("ood.parquet"),
    debug: DebugOpt = False,
) -> None:
    """OOD detection: every scorer on every ID × OOD pair (OpenOOD metrics, OOD positive)."""
    from embedkit.eval import OODConfig, evaluate_ood, write_table
    from embedkit.store import open_stores

    def action():
        stores = open_stores(store)
        config = OODConfig(id_datasets=_datasets(id_dataset), ood_datasets=_datasets(ood_dataset),
                           scorers=split_names(scorer), ood_splits=ood_splits)  # fmt: skip
        table = evaluate_ood(stores, config)
        show_table(table, drop=("method", "backbone", "init", "pretrain_dataset", "params"))
        print(f"wrote {write_table(table, out, config, stores)}")

    _run(debug, action)


@app.command()
def quickstart(
    output: Annotated[Path, typer.Option("--output", help="Folder for every artefact.")] = Path(
        "embedkit-quickstart"),
    size: SizeOpt = 28,
    backbone: BackboneOpt = "resnet18",
    epochs: EpochsOpt = 15,
    batch_size: BatchOpt = 128,
    seed: SeedOpt = 0,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    progress: ProgressOpt = True,
    debug: DebugOpt = False,
) -> None:
    """The whole chain on the built-in demo data, SimCLR against random weights."""
    from embedkit.quickstart import QuickstartConfig
    from embedkit.quickstart import quickstart as run_quickstart

    def action():
        config = QuickstartConfig(size=size, backbone=backbone, epochs=epochs,
                                  batch_size=batch_size, seed=seed, device=device,
                                  data_root=data_root)  # fmt: skip
        result = run_quickstart(config, output, progress=progress)
        print("\nSimCLR against random weights on demo-med (ID); OOD: demo-natural, demo-texture")
        show_table(result.summary)
        print(f"artefacts in {output}: run, stores, probe/knn/ood/summary tables (parquet + json)")

    _run(debug, action)


def _datasets(value: str) -> tuple[str, ...]:
    return () if value.strip() == "all" else split_names(value)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
