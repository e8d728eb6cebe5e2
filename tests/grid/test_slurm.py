"""The grid on a real one-node SLURM (``tests/slurm_cluster.py``), as the README runs it on
a CPU-only cluster: submission, a cancel before a task starts, ``grid status`` and
``--wait`` after it, a re-run that submits only the unfinished cell, requeue and
preemption, a GPU request, and a request the node can never give. Skipped where the
daemons cannot start (not installed, not root)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time

import pytest
from slurm_cluster import Cluster, missing
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.grid import collect, expand, parse_grid, status
from embedkit.grid.cells import read_record
from embedkit.grid.scheduler import Job, job_states

GRID = """
name = "slurm-mini"
[pretrain]
methods = ["simclr", "supervised"]
datasets = ["demo-texture"]
backbones = ["resnet18"]
inits = ["random"]
sizes = [28]
epochs = 1
batch_size = 100
[evaluate]
datasets = ["demo-texture"]
label_fractions = [1.0]
seeds = [0]
knn = false
scorers = ["knn"]
"""


def _cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


def _one_cell(tmp_path, run, name: str, epochs: int, *options: str):
    """Submit a one-cell grid of SimCLR for ``epochs``; its output folder, cell and job."""
    longer = GRID.replace('"slurm-mini"', f'"slurm-{name}"')
    longer = longer.replace("epochs = 1", f"epochs = {epochs}")
    longer = longer.replace("batch_size = 100", "batch_size = 50")  # long enough to catch
    longer = longer.replace('["simclr", "supervised"]', '["simclr"]')
    grid = tmp_path / f"{name}.toml"
    grid.write_text(longer)
    out = tmp_path / name
    args = [grid if a == tmp_path / "grid.toml" else a for a in run]
    args = [out if a == tmp_path / "out" else a for a in args]
    code, output = _cli(*args, *options)
    assert code == 0, output
    (cell,) = expand(parse_grid(longer))
    return out, cell, read_record(out, cell.id)["job_id"]


def _epochs_done(out, cell) -> int:
    try:
        return json.loads((out / "runs" / cell.encoder_id / "run.json").read_text())["epochs_done"]
    except (OSError, ValueError, KeyError):
        return 0


def _steps(out, cell) -> list[int]:
    lines = (out / "runs" / cell.encoder_id / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


def _interrupted_after_first_epoch(cluster, tmp_path, run, name, interrupt) -> None:
    """A one-cell grid of 8 epochs whose job gets ``interrupt JOB`` after its first
    checkpoint: the cell ends done on a second attempt whose steps follow the first's."""
    out, cell, job = _one_cell(tmp_path, run, name, 8)
    deadline = time.time() + 300
    while _epochs_done(out, cell) < 1:
        assert time.time() < deadline, cluster.run("squeue", check=False)
        time.sleep(0.5)
    cluster.run(*interrupt, job)
    cluster.wait_idle()
    record = read_record(out, cell.id)
    assert record["state"] == "done" and record["attempts"] == 2, (name, record)
    assert _steps(out, cell) == list(range(8 * (1200 // 50))), name  # continued, not redone


def _time_limited(cluster, tmp_path, run) -> None:
    """A cell far longer than its 3-minute limit (signalled 45 s before the end): SLURM's
    limit ends the first attempt, which is requeued and continues from its checkpoint.
    Stopped once the second attempt has saved an epoch: the test's time does not depend
    on the machine's speed."""
    out, cell, job = _one_cell(tmp_path, run, "limit", 500, "--time-min", "3")
    deadline, first = time.time() + 600, None
    while first is None or _epochs_done(out, cell) <= first:
        assert time.time() < deadline, (read_record(out, cell.id), cluster.run("squeue"))
        record = read_record(out, cell.id)
        if first is None and record.get("attempts", 0) >= 2:
            first = _epochs_done(out, cell)  # what the first attempt saved
            assert first >= 1, record
        time.sleep(1)
    cluster.run("scancel", job)
    cluster.wait_idle()
    steps = _steps(out, cell)
    assert read_record(out, cell.id)["attempts"] == 2
    assert steps == list(range(len(steps))) and len(steps) > first * (1200 // 50)


@pytest.mark.slow
@pytest.mark.skipif(missing() is not None, reason=f"no SLURM here: {missing()}")
def test_the_readme_commands_on_a_cpu_only_cluster(tmp_path, data_root, monkeypatch):
    cluster = Cluster(tmp_path / "slurm").start()
    try:
        for name, value in cluster.env.items():
            monkeypatch.setenv(name, value)
        grid = tmp_path / "grid.toml"
        grid.write_text(GRID)
        out = tmp_path / "out"
        run = ["grid", "run", grid, "--output", out, "--executor", "slurm",
               "--gpus-per-node", "0", "--jobs", "1", "--data-root", data_root]  # fmt: skip
        # --wait in a process of its own, while the second task is cancelled before it starts
        waiting = subprocess.Popen(
            [sys.executable, "-m", "embedkit.cli.main", *map(str, run), "--wait"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        first, second = expand(parse_grid(GRID))
        deadline = time.time() + 120
        while not read_record(out, second.id).get("job_id"):
            assert time.time() < deadline and waiting.poll() is None, waiting.stdout.read()
            time.sleep(0.5)
        array = read_record(out, first.id)["job_id"].split("_")[0]
        assert read_record(out, first.id)["job_id"] == f"{array}_0"
        assert read_record(out, second.id)["job_id"] == f"{array}_1"
        # one task at a time (--jobs 1): the second waits; cancel it by the id it records
        assert "PENDING" in cluster.run("squeue", "-h", "-r", "-j", f"{array}_1", "-o", "%T")
        cluster.run("scancel", f"{array}_1")
        output, _ = waiting.communicate(timeout=300)
        assert waiting.returncode == 1, output  # the wait ended; not every cell is done
        assert f"as array job(s) {array}" in output and "1 done, 1 cancelled" in output, output
        states = dict(status(out).select("cell", "state").iter_rows())
        assert states == {first.id: "done", second.id: "cancelled"}, status(out)
        code, output = _cli("grid", "status", "--output", out)
        assert code == 0 and "cancelled" in output
        # squeue no longer lists it. Whether sacct knows it depends on the scheduler's timing:
        # Slurm 22.05's accounting keeps no record of an array task cancelled before it split
        # off the pending array (submitit's own wait would ask sacct for ever), and records
        # CANCELLED once it has (seen in CI). Either way the cell reads cancelled, and says so.
        said = re.search(rf"its SLURM job {array}_1 ended \((\w+)\) before it started", output)
        assert said and said.group(1) in ("gone", "CANCELLED"), output
        accounted = cluster.run("sacct", "-n", "-X", "-P", "-j", f"{array}_1", "-o", "State")
        if said.group(1) == "gone":
            assert accounted.strip() == "", accounted
        else:  # "CANCELLED by <uid>"
            assert accounted.strip().startswith("CANCELLED"), accounted
        # the first task's record is there, and it is where job_states reads ended jobs
        assert job_states([f"{array}_0"]) == {f"{array}_0": Job("COMPLETED")}

        code, output = _cli(*run, "--wait")  # submits only the unfinished cell
        assert code == 0 and "submitted 1 cells" in output and "2 done" in output, output
        table = status(out)
        assert table["state"].to_list() == ["done", "done"], table
        assert read_record(out, first.id)["attempts"] == 1  # never redone
        collected = collect(out)
        assert collected.tables["probe"]["encoder"].n_unique() == 2

        # a running cell requeued by scontrol, or preempted (USR2, as SLURM signals before a
        # time limit or a preemption), continues from its last checkpoint
        for name, interrupt in (
            ("requeue", ["scontrol", "requeue"]),
            ("preempt", ["scancel", "--signal=USR2"]),
        ):
            _interrupted_after_first_epoch(cluster, tmp_path, run, name, interrupt)

        # a real time limit ends an attempt, and the next continues from its checkpoint
        _time_limited(cluster, tmp_path, run)

        # a GPU cluster's request (--gpus-per-node 1, the default) is accepted and runs
        gpu_grid = GRID.replace('"slurm-mini"', '"slurm-gpu"')
        grid.write_text(gpu_grid.replace('["simclr", "supervised"]', '["simclr"]'))
        out = tmp_path / "gpu"
        gpu_run = [out if a == tmp_path / "out" else a for a in run]
        gpu_run[gpu_run.index("--gpus-per-node") + 1] = "1"
        gpu_run += ["--cpus-per-task", "2"]  # this node has 2 CPUs, not a GPU node's 4+
        code, output = _cli(*gpu_run)
        assert code == 0, output
        cluster.wait_idle(timeout=300)  # a request the node cannot give would pend for ever
        assert status(out)["state"].to_list() == ["done"]
        script = next((out / "slurm").rglob("*_submission.sh")).read_text()
        assert "#SBATCH --gpus-per-node=1" in script and "#SBATCH --cpus-per-task=2" in script

        # more CPUs a task than the node has: SLURM accepts the array and keeps it pending
        # (PartitionConfig) for ever; the cell reads blocked and --wait gives up in one line
        out = tmp_path / "big"
        big_run = [out if a == tmp_path / "out" else a for a in run]
        big_run += ["--cpus-per-task", str(os.cpu_count() + 2), "--wait"]
        code, output = _cli(*big_run)
        assert code == 2 and "cannot start (PartitionConfig)" in output, output
        assert "Traceback" not in output
        assert set(status(out)["state"]) == {"blocked"}
        code, output = _cli(*big_run[:-1])  # a re-run does not submit it twice
        assert code == 0 and "submitted 0 cells" in output, output
        for cell_id in status(out)["cell"]:
            cluster.run("scancel", read_record(out, cell_id)["job_id"])
        cluster.wait_idle()
        assert set(status(out)["state"]) == {"cancelled"}
    finally:
        cluster.stop()
        time.sleep(1)
