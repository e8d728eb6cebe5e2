"""Running one cell: pretrain (or load), embed and evaluate, continuing earlier attempts."""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import EmbedkitError, RunError
from ..lock import FolderLock
from ..utils import stamp
from .cells import Cell, cell_folder, read_record, run_folder, store_path, write_record

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Resources:
    """Where and how cells run (not part of their identity)."""

    device: str = "auto"
    data_root: str | None = None
    devices: int = 1
    num_nodes: int = 1
    progress: bool = False
    loggers: tuple[str, ...] = ()


def slurm_job_id() -> str | None:
    """The id ``scancel`` and ``sacct`` take for this task: ``JOB_TASK`` for an array task
    (its own ``SLURM_JOB_ID`` is a number that ``scancel`` accepts and ignores on Slurm
    22.05), else ``SLURM_JOB_ID``; None outside SLURM."""
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"{array}_{task}"
    return os.environ.get("SLURM_JOB_ID")


def run_cell(output: Path, cell: Cell, resources: Resources = Resources()) -> dict[str, Any]:
    """Pretrain (or load), embed and evaluate one cell, continuing whatever an earlier
    attempt finished. A failure is recorded (``state: failed`` with its error) and returned,
    not raised; an interrupt leaves the cell to continue next time.

    Raises:
        RunError: another live process is running this cell.
    """
    output = Path(output)
    folder = cell_folder(output, cell.id)
    folder.mkdir(parents=True, exist_ok=True)
    rank = int(os.environ.get("SLURM_PROCID", os.environ.get("RANK", "0")))
    if rank != 0:  # a multi-process cell: the other ranks only join the training
        if cell.kind == "pretrain":
            _pretrain(output, cell, resources)
        return {}
    lock = FolderLock(folder, "grid cell", RunError).acquire()
    record = read_record(output, cell.id)  # read under the lock: another process may have
    if record.get("state") == "done":  # finished it since this one listed what to run
        lock.release()
        log.info("cell %s (%s) was finished meanwhile: not redone", cell.id, cell.label)
        return record
    start = time.time()
    write_record(
        output,
        cell,
        state="running",
        stage=None,
        error=None,
        started=stamp()["created"],
        host=socket.gethostname(),
        pid=os.getpid(),
        attempts=int(record.get("attempts", 0)) + 1,
        job_id=slurm_job_id() or record.get("job_id"),
    )
    try:
        if cell.kind == "pretrain":
            write_record(output, cell, stage="pretrain")
            _pretrain(output, cell, resources)
        write_record(output, cell, stage="embed")
        store = _embed(output, cell, resources)
        write_record(output, cell, stage="evaluate")
        _evaluate(folder, cell, store, resources)
    except KeyboardInterrupt:
        write_record(output, cell, state="pending", error="interrupted")
        raise
    except Exception as exc:
        message = str(exc) if isinstance(exc, EmbedkitError) else f"{type(exc).__name__}: {exc}"
        (folder / "error.txt").write_text(traceback.format_exc())
        log.error("cell %s (%s) failed: %s", cell.id, cell.label, message)
        return write_record(
            output, cell, state="failed", error=message, duration_s=time.time() - start
        )
    finally:
        lock.release()
    return write_record(
        output,
        cell,
        state="done",
        stage=None,
        finished=stamp()["created"],
        duration_s=round(time.time() - start, 1),
    )


def _pretrain(output: Path, cell: Cell, resources: Resources) -> Path:
    from ..pretrain import PretrainConfig, pretrain

    config = PretrainConfig(
        **cell.encoder["pretrain"],
        device=resources.device,
        devices=resources.devices,
        num_nodes=resources.num_nodes,
        data_root=resources.data_root,
        loggers=tuple(resources.loggers),
    )
    return pretrain(config, run_folder(output, cell), resume=True, progress=resources.progress)


def _embed(output: Path, cell: Cell, resources: Resources):
    from ..embed import EmbedConfig, embed

    plan, encoder = cell.evaluate, cell.encoder
    if cell.kind == "pretrain":
        source = {"run": str(run_folder(output, cell))}
        size = encoder["pretrain"]["size"]
    else:
        source = {"backbone": encoder["backbone"], "init": encoder["init"]}
        source["seed"] = encoder["seed"] or 0
        size = encoder["size"]
    config = EmbedConfig(
        dataset=",".join([*plan["datasets"], *plan.get("ood_datasets", ())]),
        size=size,
        batch_size=plan["batch_size"],
        dtype=plan["dtype"],
        device=resources.device,
        data_root=resources.data_root,
        resume=True,
        **source,
    )
    return embed(config, store_path(output, cell), progress=resources.progress)


def _evaluate(folder: Path, cell: Cell, store, resources: Resources) -> None:
    """Probe, kNN and OOD tables of the cell; each one written is kept on a retry."""
    from ..eval import (
        KNNConfig,
        OODConfig,
        ProbeConfig,
        evaluate_ood,
        knn_classify,
        probe,
        write_table,
    )

    plan = cell.evaluate
    datasets = tuple(plan["datasets"])
    own = tuple(d for d in datasets if d in cell.pretrain_datasets)
    device = resources.device
    probe_datasets = datasets if plan["transfer"] or not own else own
    steps = [
        (
            "probe",
            lambda: ProbeConfig(
                datasets=probe_datasets,
                label_fractions=tuple(plan["label_fractions"]),
                seeds=tuple(plan["seeds"]),
                protocol=plan["protocol"],
                l2_grid=tuple(plan["l2_grid"]),
                device=device,
            ),
            probe,
        ),
    ]
    if plan["knn"]:
        steps.append(("knn", lambda: KNNConfig(datasets=datasets, k=plan["knn_k"]), knn_classify))
    id_datasets = own if plan["ood_id"] == "in-domain" and own else datasets
    external = tuple(plan.get("ood_datasets", ()))
    if plan["scorers"] and len(datasets) + len(external) > 1:

        def ood(stores, config: OODConfig):
            import polars as pl

            tables = []
            for id_dataset in config.id_datasets:  # OOD: every dataset outside the training set
                others = tuple(d for d in datasets if d != id_dataset and d not in own)
                others += external
                if others:
                    pair = dataclasses.replace(
                        config, id_datasets=(id_dataset,), ood_datasets=others
                    )
                    tables.append(evaluate_ood(stores, pair))
            return pl.concat(tables) if tables else None

        steps.append(
            (
                "ood",
                lambda: OODConfig(
                    id_datasets=id_datasets,
                    scorers=tuple(plan["scorers"]),
                    scorer_params=plan["params"],
                    ood_splits=plan["ood_splits"],
                ),
                ood,
            )
        )
    for name, make_config, evaluate in steps:
        out = folder / f"{name}.parquet"
        if out.is_file():
            continue
        config = make_config()
        table = evaluate([store], config)
        if table is not None:
            write_table(table, out, config, [store])
