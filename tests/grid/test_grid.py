"""The benchmark grid: grid files, plan, idempotent runs, resume, SLURM through submitit,
and the study's findings from collected tables."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import socket
import stat
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.errors import ConfigError, DataNotFoundError
from embedkit.grid import (
    Resources,
    SlurmOptions,
    collect,
    expand,
    load_grid,
    parse_grid,
    read_output,
    run_grid,
    status,
)
from embedkit.grid.cells import read_record, run_folder, write_record
from embedkit.grid.paper import finding_ssl_vs_random, paper_claims
from embedkit.grid.runner import prepare_output

runner = CliRunner()

MINI = """
name = "mini"
[pretrain]
methods = ["simclr"]
datasets = ["demo-texture"]
backbones = ["resnet18"]
inits = ["random"]
sizes = [28]
epochs = 2
batch_size = 64
[evaluate]
datasets = ["demo-texture", "demo-natural"]
label_fractions = [1.0]
seeds = [0]
knn = false
scorers = ["knn"]
"""


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    return result.exit_code, result.output


# --- grid files ---------------------------------------------------------------------------


def test_presets_parse_and_the_paper_grid_has_the_studys_cells():
    paper = load_grid(preset="paper")
    cells = expand(paper)
    # 9 methods x 16 training sets x 2 backbones x 3 inits, minus supervised on the 5
    # multi-domain sets, plus 3 baselines per backbone
    assert len(cells) == 9 * 16 * 2 * 3 - 5 * 2 * 3 + 3 * 2 == 840
    assert len(paper.evaluate.datasets) == 11 and "chestmnist" not in paper.evaluate.datasets
    vit_ssl = [c for c in cells if c.axes["backbone"] == "vit_small"]
    assert {c.encoder.get("init") or c.encoder["pretrain"]["init"] for c in vit_ssl} == {
        "random",
        "imagenet",
        "timm:dino",
    }
    assert len({c.id for c in cells}) == 840
    extended = expand(load_grid(preset="extended"))
    # the paper's 840 and 7 more methods x 16 sets x 3 inits, MAE and MSN on the ViT only
    assert len(extended) == 840 + 7 * 16 * 3 * 2 - 2 * 16 * 3 == 1416
    masked = [c for c in extended if c.axes.get("method") in ("mae", "msn")]
    assert {c.axes["backbone"] for c in masked} == {"vit_small"} and len(masked) == 96
    assert {c.id for c in cells} <= {c.id for c in extended}  # the paper's cells, unchanged
    demo = expand(load_grid(preset="demo"))
    assert [c.label for c in demo] == [
        "simclr/resnet18/random@demo-med",
        "simclr/resnet18/random@demo-med+demo-texture",
        "vicreg/resnet18/random@demo-med",
        "supervised/resnet18/random@demo-med",
        "random/resnet18",
    ]


def test_plan_of_the_paper_preset_counts_cells_and_cost():
    code, output = _cli("grid", "plan", "--preset", "paper")
    assert code == 0, output
    assert "grid 'paper': 840 cells (834 pretraining, 6 baselines)" in output
    hours = float(output.split("about ")[1].split(" GPU-hours")[0].replace(",", ""))
    assert 8_200 < hours < 8_400  # 8,290 in BENCHMARKS.md: 834 runs of 400 epochs at 64 px
    code, output = _cli("grid", "plan", "--preset", "paper", "--throughput", "1000")
    stated = float(output.split("about ")[1].split(" GPU-hours")[0].replace(",", ""))
    assert code == 0 and stated != hours and "(stated)" in output


@pytest.mark.slow
def test_the_plans_cost_is_image_epochs_and_extractions_over_the_rates():
    """Every cell of the paper grid: image-epochs are the pretraining images times the
    epochs, extractions every image of the evaluated datasets, and GPU-hours those over the
    training and forward rates (the H100 figure scaled by counted FLOPs, or a stated one)."""
    from embedkit.data import get_info
    from embedkit.grid.plan import (
        H100_RESNET50_28PX_FORWARD,
        TRAIN_COST_IN_FORWARDS,
        forward_flops,
        plan,
    )

    spec = load_grid(preset="paper")
    cells = {c.id: c for c in expand(spec)}
    table, totals = plan(spec)
    stated, stated_totals = plan(spec, throughput=1000.0)
    reference = forward_flops("resnet50", 28)
    flops = {
        key: forward_flops(*key)
        for key in {(r["backbone"], r["size"]) for r in table.rows(named=True)}
    }
    rows = zip(table.iter_rows(named=True), stated.iter_rows(named=True), strict=True)
    for row, stated_row in rows:
        cell = cells[row["cell"]]
        embedded = sum(sum(get_info(d).n_samples.values()) for d in cell.evaluate["datasets"])
        assert row["embed_images"] == embedded
        if cell.kind == "pretrain":
            n_train = sum(get_info(d).n_samples["train"] for d in cell.pretrain_datasets)
            assert row["image_epochs"] == n_train * cell.encoder["pretrain"]["epochs"]
        else:
            assert row["image_epochs"] == 0
        forward = H100_RESNET50_28PX_FORWARD * reference / flops[row["backbone"], row["size"]]
        expected = (row["image_epochs"] * TRAIN_COST_IN_FORWARDS + embedded) / forward / 3600
        assert row["gpu_hours"] == pytest.approx(expected, rel=1e-9)
        assert stated_row["gpu_hours"] == pytest.approx(
            row["image_epochs"] / 1000.0 / 3600 + embedded / forward / 3600, rel=1e-9
        )
    assert totals["gpu_hours"] == pytest.approx(table["gpu_hours"].sum(), rel=1e-12)
    assert stated_totals["throughput"] == "stated"


def test_a_changed_parameter_changes_only_its_cells():
    base = expand(parse_grid(MINI, "mini"))
    changed = expand(parse_grid(MINI.replace("epochs = 2", "epochs = 3"), "mini"))
    assert [c.kind for c in base] == ["pretrain"]
    assert base[0].id != changed[0].id
    vary = MINI.replace('methods = ["simclr"]', 'methods = ["simclr", "vicreg"]') + (
        "\n[pretrain.params.vicreg]\nhidden_dim = [256, 512]\n"
    ).replace("[evaluate]", "")
    cells = expand(parse_grid(vary.replace("[evaluate]\n", "[evaluate]\n"), "mini"))
    assert [c.label for c in cells] == [
        "simclr/resnet18/random@demo-texture",
        "vicreg/resnet18/random@demo-texture (vicreg.hidden_dim=256)",
        "vicreg/resnet18/random@demo-texture (vicreg.hidden_dim=512)",
    ]
    assert cells[0].id == base[0].id  # an added method leaves the other cells as they were


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (('name = "mini"', 'name = "mini"\nmethodz = 1'), "unknown key"),
        (('["simclr"]', '["simclr", "byoll"]'), "unknown method 'byoll'"),
        (
            ('["demo-texture"]\nbackbones', '["demo-med+demo-textur"]\nbackbones'),
            "unknown dataset 'demo-textur'",
        ),
        (('methods = ["simclr"]', "methods = []"), "pretrain.methods: an empty axis"),
        (("epochs = 2", "epoch = 2"), "pretrain.epoch: unknown key: did you mean 'epochs'?"),
        (("sizes = [28]", "sizes = [32]"), "unknown size '32'"),
        (('scorers = ["knn"]', 'scorers = ["odin"]'), "unknown scorer 'odin'"),
        (
            ('inits = ["random"]', 'inits = ["imagenet_ssl"]', "[inits]\nimagenet_ssl = {}"),
            "inits.imagenet_ssl: no init for backbone resnet18",
        ),
        (("epochs = 2", 'epochs = "two"'), "'two' is not of type int"),
        (('name = "mini"', ""), "give the grid a name"),
        (
            ("", "", '\n[pretrain.params.simclr]\ntemperature = "hot"\n'),
            "pretrain.params.simclr.temperature: --param simclr.temperature=hot: expected float",
        ),
        (
            ("", "", "\n[pretrain.params.simclr]\naugment = { minscale = 0.2 }\n"),
            "augment has no setting minscale",
        ),
        # ranges, at plan time rather than after a cell's costly stages (issue 31)
        (("epochs = 2", "epochs = -1"), "--epochs must be at least 1"),
        (("epochs = 2", "epochs = 2\nlr = -5"), "--lr must be positive, not -5"),
        (("batch_size = 64", "batch_size = 0"), "--batch-size 0 is too small for simclr"),
        (("knn = false", "knn = false\nknn_k = 0"), "evaluate.knn_k: must be at least 1"),
        (("knn = false", "knn = false\nbatch_size = 0"), "evaluate.batch_size: must be"),
        (("seeds = [0]", "seeds = [0, 0]"), "evaluate.seeds: 0 given twice"),
        (
            ('"demo-texture", "demo-natural"]', '"demo-natural", "demo-natural"]'),
            "evaluate.datasets: demo-natural given twice",
        ),
        (
            ("epochs = 2", 'epochs = 2\nexclude = [{ method = "simclr", multi_domain = true }]'),
            "pretrain.exclude: {'method': 'simclr', 'multi_domain': True} matches no cell",
        ),
        (
            ("epochs = 2", 'epochs = 2\nexclude = [{ method = "simclr" }]'),
            "the rules exclude every pretraining cell",
        ),
        (('inits = ["random"]', 'inits = ["x"]'), "inits: 'x' is neither random, imagenet"),
        (  # no bare names in baselines either
            ("", "", '\n[baselines]\ninits = ["imagenet1k"]\n'),
            "inits: 'imagenet1k' is neither random, imagenet, timm:TAG",
        ),
        (  # timm's weights do not fit the small-stem ResNet: refused before it runs
            ('inits = ["random"]', 'inits = ["imagenet"]', "", 'resnet18"]', 'resnet18_cifar"]'),
            "resnet18_cifar has a 3x3 stem that timm's imagenet weights do not fit",
        ),
    ],
)
def test_bad_grid_files_are_one_line(tmp_path, edit, message):
    grid = tmp_path / "grid.toml"
    old, new, *appended = edit
    text = MINI.replace(old, new, 1)
    if len(appended) == 3:  # a second replacement
        appended, (old, new) = appended[:1], appended[1:]
        text = text.replace(old, new, 1)
    grid.write_text(text + "".join(appended))
    code, output = _cli("grid", "plan", grid)
    assert code == 2, output
    lines = output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: grid ") and message in lines[0]


PLUGIN = """
import numpy as np


class Norm:
    def __init__(self, power: float = 2.0):
        self.power = power

    def fit(self, X, y=None):
        return self

    def score_samples(self, X):
        return -np.linalg.norm(X, ord=self.power, axis=1)
"""


@pytest.mark.parametrize(
    ("evaluate", "message"),
    [
        ('scorers = ["knn"]\n[evaluate.params.knn]\nkk = 3', "params.knn.kk: scorer knn has no"),
        ('scorers = ["knn"]\n[evaluate.params.knn]\nk = "x"', "params.knn.k=x: expected type int"),
        ('scorers = ["none.py:Norm"]', "scorer file .*none.py does not exist"),
        ('scorers = ["plugin.py:Nope"]', "plugin.py has no class 'Nope'"),
        (
            'scorers = ["plugin.py:Norm"]\n[evaluate.params."plugin.py:Norm"]\npowr = 1.0',
            "scorer plugin.py:Norm has no parameter powr",
        ),
    ],
)
def test_scorer_parameters_and_plugin_files_are_checked_at_plan(tmp_path, evaluate, message):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    (tmp_path / "g.toml").write_text(MINI.replace('scorers = ["knn"]', evaluate))
    code, output = _cli("grid", "plan", tmp_path / "g.toml")
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert re.search(message, output), output


def test_a_plugin_scorer_is_found_beside_the_grid_file_with_its_parameters(tmp_path):
    (tmp_path / "plugin.py").write_text(PLUGIN)
    text = MINI.replace(
        'scorers = ["knn"]', 'scorers = ["plugin.py:Norm"]\n[evaluate.params."plugin.py:Norm"]'
    )
    spec = parse_grid(text + "power = 1.0\n", "g", base=tmp_path)
    assert spec.evaluate.scorers == (f"{tmp_path.resolve() / 'plugin.py'}:Norm",)
    assert spec.evaluate.params == {"Norm": {"power": 1.0}}  # as the OOD evaluation keys them


def test_a_masking_method_on_a_resnet_is_refused_at_plan(tmp_path):
    (tmp_path / "g.toml").write_text(MINI.replace('["simclr"]', '["simclr", "mae"]'))
    code, output = _cli("grid", "plan", tmp_path / "g.toml")
    assert code == 2 and len(output.strip().splitlines()) == 1
    assert "mae masks patch tokens and needs a vision transformer, not resnet18" in output


def test_a_string_where_a_list_is_expected_is_one_value(tmp_path):
    spec = parse_grid(MINI + '[baselines]\ninits = "random"\n')
    assert spec.baselines == ("random",)  # not six baselines named r, a, n, d, o, m


def test_a_method_parameter_is_checked_against_the_method(tmp_path):
    with pytest.raises(ConfigError, match="pretrain.params.simclr.temp: unknown key"):
        parse_grid(MINI + "\n[pretrain.params.simclr]\ntemp = 0.1\n", "mini")


def test_an_output_folder_of_another_grid_is_refused(tmp_path, data_root):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "grid.json").write_text(json.dumps({"name": "paper"}))
    grid = tmp_path / "mini.toml"
    grid.write_text(MINI)
    code, output = _cli("grid", "run", grid, "--output", tmp_path / "out")
    assert code == 2 and "holds grid 'paper', not 'mini'" in output
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["grid.json"]


# --- running ------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_grid_end_to_end_then_nothing_to_redo_then_only_the_changed_cell(
    tmp_path, data_root, caplog
):
    caplog.set_level(logging.INFO, logger="embedkit")
    out = tmp_path / "demo"
    args = [
        "grid",
        "run",
        "--preset",
        "demo",
        "--output",
        out,
        "--device",
        "cpu",
        "--data-root",
        data_root,
    ]
    code, output = _cli(*args)
    assert code == 0, output
    assert "5 done" in output
    table = status(out)
    assert table["state"].to_list() == ["done"] * 5 and table["attempts"].to_list() == [1] * 5

    collected = collect(out)
    assert [f.name for f in collected.findings] == [
        "in_domain",
        "ranking",
        "initialisation",
        "backbone",
        "multi_domain",
        "ssl_vs_supervised",
        "data_fraction",
        "resolution",
        "transfer_modality",
    ]
    probe = collected.tables["probe"]
    for column in (
        "cell",
        "encoder",
        "kind",
        "method",
        "pretrain_dataset",
        "multi_domain",
        "backbone",
        "init",
        "size",
        "dataset",
        "label_fraction",
        "seed",
        "in_domain",
    ):
        assert column in probe.columns
    assert probe["encoder"].n_unique() == 5 and set(probe["kind"]) == {
        "ssl",
        "supervised",
        "baseline",
    }
    ood = collected.tables["ood"]
    simclr = ood.filter(pl.col("encoder") == "simclr/resnet18/random@demo-med")
    assert set(simclr["id_dataset"]) == {"demo-med"}
    assert set(simclr["ood_dataset"]) == {"demo-texture", "demo-natural"}
    multi = ood.filter(pl.col("pretrain_dataset") == "demo-med+demo-texture")
    assert set(multi["ood_dataset"]) == {"demo-natural"}  # never a training dataset
    sentences = {f.name: f.sentences for f in collected.findings}
    ranking = collected.findings[1].table.filter(pl.col("label_fraction") == 1.0)
    winner = ranking.sort("best_on", descending=True).row(0, named=True)
    assert f"{winner['method']} is best on 1 of 1 datasets" in " ".join(sentences["ranking"])
    assert "one initialisation (random)" in sentences["initialisation"][0]
    # one seed at 100 %: the best accuracy is given without an interval
    (full,) = [s for s in sentences["in_domain"] if s.startswith("At 100 % of the labels")]
    assert " ± - (" in full
    assert "one backbone (resnet18)" in sentences["backbone"][0]
    assert sentences["multi_domain"][0].startswith("Multi-modality training sets (1)")
    versus = collected.findings[5].table.filter(pl.col("label_fraction") == 1.0)
    wins = int(versus["ssl_wins"].sum())  # of 1 dataset
    assert f"supervised-from-random on {wins} of 1 datasets" in " ".join(
        sentences["ssl_vs_supervised"]
    )
    findings_md = (out / "results" / "findings.md").read_text()
    assert "5 of 5 cells done." in findings_md and "## 6. SSL vs supervised" in findings_md
    assert (out / "results" / "report" / "report.md").is_file()

    # the results page: computed from the same tables, the paper's claims point by point
    page = collect(out, report=False, page=tmp_path / "RESULTS.md").folder.parent
    text = (tmp_path / "RESULTS.md").read_text()
    assert page == out and "Generated by `embedkit grid collect --page` from 5 done cells" in text
    assert "3 datasets (demo-med, demo-natural, demo-texture)" in text
    claims = paper_claims(
        {f.name: f for f in collected.findings}, collected.tables["transfer"]
    ).to_dicts()
    assert [c["verdict"] for c in claims][0] == "not tested"  # no MoCo v3 in the demo grid
    assert claims[1]["verdict"] == ("agrees" if wins * 2 > 1 else "does not agree")
    assert claims[2]["verdict"] == "not tested"  # no single-modality multi-domain set
    gain = collected.findings[4].table["auroc_gain"].drop_nulls().mean()
    expected = "agrees" if gain > 0 else "does not agree"
    assert claims[3]["verdict"] == (
        expected if abs(gain) >= 0.01 else "no clear effect (within ±0.01)"
    )
    assert f"mean OOD AUROC change {gain:+.3f}" in claims[3]["here"]
    for claim in claims:
        assert claim["claim"] in text and claim["verdict"] in text
    versus_random = finding_ssl_vs_random(collected.tables["transfer"])
    # demo-texture is in-domain for the multi-domain SimCLR encoder
    assert versus_random.table["dataset"].unique().sort().to_list() == ["demo-med", "demo-texture"]
    assert versus_random.sentences[0] in text and "### 6. SSL vs supervised" in text

    started = {c: read_record(out, c)["started"] for c in table["cell"]}
    caplog.clear()
    code, output = _cli(*args)  # nothing to redo
    assert code == 0 and "0 of 5 cells to run" in caplog.text
    assert {c: read_record(out, c)["started"] for c in table["cell"]} == started

    changed = tmp_path / "demo.toml"
    text = load_grid(preset="demo").text.replace("hidden_dim = 512", "hidden_dim = 256")
    changed.write_text(text)
    caplog.clear()
    code, output = _cli(
        "grid", "run", changed, "--output", out, "--device", "cpu", "--data-root", data_root
    )
    assert code == 0 and "1 of 5 cells to run" in caplog.text
    after = status(out)
    new = set(after["cell"]) - set(table["cell"])
    assert len(new) == 1 and after.filter(pl.col("cell").is_in(list(new)))["label"][0].startswith(
        "vicreg/"
    )
    for cell in set(after["cell"]) & set(table["cell"]):
        assert read_record(out, cell)["started"] == started[cell]


@pytest.mark.slow
def test_a_killed_cell_continues_through_the_slurm_executor(
    tmp_path, data_root, interrupt_after_first_epoch
):
    spec = parse_grid(MINI, "mini")
    out = tmp_path / "mini"
    resources = Resources(device="cpu", data_root=str(data_root))
    with interrupt_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        run_grid(spec, out, resources)
    (cell,) = expand(spec)
    assert status(out)["state"].to_list() == ["pending"]
    run = run_folder(out, cell)
    first_epoch = (run / "metrics.jsonl").read_text()
    assert json.loads((run / "run.json").read_text())["epochs_done"] == 1

    # submitit's local executor: real subprocesses, the same code path as a cluster array
    jobs = run_grid(
        spec, out, resources, executor="slurm", slurm=SlurmOptions(gpus_per_node=0),
        slurm_cluster="local",
    )  # fmt: skip
    assert len(jobs) == 1 and jobs[0].result()["state"] == "done"
    assert (run / "metrics.jsonl").read_text().startswith(first_epoch)  # continued, not redone
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").open()]
    assert steps == sorted(set(steps))
    record = read_record(out, cell.id)
    assert record["state"] == "done" and record["attempts"] == 2 and record["job_id"]
    assert sorted(p.name for p in (out / "cells" / cell.id).glob("*.parquet")) == [
        "ood.parquet",
        "probe.parquet",
    ]


def test_the_sbatch_script_submitit_writes(tmp_path, monkeypatch, data_root):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "submitted.sh"
    for name, body in (
        ("srun", "#!/bin/sh\nexit 0\n"),
        ("sbatch", f'#!/bin/sh\ncp "$1" {captured}\necho "Submitted batch job 4242"\n'),
    ):
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    spec = parse_grid(
        MINI.replace('methods = ["simclr"]', 'methods = ["simclr", "vicreg"]'), "mini"
    )
    options = SlurmOptions(
        partition="gpu",
        account="lab",
        gpus_per_node=2,
        time_min=120,
        parallel=1,
        sbatch={"constraint": "a100"},
        setup=("module load cuda",),
    )
    jobs = run_grid(
        spec,
        tmp_path / "out",
        Resources(data_root=str(data_root)),
        executor="slurm",
        slurm=options,
        wait=False,
    )
    assert [job.job_id for job in jobs] == ["4242_0", "4242_1"]
    script = captured.read_text()
    for line in (
        "#SBATCH --array=0-1%1",
        "#SBATCH --partition=gpu",
        "#SBATCH --account=lab",
        "#SBATCH --gpus-per-node=2",
        "#SBATCH --ntasks-per-node=2",
        "#SBATCH --time=120",
        "#SBATCH --constraint=a100",
        "module load cuda",
        "#SBATCH --signal=USR2@90",
    ):
        assert line in script, line
    for cell in expand(spec):
        assert read_record(tmp_path / "out", cell.id)["job_id"].startswith("4242_")


def _fake_slurm(tmp_path, monkeypatch, sbatch: str | None) -> Path:
    """A PATH whose ``srun`` does nothing and whose ``sbatch`` runs ``sbatch`` (shell), or
    none at all; the submitted script is copied to the returned file."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    captured = tmp_path / "submitted.sh"
    scripts = {"srun": "#!/bin/sh\nexit 0\n"}
    if sbatch is not None:
        scripts["sbatch"] = f'#!/bin/sh\ncp "$1" {captured}\n{sbatch}\n'
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(stat.S_IRWXU)
    (bin_dir / "cp").symlink_to(shutil.which("cp"))
    # this folder alone: a SLURM installed on the machine must not answer instead
    monkeypatch.setenv("PATH", str(bin_dir))
    return captured


def test_a_cpu_only_cluster_asks_for_no_gpu_and_fitting_resources(tmp_path, monkeypatch, data_root):
    captured = _fake_slurm(tmp_path, monkeypatch, 'echo "Submitted batch job 77"')
    spec = parse_grid(MINI, "mini")
    options = SlurmOptions(gpus_per_node=0, parallel=2)
    jobs = run_grid(spec, tmp_path / "out", Resources(data_root=str(data_root)), "slurm",
                    slurm=options, wait=False)  # fmt: skip
    assert [job.job_id for job in jobs] == ["77"]  # one cell: a plain job, no array
    script = captured.read_text()
    assert "--gpus-per-node" not in script and "--gres" not in script
    assert "#SBATCH --cpus-per-task=2" in script and "#SBATCH --mem" not in script
    assert "#SBATCH --ntasks-per-node=1" in script
    task = jobs[0].submission().function  # the cell trains on the task's CPUs
    assert task.resources["device"] == "cpu" and task.resources["devices"] == 1
    sized = SlurmOptions(gpus_per_node=2, cpus_per_task=6, mem_gb=12)
    run_grid(spec, tmp_path / "out2", Resources(data_root=str(data_root)), "slurm",
             slurm=sized, wait=False)  # fmt: skip
    script = captured.read_text()
    for line in ("--gpus-per-node=2", "--cpus-per-task=6", "--mem=12GB", "--ntasks-per-node=2"):
        assert f"#SBATCH {line}" in script, line


@pytest.mark.parametrize(
    ("sbatch", "message"),
    [
        (None, "--executor slurm needs SLURM's sbatch on the PATH and none was found"),
        (
            'echo "sbatch: error: Invalid generic resource (gres) specification" >&2; exit 1',
            "sbatch refused the array: .*Invalid generic resource",
        ),
    ],
)
def test_no_sbatch_or_a_refusal_is_one_line_and_leaves_no_submission(
    tmp_path, monkeypatch, data_root, sbatch, message
):
    _fake_slurm(tmp_path, monkeypatch, sbatch)
    (tmp_path / "grid.toml").write_text(MINI)
    out = tmp_path / "out"
    code, output = _cli("grid", "run", tmp_path / "grid.toml", "--output", out,
                        "--executor", "slurm", "--data-root", data_root)  # fmt: skip
    assert code == 2 and len(output.strip().splitlines()) == 1, output
    assert re.search(message, output), output
    assert "Traceback" not in output
    assert not list((out / "slurm").rglob("*.pkl")) if (out / "slurm").exists() else True
    for cell in expand(parse_grid(MINI)):
        assert read_record(out, cell.id).get("job_id") is None  # nothing recorded as submitted


def test_status_asks_slurm_about_cells_their_records_cannot_tell(tmp_path, monkeypatch):
    """A cell cancelled before it started reads ``cancelled`` (and ``grid run`` submits it
    again); a cell whose lock was written on another node reads ``interrupted`` once its job
    has ended, ``running`` with its current attempt's time while the job runs; with no
    ``squeue`` (a local grid) the records stand as written."""
    import datetime as dt

    from embedkit.grid.cells import cell_folder
    from embedkit.grid.runner import _pending

    spec = parse_grid(MINI.replace('["simclr"]', '["simclr", "vicreg", "mocov2"]'), "mini")
    out = prepare_output(spec, tmp_path / "out")
    queued, cancelled, elsewhere = expand(spec)
    started = (dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=90)).isoformat()
    write_record(out, queued, state="pending", job_id="9_0")
    write_record(out, cancelled, state="pending", job_id="9_1")
    write_record(out, elsewhere, state="running", job_id="9_2", host="node7", pid=1,
                 started=started, duration_s=5000.0, attempts=2)  # fmt: skip
    (cell_folder(out, elsewhere.id) / ".lock").write_text(json.dumps({"pid": 1, "host": "node7"}))

    folders: list[Path] = []  # each call's PATH

    def states(squeue: str, sacct: str | None) -> dict[str, dict]:
        bin_dir = tmp_path / f"bin{len(folders)}"
        bin_dir.mkdir()
        folders.append(bin_dir)
        scripts = {"squeue": f"#!/bin/sh\nprintf '{squeue}'\n"}
        if sacct is not None:
            scripts["sacct"] = f"#!/bin/sh\nprintf '{sacct}'\n"
        for name, body in scripts.items():
            (bin_dir / name).write_text(body)
            (bin_dir / name).chmod(stat.S_IRWXU)
        monkeypatch.setenv("PATH", str(bin_dir))  # not a SLURM installed on the machine
        return {row["cell"]: row for row in status(out).iter_rows(named=True)}

    rows = states("9_0 PENDING\\n9_2 RUNNING\\n", "9_1|CANCELLED by 0\\n")
    assert rows[queued.id]["state"] == "queued"
    assert rows[cancelled.id]["state"] == "cancelled"
    assert "ended (CANCELLED) before it started" in rows[cancelled.id]["error"]
    assert rows[elsewhere.id]["state"] == "running"
    assert 85 <= rows[elsewhere.id]["time_s"] < 200  # this attempt's, not the last one's 5000
    # a re-run submits the cancelled cell again, never the one whose job still waits
    assert [c.id for c in _pending(out, expand(spec))] == [cancelled.id]

    rows = states("9_0 PENDING\\n", None)  # the job on node7 left the queue; no accounting
    assert rows[elsewhere.id]["state"] == "interrupted"
    assert "its SLURM job 9_2 ended (gone)" in rows[elsewhere.id]["error"]
    assert rows[cancelled.id]["state"] == "cancelled"

    # the accounting lags the queue: jobs squeue no longer lists, which sacct still reads as
    # live, have ended all the same
    rows = states("9_0 PENDING\\n", "9_1|PENDING\\n9_2|RUNNING\\n")
    assert rows[queued.id]["state"] == "queued"
    assert rows[cancelled.id]["state"] == "cancelled"
    assert "its SLURM job 9_1 ended (gone) before it started" in rows[cancelled.id]["error"]
    assert rows[elsewhere.id]["state"] == "interrupted"
    assert "its SLURM job 9_2 ended (gone)" in rows[elsewhere.id]["error"]

    (tmp_path / "empty").mkdir()
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # not a SLURM machine: as written
    rows = {row["cell"]: row for row in status(out).iter_rows(named=True)}
    assert [rows[c.id]["state"] for c in (queued, cancelled, elsewhere)] == [
        "pending",
        "pending",
        "running",
    ]
    states("", None)  # squeue failing (no controller reachable): as written too
    (folders[-1] / "squeue").write_text("#!/bin/sh\necho 'slurm_load_jobs error' >&2\nexit 1\n")
    rows = {row["cell"]: row for row in status(out).iter_rows(named=True)}
    assert [rows[c.id]["state"] for c in (queued, cancelled, elsewhere)] == [
        "pending",
        "pending",
        "running",
    ]


def test_a_job_no_wait_starts_is_blocked_and_ends_the_wait(tmp_path, monkeypatch):
    """squeue's reason for a pending job: ``PartitionConfig`` (more than the partition's
    nodes have) makes the cell ``blocked`` with advice, skipped by a re-run and fatal to
    ``--wait``; ``Priority`` only queues it. A cell killed on this host whose job SLURM
    requeued is waited for, not resubmitted."""
    from embedkit.errors import RunError
    from embedkit.grid.runner import _pending, count_states
    from embedkit.grid.scheduler import wait_for_cells

    spec = parse_grid(MINI.replace('["simclr"]', '["simclr", "vicreg", "mocov2"]'), "mini")
    out = prepare_output(spec, tmp_path / "out")
    cells = expand(spec)
    waiting, blocked, requeued = cells
    write_record(out, waiting, state="pending", job_id="9_0")
    write_record(out, blocked, state="pending", job_id="9_1")
    write_record(out, requeued, state="running", job_id="9_2", host=socket.gethostname(),
                 pid=2**22 + 1, started="2026-01-01T00:00:00+00:00")  # fmt: skip
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    squeue = bin_dir / "squeue"
    squeue.write_text(
        "#!/bin/sh\nprintf '9_0 PENDING Priority\\n9_1 PENDING PartitionConfig\\n"
        "9_2 PENDING BeginTime\\n'\n"
    )
    squeue.chmod(stat.S_IRWXU)
    monkeypatch.setenv("PATH", str(bin_dir))
    rows = {row["cell"]: row for row in status(out).iter_rows(named=True)}
    assert [rows[c.id]["state"] for c in cells] == ["queued", "blocked", "queued"]
    assert "job 9_1 cannot start (PartitionConfig)" in rows[blocked.id]["error"]
    assert "`scancel 9_1`" in rows[blocked.id]["error"]
    assert rows[requeued.id]["error"] == "requeued as SLURM job 9_2"
    assert count_states(status(out))["blocked"] == 1
    assert _pending(out, cells) == []  # nothing submitted twice
    with pytest.raises(RunError, match=r"cannot start \(PartitionConfig\)"):
        wait_for_cells(out, cells, [], poll_s=0.01)
    squeue.write_text(  # two blocked: the error names one and counts the other
        "#!/bin/sh\nprintf '9_0 PENDING PartitionConfig\\n9_1 PENDING PartitionConfig\\n'\n"
    )
    with pytest.raises(RunError, match=r"1 more cells are blocked \(`embedkit grid status"):
        wait_for_cells(out, cells, [], poll_s=0.01)
    # once every job has left the queue (no accounting: 'gone') the wait ends
    squeue.write_text("#!/bin/sh\n")
    wait_for_cells(out, cells, [], poll_s=0.01)
    states = [row["state"] for row in status(out).iter_rows(named=True)]
    assert states == ["cancelled", "cancelled", "interrupted"]


def test_a_failed_cell_fails_its_slurm_task(tmp_path, monkeypatch):
    from embedkit.errors import RunError
    from embedkit.grid import slurm

    cell = expand(parse_grid(MINI, "mini"))[0]
    monkeypatch.setattr(slurm, "run_cell", lambda *a: {"state": "failed", "error": "boom"})
    task = slurm.CellTask(str(tmp_path), cell.to_json(), {})
    with pytest.raises(RunError, match="failed: boom"):
        task()  # a non-zero exit: SLURM marks the task FAILED, not COMPLETED
    monkeypatch.setattr(slurm, "run_cell", lambda *a: {"state": "done"})
    assert task() == {"state": "done"}


def test_a_missing_weights_file_is_planned_but_not_run(tmp_path, data_root):
    """A weights file is looked for when the grid runs, not when it is planned (a preset
    names files the user fetches later); relative to the grid file; nothing is written."""
    grid = tmp_path / "grid.toml"
    grid.write_text(MINI.replace('inits = ["random"]', 'inits = ["weights/enc.safetensors"]', 1))
    code, output = _cli("grid", "plan", grid)
    assert code == 0, output
    code, output = _cli("grid", "run", grid, "--output", tmp_path / "out", "--data-root", data_root)
    assert code == 2 and "Traceback" not in output, output
    assert f"--init '{tmp_path / 'weights' / 'enc.safetensors'}' is neither" in output
    assert not (tmp_path / "out").exists()


def test_a_time_limit_requeues_while_attempts_save_progress(tmp_path, monkeypatch):
    """At its time limit a task is requeued if the attempt saved something (a checkpoint,
    not a log line); one that saved nothing ends the cell as failed with the advice to
    raise --time-min, instead of repeating the same attempt for ever. A preemption (the
    signal long before the limit) is always requeued."""
    import time

    import submitit

    from embedkit.errors import RunError
    from embedkit.grid import slurm

    out = tmp_path / "out"
    cell = expand(parse_grid(MINI, "mini"))[0]
    run = run_folder(out, cell)
    run.mkdir(parents=True)
    write_record(out, cell, state="running", stage="pretrain")
    assert slurm.signal_delay_s(24 * 60) == 90 and slurm.signal_delay_s(2) == 30
    task = slurm.CellTask(str(out), cell.to_json(), {}, time_min=2)

    def attempt(elapsed_s: float, saves: bool):
        task._started = time.time() - elapsed_s
        task._saved, task._futile = slurm.saved_progress(out, cell), False
        with (run / "metrics.jsonl").open("a") as f:
            f.write('{"step": 1}\n')  # a log grows in any attempt: not progress
        if saves:
            (run / "last.ckpt").write_bytes(os.urandom(64 + len(task._saved[1])))
        return task.checkpoint()

    assert isinstance(attempt(100, saves=True), submitit.helpers.DelayedSubmission)
    assert isinstance(attempt(5, saves=False), submitit.helpers.DelayedSubmission)  # preempted
    assert attempt(100, saves=False) is None and task._futile  # not requeued
    monkeypatch.setattr(slurm, "run_cell", lambda *a: attempt(100, saves=False) or {})
    with pytest.raises(RunError, match=r"time limit \(--time-min 2\) ended an attempt"):
        task()
    record = read_record(out, cell.id)
    assert record["state"] == "failed" and "longer --time-min" in record["error"]


def test_an_array_task_records_the_id_scancel_takes(monkeypatch):
    from embedkit.grid.execute import slurm_job_id

    monkeypatch.setenv("SLURM_JOB_ID", "105")
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "100")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "5")
    assert slurm_job_id() == "100_5"
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID")
    assert slurm_job_id() == "105"  # a plain job
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID"):
        monkeypatch.delenv(name)
    assert slurm_job_id() is None


@pytest.mark.slow
def test_failing_cells_are_recorded_and_the_others_go_on_in_parallel(tmp_path, data_root):
    grid = tmp_path / "broken.toml"
    broken = MINI.replace('methods = ["simclr"]', 'methods = ["simclr", "vicreg"]')
    broken = broken.replace('inits = ["random"]', 'inits = ["weights/bad.safetensors"]')
    broken = broken.replace('["demo-texture", "demo-natural"]', '["demo-texture"]')
    grid.write_text(broken + '\n[baselines]\ninits = ["random"]\n')
    (tmp_path / "weights").mkdir()  # there, so the grid runs; not weights, so cells fail
    (tmp_path / "weights" / "bad.safetensors").write_bytes(b"not a state dict")
    out = tmp_path / "out"
    code, output = _cli(
        "grid",
        "run",
        grid,
        "--output",
        out,
        "--jobs",
        "2",
        "--device",
        "cpu",
        "--data-root",
        data_root,
    )
    assert code == 1, output  # a grid with failed cells did not finish: not exit 0
    table = status(out)
    states = dict(zip(table["label"], table["state"], strict=True))
    assert states == {
        "simclr/resnet18/weights/bad.safetensors@demo-texture": "failed",
        "vicreg/resnet18/weights/bad.safetensors@demo-texture": "failed",
        "random/resnet18": "done",
    }
    errors = table.filter(pl.col("state") == "failed")["error"].to_list()
    assert all("bad.safetensors" in error for error in errors)
    for cell in table.filter(pl.col("state") == "failed")["cell"]:
        assert "Traceback" in (out / "cells" / cell / "error.txt").read_text()
    assert "1 done, 2 failed" in output
    collected = collect(out, report=False)
    assert sorted(label for label, state, _ in collected.missing) == [
        "simclr/resnet18/weights/bad.safetensors@demo-texture",
        "vicreg/resnet18/weights/bad.safetensors@demo-texture",
    ]
    findings = (out / "results" / "findings.md").read_text()
    assert "1 of 3 cells done." in findings and "bad.safetensors" in findings
    assert collected.tables["probe"]["encoder"].unique().to_list() == ["random/resnet18"]


# --- a partial data root --------------------------------------------------------------------


def test_datasets_absent_from_the_data_root_are_listed_and_skipped(tmp_path, data_root):
    from embedkit.grid.present import restrict_to_data

    spec = load_grid(preset="laptop")
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(DataNotFoundError, match="none of its pretraining datasets is in"):
        restrict_to_data(spec, root)
    (root / "pneumoniamnist.npz").write_bytes(b"")  # presence is all that is checked here
    (root / "retinamnist_28.npz").write_bytes(b"")
    kept, absent = restrict_to_data(spec, root)
    assert absent == ["breastmnist", "pathmnist_test_subset"]  # the external set too
    assert kept.pretrain["dataset"] == [
        "pneumoniamnist",
        "retinamnist",
        "pneumoniamnist+retinamnist",
    ]
    assert kept.evaluate.datasets == ("pneumoniamnist", "retinamnist")
    assert len(expand(kept)) == 3 * 3 + 2 + 1  # 3 SSL x 3 sets, supervised x 2, random
    code, output = _cli("grid", "plan", "--preset", "laptop", "--data-root", root)
    assert code == 0 and "absent from the data root: breastmnist, pathmnist_test_subset" in output
    assert "12 cells" in output
    code, output = _cli("grid", "plan", "--preset", "laptop")  # no root: the whole grid
    assert code == 0 and "19 cells" in output and "skipped" not in output
    # grid status and collect read the cells grid run made (the skipped list is recorded)
    prepare_output(kept, tmp_path / "out", absent)
    assert len(read_output(tmp_path / "out")[1]) == 12


@pytest.mark.slow
def test_external_ood_sets_are_embedded_and_scored_never_probed(tmp_path, data_root):
    """A test-only dataset of the user's (``evaluate.ood_datasets``) is OOD for every ID
    dataset; absent, it is skipped like any dataset; unused, cells keep their identity."""
    import shutil

    import numpy as np

    from embedkit.grid.cells import cell_folder
    from embedkit.grid.execute import run_cell
    from embedkit.grid.present import restrict_to_data

    root = tmp_path / "root"
    root.mkdir()
    for f in data_root.glob("demo-*.npz"):
        shutil.copy(f, root / f.name)
    with np.load(next(data_root.glob("demo-natural*.npz"))) as natural:
        np.savez(
            root / "ext.npz",
            test_images=natural["test_images"][:100],
            test_labels=natural["test_labels"][:100],
        )
    text = MINI.replace("knn = false", 'knn = false\nood_datasets = ["ext"]')
    text += '[baselines]\ninits = ["random"]\n'
    spec = parse_grid(text)
    assert spec.evaluate.ood_datasets == ("ext",)
    assert "ood_datasets" not in expand(parse_grid(MINI))[0].evaluate  # identities kept
    _, absent = restrict_to_data(spec, tmp_path)  # a root without it: skipped
    assert "ext" in absent
    kept, absent = restrict_to_data(spec, root)
    assert absent == []
    (baseline,) = [c for c in expand(kept) if c.kind == "baseline"]
    record = run_cell(tmp_path / "out", baseline, Resources(device="cpu", data_root=str(root)))
    assert record["state"] == "done", record.get("error")
    folder = cell_folder(tmp_path / "out", baseline.id)
    ood = pl.read_parquet(folder / "ood.parquet")
    assert set(ood["ood_dataset"]) == {"demo-natural", "demo-texture", "ext"}
    assert set(ood.filter(pl.col("ood_dataset") == "ext")["id_dataset"]) == {
        "demo-texture",
        "demo-natural",
    }
    assert "ext" not in set(pl.read_parquet(folder / "probe.parquet")["dataset"])
    with pytest.raises(ConfigError, match="external OOD sets are single datasets"):
        parse_grid(text.replace('["ext"]', '["demo-natural"]'))
    with pytest.raises(ConfigError, match="did you mean demo-natural"):
        parse_grid(text.replace('["ext"]', '["demo-naturel"]'))


@pytest.mark.slow
def test_the_data_fraction_is_an_axis_and_its_finding_is_computed(tmp_path, data_root):
    """``data_fraction = [0.25, 1.0]`` makes two cells per method, each pretrained on its
    share (recorded in the run's config.json); ``collect`` writes the data-fraction finding
    and the other findings read the full-data cells. A grid that leaves it at 1 keeps the
    identity of its cells."""
    assert "data_fraction" not in expand(parse_grid(MINI))[0].encoder["pretrain"]
    text = MINI.replace('methods = ["simclr"]', 'methods = ["simclr", "supervised"]')
    text = text.replace("epochs = 2", "epochs = 1\ndata_fraction = [0.25, 1.0]")
    text = text.replace(
        'datasets = ["demo-texture", "demo-natural"]', 'datasets = ["demo-texture"]'
    )
    text += '[baselines]\ninits = ["random"]\n'
    (tmp_path / "grid.toml").write_text(text)
    out = tmp_path / "out"
    code, output = _cli(
        "grid", "run", tmp_path / "grid.toml", "--output", out, "--device", "cpu",
        "--data-root", data_root,
    )  # fmt: skip
    assert code == 0, output
    cells = expand(parse_grid(text))
    assert sorted(c.label for c in cells if c.kind == "pretrain") == [
        "simclr/resnet18/random@demo-texture (data_fraction=0.25)",
        "simclr/resnet18/random@demo-texture (data_fraction=1.0)",
        "supervised/resnet18/random@demo-texture (data_fraction=0.25)",
        "supervised/resnet18/random@demo-texture (data_fraction=1.0)",
    ]
    recorded = [json.loads(p.read_text()) for p in (out / "runs").glob("*/config.json")]
    quarter = [r for r in recorded if r["pretrain"]["data_fraction"] == 0.25]
    assert len(recorded) == 4 and len(quarter) == 2
    assert all(r["n_train"] == 300 and r["n_train_split"] == 1200 for r in quarter)
    collected = collect(out)
    by_name = {f.name: f for f in collected.findings}
    fractions = by_name["data_fraction"].table
    assert fractions["data_fraction"].to_list() == [0.25, 1.0]
    assert fractions["supervised_auc"].null_count() == 0
    assert (
        "pretrained on 25 % / 100 % of the training images" in by_name["data_fraction"].sentences[0]
    )
    assert set(by_name["in_domain"].table["method"]) == {"simclr", "supervised"}
    assert by_name["in_domain"].table.height == 2  # the full-data cells only


def test_a_cell_finished_by_another_process_is_not_redone(tmp_path, monkeypatch):
    """Two `grid run`s list the same pending cell; the second takes the lock after the first
    finished it: it reads the state again under the lock and leaves the cell alone."""
    import embedkit.grid.execute as execute

    (cell,) = expand(parse_grid(MINI))
    out = tmp_path / "out"
    write_record(out, cell, state="done", attempts=1, finished="earlier")
    monkeypatch.setattr(execute, "_pretrain", lambda *a: pytest.fail("redone"))
    record = execute.run_cell(out, cell, Resources(device="cpu"))
    assert record["state"] == "done" and record["attempts"] == 1
    assert read_record(out, cell.id)["finished"] == "earlier"
