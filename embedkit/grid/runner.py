"""Running a grid: plan, the local and SLURM executors, status.

``run_grid`` runs what is missing: cells whose ``cell.json`` says ``done`` are skipped, an
interrupted or failed cell continues from its checkpoints. The local executor runs cells
one after another in this process, or ``jobs`` at once as subprocesses (one GPU each when
there are GPUs); the SLURM executor submits one array task per cell through submitit, each
requeued from its checkpoint when it is preempted or reaches its time limit.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import ConfigError, RunError
from ..utils import stamp, write_json
from .cells import (
    STATES,
    Cell,
    Resources,
    cell_folder,
    cell_state,
    cost,
    expand,
    read_record,
    run_cell,
    run_folder,
    write_record,
)
from .spec import GridSpec, parse_grid

log = logging.getLogger(__name__)
EXECUTORS = ("local", "slurm")
# Images per second that one H100 (bf16) trains a ResNet-50 on at 28 px, derived from the
# measured bare forward of 36,327 img/s (BENCHMARKS.md, issue 12): a training step costs
# about 3 forwards and SSL methods feed 2 views. Other backbones and sizes are scaled by
# their counted forward FLOPs (``plan``); pass --throughput to use your own figure.
H100_RESNET50_28PX_FORWARD = 36_327.0
TRAIN_COST_IN_FORWARDS = 3 * 2


def prepare_output(spec: GridSpec, output: str | os.PathLike) -> Path:
    """Create (or check) a grid's output folder and save the grid file in it."""
    output = Path(output)
    if output.exists() and not output.is_dir():
        raise ConfigError(f"--output {output} is a file: choose a folder")
    marker = output / "grid.json"
    if marker.is_file():
        owner = json.loads(marker.read_text()).get("name")
        if owner != spec.name:
            raise ConfigError(
                f"--output {output} holds grid '{owner}', not '{spec.name}': choose another "
                f"--output (or give the grid file the name '{owner}')"
            )
    elif output.exists() and any(output.iterdir()):
        raise ConfigError(f"--output {output} exists and is not a grid folder: choose another")
    output.mkdir(parents=True, exist_ok=True)
    if not marker.is_file():
        write_json(marker, {"name": spec.name, **stamp()})
    (output / "grid.toml").write_text(spec.text)
    write_json(output / "grid.source.json", {"origin": spec.origin, "base": spec.base})
    return output


def read_output(output: str | os.PathLike) -> tuple[GridSpec, list[Cell]]:
    """The grid saved in an output folder (by the latest ``grid run``) and its cells."""
    output = Path(output)
    if not (output / "grid.toml").is_file():
        raise ConfigError(f"{output} is not a grid folder (no grid.toml): run `embedkit grid run`")
    source = json.loads((output / "grid.source.json").read_text())
    spec = parse_grid((output / "grid.toml").read_text(), source["origin"], source["base"])
    return spec, expand(spec)


# --- plan ---------------------------------------------------------------------------------


def forward_flops(backbone: str, size: int, patch_size: int = 0) -> float:
    """Forward FLOPs of one image, counted by torch on the CPU (no weights loaded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbones import create_encoder

    encoder = create_encoder(backbone, "random", size, patch_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def plan(spec: GridSpec, output: str | os.PathLike | None = None, throughput: float = 0.0):
    """The cells, what each costs, and the state of those an output folder already has.

    Args:
        throughput: pretraining images per second on one GPU; 0 uses a default derived
            from a measured H100 figure and each backbone's counted FLOPs.

    Returns:
        One row per cell (``cell, kind, label, method, dataset, backbone, init, size,
        image_epochs, embed_images, gpu_hours, state``) and a totals dict.
    """
    cells = expand(spec)
    reference = forward_flops("resnet50", 28)
    rates: dict[tuple[str, int], float] = {}
    rows = []
    for cell in cells:
        key = (cell.axes["backbone"], cell.axes["size"])
        if key not in rates:
            flops = forward_flops(*key)
            rates[key] = H100_RESNET50_28PX_FORWARD * reference / flops
        forward_rate = rates[key]
        train_rate = throughput or forward_rate / TRAIN_COST_IN_FORWARDS
        images = cost(cell)
        hours = images["image_epochs"] / train_rate / 3600
        hours += images["embed_images"] / forward_rate / 3600
        state = cell_state(Path(output), cell.id)["state"] if output else "pending"
        rows.append(
            {
                "cell": cell.id,
                "kind": cell.kind,
                "label": cell.label,
                **{k: str(cell.axes[k]) for k in ("method", "dataset", "backbone", "init")},
                "size": cell.axes["size"],
                **images,
                "gpu_hours": hours,
                "state": state,
            }
        )
    table = pl.DataFrame(rows)
    totals = {
        "cells": len(cells),
        "pretraining_cells": sum(c.kind == "pretrain" for c in cells),
        "baseline_cells": sum(c.kind == "baseline" for c in cells),
        "image_epochs": float(table["image_epochs"].sum()),
        "embed_images": float(table["embed_images"].sum()),
        "gpu_hours": float(table["gpu_hours"].sum()),
        "throughput": "stated" if throughput else "derived from one measured H100 figure",
    }
    return table, totals


# --- status -------------------------------------------------------------------------------


def _progress(output: Path, cell: Cell, record: dict[str, Any]) -> str:
    state, stage = record.get("state"), record.get("stage")
    if state == "done":
        return "done"
    if cell.kind == "pretrain" and stage in (None, "pretrain"):
        try:
            run = json.loads((run_folder(output, cell) / "run.json").read_text())
        except (OSError, ValueError):
            return stage or ""
        epochs = cell.encoder["pretrain"]["epochs"]
        return f"pretrain {run.get('epochs_done', 0)}/{epochs} epochs"
    return stage or ""


def status(output: str | os.PathLike) -> pl.DataFrame:
    """One row per cell of the grid saved in ``output``: state, progress, time, error."""
    output = Path(output)
    _, cells = read_output(output)
    rows = []
    for cell in cells:
        record = cell_state(output, cell.id)
        started = record.get("started")
        rows.append(
            {
                "cell": cell.id,
                "label": cell.label,
                "state": record.get("state", "pending"),
                "progress": _progress(output, cell, record),
                "attempts": record.get("attempts", 0),
                "time_s": record.get("duration_s"),
                "started": started,
                "error": record.get("error") or "",
            }
        )
    return pl.DataFrame(rows, schema_overrides={"time_s": pl.Float64})


# --- run ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class SlurmOptions:
    """Where a SLURM array runs (``grid run --executor slurm``).

    Attributes:
        partition, account, qos: the usual sbatch options (None: the cluster's default).
        gpus_per_node: GPUs of each cell; the cell trains on all of them (DDP, one task per
            GPU, Lightning Fabric reads SLURM's environment).
        nodes: nodes per cell.
        time_min: time limit per task; a task that reaches it is requeued and resumes.
        cpus_per_task, mem_gb: per task.
        parallel: array tasks running at once.
        sbatch: extra sbatch options, ``{"constraint": "a100"}``.
        setup: shell lines run before the task (``module load cuda``).
    """

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 1
    nodes: int = 1
    time_min: int = 24 * 60
    cpus_per_task: int = 8
    mem_gb: float = 64
    parallel: int = 64
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()


class CellTask:
    """The callable an array task runs: one cell, requeued from its checkpoint (submitit
    calls ``checkpoint`` when SLURM preempts the task or its time limit nears)."""

    def __init__(self, output: str, cell: dict[str, Any], resources: dict[str, Any]) -> None:
        self.output, self.cell, self.resources = output, cell, resources

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="embedkit: %(message)s")
        cell = Cell.from_json(self.cell)
        return run_cell(Path(self.output), cell, Resources(**self.resources))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(CellTask(self.output, self.cell, self.resources))


def _pending(output: Path, cells: list[Cell]) -> list[Cell]:
    todo = []
    for cell in cells:
        state = cell_state(output, cell.id)["state"]
        if state == "done":
            continue
        if state == "running":
            log.info("cell %s (%s) is running elsewhere: skipped", cell.id, cell.label)
            continue
        todo.append(cell)
    return todo


def run_grid(
    spec: GridSpec,
    output: str | os.PathLike,
    resources: Resources = Resources(),
    executor: str = "local",
    jobs: int = 1,
    slurm: SlurmOptions = SlurmOptions(),
    wait: bool = True,
) -> pl.DataFrame | list:
    """Run every cell of ``spec`` that is not done; return the status table (local) or the
    submitted jobs (slurm; with ``wait``, once they finished)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}': use {' or '.join(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    output = prepare_output(spec, output)
    cells = expand(spec)
    todo = _pending(output, cells)
    for cell in todo:  # every cell's configuration is on disk before anything runs
        if not read_record(output, cell.id):
            write_record(output, cell)
    log.info("%d of %d cells to run in %s", len(todo), len(cells), output)
    if executor == "slurm":
        submitted = submit_slurm(output, todo, resources, slurm, cluster=None)
        if wait:
            for job in submitted:
                job.wait()
        return submitted
    if jobs == 1:
        for index, cell in enumerate(todo, 1):
            log.info("cell %d/%d: %s (%s)", index, len(todo), cell.label, cell.id)
            try:
                run_cell(output, cell, resources)
            except RunError as exc:  # another process took it meanwhile
                log.warning("%s", exc)
    else:
        _run_parallel(output, todo, resources, jobs)
    return status(output)


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # pragma: no cover
        return 0


def _run_parallel(output: Path, cells: list[Cell], resources: Resources, jobs: int) -> None:
    """Cells as subprocesses, ``jobs`` at once, each pinned to one GPU when there are GPUs."""
    gpus = _gpu_count()
    queue = list(cells)
    running: dict[int, tuple[subprocess.Popen, Any]] = {}
    slots = list(range(jobs))
    while queue or running:
        while queue and slots:
            slot, cell = slots.pop(0), queue.pop(0)
            env = dict(os.environ)
            if gpus:
                env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
            log_file = open(cell_folder(output, cell.id) / "log.txt", "a")  # noqa: SIM115
            command = [
                sys.executable,
                "-m",
                "embedkit.cli.main",
                "grid",
                "run-cell",
                "--output",
                str(output),
                "--cell",
                cell.id,
                "--resources",
                json.dumps(asdict(resources)),
            ]
            process = subprocess.Popen(command, env=env, stdout=log_file, stderr=log_file)
            running[slot] = (process, log_file)
            log.info("started cell %s (%s) in slot %d", cell.id, cell.label, slot)
        time.sleep(0.5)
        for slot, (process, log_file) in list(running.items()):
            if process.poll() is not None:
                log_file.close()
                del running[slot]
                slots.append(slot)


def run_saved_cell(output: str | os.PathLike, cell_id: str, resources: Resources) -> dict:
    """Run one cell from its saved ``cell.json`` (what a worker process or array task does)."""
    record = read_record(Path(output), cell_id)
    if not record:
        raise ConfigError(f"no cell {cell_id} in {output}: run `embedkit grid run` first")
    return run_cell(Path(output), Cell.from_json(record["cell"]), resources)


def submit_slurm(
    output: Path,
    cells: list[Cell],
    resources: Resources,
    options: SlurmOptions,
    cluster: str | None = None,
) -> list:
    """Submit one array task per cell with submitit (``cluster``: None picks SLURM when
    ``srun`` is found; ``local`` runs the same tasks as local subprocesses)."""
    try:
        import submitit
    except ImportError:  # pragma: no cover
        raise ConfigError("the slurm executor needs submitit: pip install submitit") from None
    if not cells:
        return []
    executor = submitit.AutoExecutor(folder=str(output / "slurm" / "%j"), cluster=cluster)
    if executor.cluster == "debug":  # pragma: no cover
        raise ConfigError("no SLURM found")
    tasks = max(1, options.gpus_per_node)
    executor.update_parameters(
        name="embedkit-grid",
        timeout_min=options.time_min,
        nodes=options.nodes,
        tasks_per_node=tasks,
        gpus_per_node=options.gpus_per_node,
        cpus_per_task=options.cpus_per_task,
        mem_gb=options.mem_gb,
        slurm_array_parallelism=options.parallel,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_qos=options.qos,
        slurm_setup=list(options.setup),
        slurm_additional_parameters=dict(options.sbatch),
    )
    per_task = Resources(
        device=resources.device,
        data_root=resources.data_root,
        devices=options.gpus_per_node if executor.cluster == "slurm" else 1,
        num_nodes=options.nodes if executor.cluster == "slurm" else 1,
    )
    job_tasks = [CellTask(str(output), c.to_json(), asdict(per_task)) for c in cells]
    with executor.batch():
        jobs = [executor.submit(task) for task in job_tasks]
    for cell, job in zip(cells, jobs, strict=True):
        write_record(output, cell, job_id=str(job.job_id), submitted=stamp()["created"])
    log.info("submitted %d array tasks (%s)", len(jobs), executor.cluster)
    return jobs


def count_states(table: pl.DataFrame) -> dict[str, int]:
    counts = dict(table.group_by("state").len().iter_rows())
    return {state: counts.get(state, 0) for state in (*STATES, "interrupted")}
