"""SLURM's view of a grid's submitted cells, so that ``grid status`` and ``grid run`` tell
the truth where a cell's own record cannot.

A cell's record says what the cell itself last wrote. Three things happen without the cell
writing anything: its task is cancelled before it starts (the record stays ``pending``); its
task is cancelled, preempted or killed on another node while it runs (the record stays
``running`` and the lock, written on another host, cannot be checked from here); and a new
attempt starts after a requeue (the record's time is the previous attempt's). ``squeue``
(and ``sacct`` where the cluster keeps accounting) answer for the jobs the records name.
Without either command (a grid run locally) the records are taken as they are.

A queued job can also wait for ever: SLURM keeps a job whose request no node of its
partition can satisfy pending, with a reason (``PartitionConfig``, seen on a 2-CPU node
asked for 4 CPUs a task) rather than refusing it. Such a cell reads ``blocked`` with
squeue's reason, and ``grid run --wait`` gives up on it.
"""

from __future__ import annotations

import datetime as dt
import getpass
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from ..errors import RunError
from .cells import Cell, cell_state

log = logging.getLogger(__name__)

# SLURM job states in which the job may still run: anything else has ended
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
LIVE |= {"REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


# squeue's reasons for a pending job that no wait will start (SLURM's "JOB REASON CODES"):
# the request exceeds what the partition's nodes, time limit or the account's limits allow
NEVER_STARTS = {
    "PartitionConfig", "BadConstraints", "PartitionNodeLimit", "PartitionTimeLimit",
    "InvalidAccount", "InvalidQOS", "DependencyNeverSatisfied", "QOSMaxWallDurationPerJobLimit",
    "AssocMaxWallDurationPerJobLimit", "QOSMaxCpuPerJobLimit", "QOSMaxGRESPerJob",
    "QOSMaxMemoryPerJob", "QOSMaxNodePerJobLimit", "AssocMaxCpuPerJobLimit",
    "AssocMaxNodePerJobLimit", "AssocMaxGRESPerJob", "AssocMaxMemPerJob",
}  # fmt: skip


class Job(NamedTuple):
    """A job as SLURM reports it: its state and, while it pends, squeue's reason."""

    state: str
    reason: str = ""


def _run(command: list[str]) -> str | None:
    """The command's output; None when it fails (no controller reachable, accounting off)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def job_states(job_ids: Iterable[str]) -> dict[str, Job] | None:
    """SLURM's view of each job id (``JOB`` or ``JOB_TASK``): ``squeue`` for the jobs in the
    queue (with its reason), ``sacct`` for the others (which have ended, whatever state the
    accounting still gives them); a job neither knows is left out (it ended long ago). None
    where it cannot be known: no ``squeue`` (not a SLURM machine), ``squeue`` failing (its
    controller out of reach), or nothing to ask."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted or shutil.which("squeue") is None:
        return None
    queue = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T %r"])
    if queue is None:
        return None
    states: dict[str, Job] = {}
    for line in queue.splitlines():
        parts = line.split(maxsplit=2)
        if len(parts) >= 2 and parts[0] in wanted:
            reason = parts[2].strip() if len(parts) == 3 and parts[1] == "PENDING" else ""
            states[parts[0]] = Job(parts[1], reason)
    rest = sorted(wanted - set(states))
    if rest and shutil.which("sacct") is not None:
        listing = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)])
        for line in (listing or "").splitlines():
            job, _, state = line.partition("|")
            if job in wanted and job not in states:
                state = state.split()[0] if state else ""  # "CANCELLED by 0"
                # the queue, asked first, no longer holds it: a live state here is the
                # accounting's lag behind the controller (a pending job just cancelled
                # still read PENDING in sacct for a moment, seen in CI), so it ended: how,
                # the accounting does not know yet
                states[job] = Job("" if state in LIVE else state)
    return states


def with_scheduler(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``records`` (cell id -> ``cell_state``) corrected by SLURM's view of their jobs:

    - a ``pending`` cell whose job ended without starting it reads ``cancelled``;
    - a ``pending`` cell whose job waits for a reason no wait removes (``NEVER_STARTS``)
      reads ``blocked``, with the reason; one whose job is live reads ``queued``;
    - a ``running`` cell on another host whose job is no longer live reads ``interrupted``
      (the next ``grid run`` continues it); an ``interrupted`` one whose job is still live
      (requeued) reads ``queued``;
    - a ``running`` cell's time is that of its current attempt.
    """
    asked = [
        r["job_id"]
        for r in records.values()
        if r.get("job_id") and r.get("state") in ("pending", "running", "interrupted")
    ]
    states = job_states(asked)
    now = dt.datetime.now(dt.timezone.utc)
    here = socket.gethostname()
    out = {}
    for cell_id, record in records.items():
        record = dict(record)
        job = None if states is None else states.get(str(record.get("job_id")))
        state = job.state if job else None
        ended = states is not None and state not in LIVE  # unknown to both: ended long ago
        if record.get("state") == "pending" and record.get("job_id") and states is not None:
            if ended:
                record["state"] = "cancelled"
                ended_as = state or "gone"
                record["error"] = (
                    f"its SLURM job {record['job_id']} ended ({ended_as}) before it started"
                )
            elif job.reason in NEVER_STARTS:
                record["state"] = "blocked"
                record["error"] = (
                    f"its SLURM job {record['job_id']} cannot start ({job.reason}): the "
                    "partition cannot give what it asks (see --cpus-per-task, --mem-gb, "
                    f"--gpus-per-node, --time-min); `scancel {record['job_id']}`, then run "
                    "again with less"
                )
            else:
                record["state"] = "queued"
        elif record.get("state") == "interrupted" and state in LIVE:
            # killed on this host, and its job requeued: it runs again when its turn comes
            record["state"] = "queued"
            record["error"] = f"requeued as SLURM job {record['job_id']}"
        elif record.get("state") == "running":
            if record.get("host") not in (None, here) and record.get("job_id") and ended:
                record["state"] = "interrupted"
                record["error"] = f"its SLURM job {record['job_id']} ended ({state or 'gone'})"
            started = record.get("started")
            if started:
                record["duration_s"] = round(
                    (now - dt.datetime.fromisoformat(started)).total_seconds(), 1
                )
        out[cell_id] = record
    return out


# a cell in one of these states has nothing left to wait for
ENDED = ("done", "failed", "cancelled", "interrupted")


def wait_for_cells(output: Path, cells: list[Cell], submitted: list, poll_s: float = 5.0):
    """Until every cell of ``cells`` (submitted as ``submitted``) has ended, by the cells'
    records and SLURM's view of their jobs (``scheduler.with_scheduler``): done, failed,
    cancelled before it started, or interrupted. A requeued cell is waited for; a cell
    whose job can never start (``blocked``) ends the wait with a ``RunError``. Without
    ``squeue`` (submitit's local executor) the jobs are waited for instead."""
    if shutil.which("squeue") is None:
        for job in submitted:
            job.wait()
        return
    said = None
    while True:
        records = with_scheduler({cell.id: cell_state(output, cell.id) for cell in cells})
        blocked = [(c, records[c.id]) for c in cells if records[c.id]["state"] == "blocked"]
        if blocked:
            cell, record = blocked[0]
            others = (
                f"; {len(blocked) - 1} more cells are blocked (`embedkit grid status --output "
                f"{output}` lists their jobs)"
                if len(blocked) > 1
                else ""
            )
            raise RunError(f"cell {cell.id} ({cell.label}): {record['error']}{others}")
        counts: dict[str, int] = {}
        for record in records.values():
            counts[record["state"]] = counts.get(record["state"], 0) + 1
        summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
        if summary != said:
            log.info("waiting for %d cells: %s", len(cells), summary)
            said = summary
        if all(r["state"] in ENDED for r in records.values()):
            return
        time.sleep(poll_s)
