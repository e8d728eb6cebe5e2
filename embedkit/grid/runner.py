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
from dataclasses import asdict
from pathlib import Path
from typing import Any

import polars as pl

from ..errors import ConfigError, EmbedkitError, RunError
from ..utils import stamp, write_json
from .cells import (
    STATES,
    Cell,
    cell_folder,
    cell_state,
    expand,
    read_record,
    run_folder,
    write_record,
)
from .execute import Resources, run_cell
from .present import modalities, restrict_to_data, without
from .scheduler import wait_for_cells, with_scheduler
from .slurm import SlurmOptions, check_slurm_options, submit_slurm
from .spec import GridSpec, parse_grid

log = logging.getLogger(__name__)


EXECUTORS = ("local", "slurm")


def prepare_output(
    spec: GridSpec,
    output: str | os.PathLike,
    absent: list[str] = (),
    modalities: dict[str, str] | None = None,
) -> Path:
    """Create (or check) a grid's output folder and save the grid file in it, with the
    datasets skipped as absent from the data root and the modality of each dataset."""
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
    source = {"origin": spec.origin, "base": spec.base, "absent": list(absent)}
    source["modalities"] = modalities or {}
    write_json(output / "grid.source.json", source)
    return output


def read_output(output: str | os.PathLike) -> tuple[GridSpec, list[Cell]]:
    """The grid saved in an output folder (by the latest ``grid run``) and its cells."""
    output = Path(output)
    if not (output / "grid.toml").is_file():
        raise ConfigError(f"{output} is not a grid folder (no grid.toml): run `embedkit grid run`")
    source = json.loads((output / "grid.source.json").read_text())
    spec = parse_grid((output / "grid.toml").read_text(), source["origin"], source["base"])
    spec = without(spec, source.get("absent", []))
    return spec, expand(spec)


def recorded_modalities(output: str | os.PathLike) -> dict[str, str]:
    """The modality of each dataset, as the latest ``grid run`` recorded it."""
    try:
        source = json.loads((Path(output) / "grid.source.json").read_text())
    except (OSError, ValueError):
        return {}
    return source.get("modalities", {})


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
    """One row per cell of the grid saved in ``output``: state, progress, time, error. On
    SLURM a submitted cell whose job waits its turn reads ``queued`` (``pending``: not
    submitted, or not known to SLURM), besides ``blocked``, ``cancelled`` and
    ``interrupted`` (``scheduler.with_scheduler``)."""
    output = Path(output)
    _, cells = read_output(output)
    records = with_scheduler({cell.id: cell_state(output, cell.id) for cell in cells})
    rows = []
    for cell in cells:
        record = records[cell.id]
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


def _pending(output: Path, cells: list[Cell]) -> list[Cell]:
    todo = []
    records = with_scheduler({cell.id: cell_state(output, cell.id) for cell in cells})
    for cell in cells:
        state = records[cell.id]["state"]
        if state == "done":
            continue
        if state == "running":
            log.info("cell %s (%s) is running elsewhere: skipped", cell.id, cell.label)
            continue
        if state == "blocked":
            log.warning("cell %s (%s): %s", cell.id, cell.label, records[cell.id]["error"])
            continue
        if state == "queued":  # submitted before, its job still waits its turn
            job = records[cell.id]["job_id"]
            log.info("cell %s (%s) is queued as SLURM job %s: skipped", cell.id, cell.label, job)
            continue
        todo.append(cell)
    return todo


def check_weights(cells: list[Cell]) -> None:
    """Every weights file the cells start from exists, before any is run or submitted
    (``grid plan`` leaves files out: a preset is planned before its files are fetched)."""
    from ..backbones import check_init

    for cell in cells:
        encoder = cell.encoder.get("pretrain", cell.encoder)
        try:
            check_init(encoder["backbone"], encoder["init"])
        except EmbedkitError as exc:
            raise ConfigError(f"cell {cell.label}: {exc}") from None


def run_grid(
    spec: GridSpec,
    output: str | os.PathLike,
    resources: Resources = Resources(),
    executor: str = "local",
    jobs: int = 1,
    slurm: SlurmOptions = SlurmOptions(),
    wait: bool = True,
    slurm_cluster: str = "slurm",
) -> pl.DataFrame | list:
    """Run every cell of ``spec`` that is not done; return the status table (local) or the
    submitted jobs (slurm; with ``wait``, once they finished). ``slurm_cluster="local"``
    runs the SLURM executor's tasks through submitit's local executor (tests)."""
    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor '{executor}': use {' or '.join(EXECUTORS)}")
    if jobs < 1:
        raise ConfigError("--jobs must be at least 1")
    if executor == "slurm":
        check_slurm_options(slurm)
    spec, absent = restrict_to_data(spec, resources.data_root)
    cells = expand(spec)
    check_weights([c for c in cells if read_record(Path(output), c.id).get("state") != "done"])
    output = prepare_output(spec, output, absent, modalities(spec, resources.data_root))
    todo = _pending(output, cells)
    for cell in todo:  # every cell's configuration is on disk before anything runs
        if not read_record(output, cell.id):
            write_record(output, cell)
    log.info("%d of %d cells to run in %s", len(todo), len(cells), output)
    if executor == "slurm":
        submitted = submit_slurm(output, todo, resources, slurm, cluster=slurm_cluster)
        if wait:
            wait_for_cells(output, todo, submitted)
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


def count_states(table: pl.DataFrame) -> dict[str, int]:
    counts = dict(table.group_by("state").len().iter_rows())
    shown = (*STATES, "queued", "interrupted", "cancelled", "blocked")
    return {state: counts.get(state, 0) for state in shown}
