"""The SLURM executor: one array task per cell through submitit.

A task that SLURM preempts, or whose time limit nears, is requeued by submitit (it calls
``CellTask.checkpoint``) and continues from the cell's checkpoints. Cells with several GPUs
run one task per GPU; Lightning Fabric reads SLURM's environment for the DDP set-up.

Time limits: SLURM signals the task ``signal_delay_s`` before its limit (90 s, a quarter
of the limit for limits under 6 minutes, so that a short limit does not signal at once),
and the task is requeued for as long as each attempt saves progress (a checkpoint, an
embedded chunk, a result). An attempt that saved nothing before its limit ends the cell as
failed with the advice to raise ``--time-min``: requeueing it would repeat the same attempt
for ever. (submitit's own cap of 3 time-outs is lifted: a long cell with a short limit
needs more, and this rule ends the futile ones.)
"""

from __future__ import annotations

import contextlib
import io
import logging
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError, RunError
from ..utils import stamp
from .cells import Cell, cell_folder, read_record, run_folder, store_path, write_record
from .execute import Resources, run_cell

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SlurmOptions:
    """Where a SLURM array runs (``grid run --executor slurm``).

    Attributes:
        partition, account, qos: the usual sbatch options (None: the cluster's default).
        gpus_per_node: GPUs of each cell; the cell trains on all of them (DDP, one task per
            GPU, Lightning Fabric reads SLURM's environment). 0: a CPU-only cluster, the
            cell runs on the task's CPUs and no GPU (gres) is requested.
        nodes: nodes per cell.
        time_min: time limit per task; a task that reaches it is requeued and resumes.
        cpus_per_task: CPUs per task; 0 asks for 4 per GPU task, 2 on a CPU-only cluster
            (the augmentations run on the device and the data sits in memory, so a cell
            needs few).
        mem_gb: memory per node; 0 asks for none and takes the partition's default.
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
    cpus_per_task: int = 0
    mem_gb: float = 0
    parallel: int = 64
    sbatch: dict[str, str] = field(default_factory=dict)
    setup: tuple[str, ...] = ()


class CellTask:
    """The callable an array task runs: one cell, requeued from its checkpoint (submitit
    calls ``checkpoint`` when SLURM preempts the task or its time limit nears)."""

    def __init__(
        self,
        output: str,
        cell: dict[str, Any],
        resources: dict[str, Any],
        time_min: float | None = None,
    ) -> None:
        self.output, self.cell, self.resources = output, cell, resources
        self.time_min = time_min
        self._started: float | None = None
        self._saved: tuple | None = None
        self._futile = False

    def __call__(self) -> dict[str, Any]:
        logging.basicConfig(level=logging.INFO, format="embedkit: %(message)s")
        cell = Cell.from_json(self.cell)
        self._started, self._saved = time.time(), saved_progress(Path(self.output), cell)
        record = run_cell(Path(self.output), cell, Resources(**self.resources))
        if self._futile:  # the limit ended an attempt that saved nothing: say what to do
            record = write_record(
                Path(self.output),
                cell,
                state="failed",
                error=f"its time limit (--time-min {self.time_min:g}) ended an attempt that "
                "saved no progress (no checkpoint, chunk or result): run it again with a "
                "longer --time-min",
            )
        if record.get("state") == "failed":  # the task fails too: SLURM says FAILED
            raise RunError(f"cell {cell.id} ({cell.label}) failed: {record.get('error')}")
        return record

    def timed_out(self) -> bool:
        """Whether this attempt ran into its time limit rather than being preempted: SLURM
        signals ``signal_delay_s`` before the limit, up to a minute early (its resolution)."""
        if self.time_min is None or self._started is None:
            return False
        limit = self.time_min * 60
        return time.time() - self._started >= limit - signal_delay_s(self.time_min) - 75

    def checkpoint(self, *args, **kwargs):
        import submitit

        if self.timed_out():
            cell = Cell.from_json(self.cell)
            if saved_progress(Path(self.output), cell) == self._saved:
                log.warning("cell %s: time limit reached with no progress saved", cell.id)
                self._futile = True
                return None  # submitit does not requeue it
        return submitit.helpers.DelayedSubmission(
            CellTask(self.output, self.cell, self.resources, self.time_min)
        )


def signal_delay_s(time_min: float) -> int:
    """How long before the time limit SLURM signals a task: submitit's 90 s, a quarter of
    the limit for limits under 6 minutes (else a short limit would signal at once)."""
    return int(min(90, time_min * 15))


# what grows as logs rather than as saved progress
_LOGS = {"metrics.jsonl", "log.txt", "cell.json", ".lock", "error.txt"}


def saved_progress(output: Path, cell: Cell) -> tuple:
    """What the attempts of ``cell`` have saved that a new attempt would not redo: its
    stage, and the files of its pretraining run, store and results (size and time), logs
    and partial files left out."""
    files = []
    for folder in (
        run_folder(output, cell),
        store_path(output, cell),
        cell_folder(output, cell.id),
    ):
        if not folder.is_dir():
            continue
        for path in folder.rglob("*"):
            if path.name in _LOGS or path.suffix == ".partial" or not path.is_file():
                continue
            with contextlib.suppress(OSError):
                info = path.stat()
                files.append((str(path), info.st_size, info.st_mtime_ns))
    return read_record(output, cell.id).get("stage"), tuple(sorted(files))


def check_slurm_options(options: SlurmOptions) -> None:
    """Refuse resources no cluster can give, before anything is submitted."""
    for name in ("gpus_per_node", "cpus_per_task", "mem_gb"):
        if getattr(options, name) < 0:
            raise ConfigError(f"--{name.replace('_', '-')} must be 0 or more")
    for name in ("nodes", "time_min", "parallel"):
        if getattr(options, name) < 1:
            flag = "jobs" if name == "parallel" else name.replace("_", "-")
            raise ConfigError(f"--{flag} must be at least 1")


def submit_slurm(
    output: Path,
    cells: list[Cell],
    resources: Resources,
    options: SlurmOptions,
    cluster: str = "slurm",
) -> list:
    """Submit one array task per cell with submitit (``cluster``: ``slurm``, which needs
    ``sbatch`` on the PATH; ``local`` runs the same tasks as local subprocesses, for tests).

    Raises:
        ConfigError: no ``sbatch``, or ``sbatch`` refused the array (its message, and nothing
            of the submission left behind).
    """
    try:
        import submitit
    except ImportError:  # pragma: no cover
        raise ConfigError("the slurm executor needs submitit: pip install submitit") from None
    check_slurm_options(options)
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "--executor slurm needs SLURM's sbatch on the PATH and none was found: run "
            "`embedkit grid run` on a machine that submits to the cluster (a login node), "
            "or use --executor local"
        )
    if not cells:
        return []
    folder = output / "slurm"
    before = set(folder.rglob("*")) if folder.is_dir() else set()
    executor = submitit.AutoExecutor(  # CellTask.checkpoint ends futile requeues, not a count
        folder=str(folder / "%j"), cluster=cluster, slurm_max_num_timeout=10_000
    )
    gpus = options.gpus_per_node
    per_gpu = {"gpus_per_node": gpus} if gpus else {}
    memory = {"mem_gb": options.mem_gb} if options.mem_gb else {}
    executor.update_parameters(
        name="embedkit-grid",
        timeout_min=options.time_min,
        slurm_signal_delay_s=signal_delay_s(options.time_min),
        nodes=options.nodes,
        tasks_per_node=max(1, gpus),
        cpus_per_task=options.cpus_per_task or (4 if gpus else 2),
        **per_gpu,
        **memory,
        slurm_array_parallelism=options.parallel,
        slurm_partition=options.partition,
        slurm_account=options.account,
        slurm_qos=options.qos,
        slurm_setup=list(options.setup),
        slurm_additional_parameters=dict(options.sbatch),
    )
    on_slurm = executor.cluster == "slurm"
    per_task = Resources(
        # a CPU-only cluster: the cell trains on the task's CPUs, whatever the node has
        device="cpu" if gpus == 0 and resources.device == "auto" else resources.device,
        data_root=resources.data_root,
        devices=max(1, gpus) if on_slurm else 1,
        num_nodes=options.nodes if on_slurm else 1,
        loggers=resources.loggers,
    )
    job_tasks = [
        CellTask(str(output), c.to_json(), asdict(per_task), options.time_min) for c in cells
    ]
    try:  # submitit prints sbatch's stderr itself: it goes into the one-line error instead
        with contextlib.redirect_stderr(io.StringIO()), executor.batch():
            jobs = [executor.submit(task) for task in job_tasks]
    except submitit.core.utils.FailedJobError as exc:
        for path in sorted(set(folder.rglob("*")) - before, reverse=True):
            path.unlink() if path.is_file() else path.rmdir()
        reason = " ".join(str(exc).split())
        raise ConfigError(f"sbatch refused the array: {reason[:300]}") from None
    for cell, job in zip(cells, jobs, strict=True):
        write_record(output, cell, job_id=str(job.job_id), submitted=stamp()["created"])
    log.info("submitted %d array tasks (%s)", len(jobs), executor.cluster)
    return jobs
