"""``embedkit grid``: plan, run, status and collect a benchmark grid."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from .app import ConfigOpt, DataRootOpt, DebugOpt, DeviceOpt, ProgressOpt, app, run_command
from .output import show_table, split_names

grid_app = typer.Typer(
    help="Benchmark grids: methods x datasets x backbones x inits, locally or on SLURM.",
    no_args_is_help=True,
)
app.add_typer(grid_app, name="grid")

GridFileArg = Annotated[
    Path | None, typer.Argument(help="A grid file (TOML); or use --preset.", show_default=False)
]
PresetOpt = Annotated[
    str | None,
    typer.Option("--preset", help="A grid shipped with embedkit: demo, laptop, paper, extended."),
]
OutputOpt = Annotated[Path, typer.Option("--output", help="The grid's output folder.")]


def _spec(file: Path | None, preset: str | None):
    from embedkit.grid import load_grid

    return load_grid(file, preset)


@grid_app.command("plan")
def plan_command(
    file: GridFileArg = None,
    preset: PresetOpt = None,
    output: Annotated[
        Path | None, typer.Option("--output", help="Show the state of the cells in this folder.")
    ] = None,
    throughput: Annotated[
        float,
        typer.Option(
            "--throughput", help="Pretraining images/s on one GPU (default: derived, see docs)."
        ),
    ] = 0.0,
    all_cells: Annotated[bool, typer.Option("--all", help="List every cell.")] = False,
    data_root: DataRootOpt = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """The grid's cells, their count and cost (image-epochs, GPU-hours), without running;
    with --data-root, datasets absent from it are listed and skipped, as `grid run` does."""
    from embedkit.grid import plan
    from embedkit.grid.present import restrict_to_data

    def action():
        spec, absent = _spec(file, preset), []
        if data_root:  # without one, the whole grid's cost (to plan before downloading)
            spec, absent = restrict_to_data(spec, data_root)
        if absent:
            print(f"skipped, absent from the data root: {', '.join(absent)}")
        table, totals = plan(spec, output, throughput, data_root)
        shown = table if all_cells or table.height <= 40 else table.head(40)
        show_table(shown.drop("cell") if not all_cells else shown)
        if shown.height < table.height:
            print(f"... {table.height - shown.height} more cells (--all lists them)")
        print(
            f"grid '{spec.name}': {totals['cells']} cells ({totals['pretraining_cells']} "
            f"pretraining, {totals['baseline_cells']} baselines); "
            f"{totals['image_epochs']:,.0f} pretraining image-epochs, "
            f"{totals['embed_images']:,.0f} images to embed; about "
            f"{totals['gpu_hours']:,.1f} GPU-hours ({totals['throughput']})"
        )

    run_command(debug, action)


@grid_app.command("run")
def run_command_(
    output: OutputOpt,
    file: GridFileArg = None,
    preset: PresetOpt = None,
    executor: Annotated[str, typer.Option("--executor", help="local or slurm.")] = "local",
    jobs: Annotated[
        int, typer.Option("--jobs", help="Cells at once (local: processes; slurm: array tasks).")
    ] = 1,
    device: DeviceOpt = "auto",
    data_root: DataRootOpt = None,
    partition: Annotated[str | None, typer.Option("--partition", help="SLURM partition.")] = None,
    account: Annotated[str | None, typer.Option("--account", help="SLURM account.")] = None,
    gpus_per_node: Annotated[
        int,
        typer.Option(
            "--gpus-per-node",
            help="SLURM: GPUs per cell (DDP over them); 0 for a CPU-only cluster.",
        ),
    ] = 1,
    cpus_per_task: Annotated[
        int,
        typer.Option(
            "--cpus-per-task", help="SLURM: CPUs per task; 0: 4 per GPU task, 2 without GPUs."
        ),
    ] = 0,
    mem_gb: Annotated[
        float,
        typer.Option("--mem-gb", help="SLURM: memory per node; 0: the partition's default."),
    ] = 0,
    nodes: Annotated[int, typer.Option("--nodes", help="SLURM: nodes per cell.")] = 1,
    time_min: Annotated[
        int, typer.Option("--time-min", help="SLURM: time limit per task; requeued after.")
    ] = 24 * 60,
    sbatch: Annotated[
        list[str] | None,
        typer.Option("--sbatch", metavar="KEY=VALUE", help="Extra sbatch option (repeatable)."),
    ] = None,
    setup: Annotated[
        list[str] | None,
        typer.Option("--setup", metavar="LINE", help="Shell line before each task (repeatable)."),
    ] = None,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait/--no-wait",
            help="SLURM: wait for the tasks to end; exit 1 unless every cell is done, 2 if "
            "one can never start.",
        ),
    ] = False,
    logger: Annotated[
        str,
        typer.Option(
            "--logger",
            help="Loggers of the pretraining runs besides metrics.jsonl: csv, tensorboard, wandb.",
        ),
    ] = "",
    progress: ProgressOpt = False,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run every cell that is not done (finished cells are never redone)."""
    from embedkit.errors import ConfigError
    from embedkit.grid import Resources, SlurmOptions, run_grid, status
    from embedkit.grid.runner import count_states

    def action():
        spec = _spec(file, preset)
        extra = {}
        for item in sbatch or []:
            key, sep, value = item.partition("=")
            if not sep or not key:
                raise ConfigError(f"--sbatch '{item}' is not of the form KEY=VALUE")
            extra[key] = value
        slurm = SlurmOptions(
            partition=partition,
            account=account,
            gpus_per_node=gpus_per_node,
            cpus_per_task=cpus_per_task,
            mem_gb=mem_gb,
            nodes=nodes,
            time_min=time_min,
            parallel=jobs,
            sbatch=extra,
            setup=tuple(setup or ()),
        )
        from embedkit.pretrain.loggers import check_loggers

        loggers = check_loggers(split_names(logger)) if logger else ()
        resources = Resources(
            device=device, data_root=data_root, progress=progress, loggers=loggers
        )
        result = run_grid(spec, output, resources, executor, jobs, slurm, wait)
        if executor == "slurm":
            ids = sorted({str(job.job_id).split("_")[0] for job in result})
            print(
                f"submitted {len(result)} cells as array job(s) {', '.join(ids) or '-'}; "
                f"follow them with `embedkit grid status --output {output}`"
            )
            if not wait:
                return
            result = status(output)
        show_table(result.drop("started"))
        counts = count_states(result)
        print(", ".join(f"{n} {s}" for s, n in counts.items() if n))
        if counts["failed"]:
            print(f"failed cells keep their traceback in {output}/cells/ID/error.txt")
        if counts["failed"] or counts["cancelled"] or counts["interrupted"]:
            raise typer.Exit(1)  # a script running the grid must see that it did not finish

    run_command(debug, action)


@grid_app.command("status")
def status_command(
    output: OutputOpt, config_file: ConfigOpt = None, debug: DebugOpt = False
) -> None:
    """One line per cell: state (pending, running, done, failed; on SLURM also queued,
    cancelled, interrupted, blocked), progress, time, error."""
    from embedkit.grid import status
    from embedkit.grid.runner import count_states

    def action():
        table = status(output)
        show_table(table)
        print(", ".join(f"{n} {s}" for s, n in count_states(table).items() if n))

    run_command(debug, action)


@grid_app.command("collect")
def collect_command(
    output: OutputOpt,
    page: Annotated[
        Path | None,
        typer.Option(
            "--page",
            help="Also write a results page (markdown): the findings beside the paper's claims.",
        ),
    ] = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Long tables over all cells and the study's findings, in OUTPUT/results."""
    from embedkit.grid import collect

    def action():
        collected = collect(output, page=page)
        for finding in collected.findings:
            print(f"\n{finding.title}")
            for sentence in finding.sentences:
                print(f"  - {sentence}")
        if collected.missing:
            print(f"\n{len(collected.missing)} cells missing from the tables (not done):")
            for label, state, _ in collected.missing:
                print(f"  - {label}: {state}")
        print(f"\nwrote {collected.folder} (findings.md, long tables, study_*.parquet)")
        if page is not None:
            print(f"wrote the results page {page}")

    run_command(debug, action)


@grid_app.command("preset")
def preset_command(
    name: Annotated[str, typer.Argument(help="demo or paper.")],
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Print a preset grid file, to copy and edit."""
    from embedkit.grid import load_grid

    run_command(debug, lambda: print(load_grid(preset=name).text, end=""))


@grid_app.command("run-cell", hidden=True)
def run_cell_command(
    output: OutputOpt,
    cell: Annotated[str, typer.Option("--cell", help="The cell's id.")],
    resources: Annotated[str, typer.Option("--resources", help="JSON of Resources.")] = "{}",
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Run one saved cell (what `grid run --jobs N` starts in each worker process)."""
    from embedkit.grid import Resources
    from embedkit.grid.runner import run_saved_cell

    def action():
        record = run_saved_cell(output, cell, Resources(**json.loads(resources)))
        if record.get("state") == "failed":
            raise typer.Exit(1)

    run_command(debug, action)
