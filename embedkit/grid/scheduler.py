"""SLURM's view of a grid's submitted cells, so that ``grid status`` and ``grid run`` tell
the truth where a cell's own record cannot.

A cell's record says what the cell itself last wrote. Three things happen without the cell
writing anything: its task is cancelled before it starts (the record stays ``pending``); its
task is cancelled, preempted or killed on another node while it runs (the record stays
``running`` and the lock, written on another host, cannot be checked from here); and a new
attempt starts after a requeue (the record's time is the previous attempt's). ``squeue``
(and ``sacct`` where the cluster keeps accounting) answer for the jobs the records name.
Without either command (a grid run locally) the records are taken as they are.
"""

from __future__ import annotations

import datetime as dt
import getpass
import shutil
import socket
import subprocess
from collections.abc import Iterable
from typing import Any

# SLURM job states in which the job may still run: anything else has ended
LIVE = {"PENDING", "RUNNING", "CONFIGURING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"}
LIVE |= {"REQUEUE_HOLD", "REQUEUE_FED", "SIGNALING", "STAGE_OUT", "STOPPED"}


def _run(command: list[str]) -> str | None:
    """The command's output; None when it fails (no controller reachable, accounting off)."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def job_states(job_ids: Iterable[str]) -> dict[str, str] | None:
    """SLURM's state of each job id (``JOB`` or ``JOB_TASK``): ``squeue`` for the jobs in the
    queue, ``sacct`` for the others; a job neither knows is left out (it ended long ago).
    None where it cannot be known: no ``squeue`` (not a SLURM machine), ``squeue`` failing
    (its controller out of reach), or nothing to ask."""
    wanted = {str(j) for j in job_ids if j}
    if not wanted or shutil.which("squeue") is None:
        return None
    queue = _run(["squeue", "-h", "-r", "-u", getpass.getuser(), "-o", "%i %T"])
    if queue is None:
        return None
    states: dict[str, str] = {}
    for line in queue.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] in wanted:
            states[parts[0]] = parts[1]
    rest = sorted(wanted - set(states))
    if rest and shutil.which("sacct") is not None:
        listing = _run(["sacct", "-n", "-P", "-X", "-o", "JobID,State", "-j", ",".join(rest)])
        for line in (listing or "").splitlines():
            job, _, state = line.partition("|")
            if job in wanted and job not in states:
                states[job] = state.split()[0] if state else ""  # "CANCELLED by 0"
    return states


def with_scheduler(records: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``records`` (cell id -> ``cell_state``) corrected by SLURM's view of their jobs:

    - a ``pending`` cell whose job ended without starting it reads ``cancelled``;
    - a ``running`` cell on another host whose job is no longer live reads ``interrupted``
      (the next ``grid run`` continues it);
    - a ``running`` cell's time is that of its current attempt.
    """
    asked = [
        r["job_id"]
        for r in records.values()
        if r.get("job_id") and r.get("state") in ("pending", "running")
    ]
    states = job_states(asked)
    now = dt.datetime.now(dt.timezone.utc)
    here = socket.gethostname()
    out = {}
    for cell_id, record in records.items():
        record = dict(record)
        state = None if states is None else states.get(str(record.get("job_id")))
        ended = states is not None and state not in LIVE  # unknown to both: ended long ago
        if record.get("state") == "pending" and record.get("job_id") and ended:
            record["state"] = "cancelled"
            record["error"] = (
                f"its SLURM job {record['job_id']} ended ({state or 'gone'}) before it started"
            )
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
