"""The grid on a real one-node SLURM (``tests/slurm_cluster.py``), as the README runs it on
a CPU-only cluster: submission, a cancel before a task starts, ``grid status`` after it,
and a re-run that submits only the unfinished cell. Skipped where the daemons cannot start
(not installed, not root)."""

from __future__ import annotations

import json
import re
import time

import pytest
from slurm_cluster import Cluster, missing
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.grid import collect, expand, parse_grid, status
from embedkit.grid.cells import read_record

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


def _interrupted_after_first_epoch(cluster, tmp_path, run, name, interrupt) -> None:
    """A one-cell grid of 8 epochs whose job gets ``interrupt JOB`` after its first
    checkpoint: the cell ends done on a second attempt whose steps follow the first's."""
    longer = GRID.replace('"slurm-mini"', f'"slurm-{name}"').replace("epochs = 1", "epochs = 8")
    longer = longer.replace("batch_size = 100", "batch_size = 50")  # long enough to catch
    longer = longer.replace('["simclr", "supervised"]', '["simclr"]')
    grid = tmp_path / f"{name}.toml"
    grid.write_text(longer)
    out = tmp_path / name
    args = [grid if a == tmp_path / "grid.toml" else a for a in run]
    code, output = _cli(*[out if a == tmp_path / "out" else a for a in args])
    assert code == 0, output
    (cell,) = expand(parse_grid(longer))
    job = read_record(out, cell.id)["job_id"]
    run_json = out / "runs" / cell.encoder_id / "run.json"
    deadline = time.time() + 300
    while not (run_json.is_file() and json.loads(run_json.read_text())["epochs_done"] >= 1):
        assert time.time() < deadline, cluster.run("squeue", check=False)
        time.sleep(0.5)
    cluster.run(*interrupt, job)
    cluster.wait_idle()
    record = read_record(out, cell.id)
    assert record["state"] == "done" and record["attempts"] == 2, (name, record)
    lines = (out / "runs" / cell.encoder_id / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines]
    assert steps == list(range(8 * (1200 // 50))), name  # continued, not redone


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
        code, output = _cli(*run)
        assert code == 0, output
        array = re.search(r"as array job\(s\) (\d+)", output).group(1)
        first, second = expand(parse_grid(GRID))
        assert read_record(out, first.id)["job_id"] == f"{array}_0"
        assert read_record(out, second.id)["job_id"] == f"{array}_1"
        # one task at a time (--jobs 1): the second waits; cancel it by the id it records
        assert "PENDING" in cluster.run("squeue", "-h", "-r", "-j", f"{array}_1", "-o", "%T")
        cluster.run("scancel", f"{array}_1")
        cluster.wait_idle()
        states = dict(status(out).select("cell", "state").iter_rows())
        assert states == {first.id: "done", second.id: "cancelled"}, status(out)
        code, output = _cli("grid", "status", "--output", out)
        assert code == 0 and "cancelled" in output
        # no accounting daemon: sacct says so, and squeue no longer lists the task
        assert f"its SLURM job {array}_1 ended (gone) before it started" in output

        code, output = _cli(*run)  # submits only the unfinished cell
        assert code == 0 and "submitted 1 cells" in output, output
        cluster.wait_idle()  # (not --wait: a task that never starts would hang the suite)
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
    finally:
        cluster.stop()
        time.sleep(1)
