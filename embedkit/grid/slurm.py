"""The SLURM executor: one array task per cell through submitit.

A task that SLURM preempts, or whose time limit nears, is requeued by submitit (it calls
``CellTask.checkpoint``) and continues from the cell's checkpoints. Cells with several GPUs
run one task per GPU; Lightning Fabric reads SLURM's environment for the DDP set-up.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..utils import stamp
from .cells import Cell, write_record
from .execute import Resources, run_cell

log = logging.getLogger(__name__)


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
        loggers=resources.loggers,
    )
    job_tasks = [CellTask(str(output), c.to_json(), asdict(per_task)) for c in cells]
    with executor.batch():
        jobs = [executor.submit(task) for task in job_tasks]
    for cell, job in zip(cells, jobs, strict=True):
        write_record(output, cell, job_id=str(job.job_id), submitted=stamp()["created"])
    log.info("submitted %d array tasks (%s)", len(jobs), executor.cluster)
    return jobs
