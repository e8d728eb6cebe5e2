"""The CLI end to end on tiny data, and its handling of bad input."""

import polars as pl
import pytest
import torch
from typer.testing import CliRunner

from embedkit.cli.main import app

runner = CliRunner()


def _invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.slow
def test_pretrain_embed_evaluate(tmp_path, data_root):
    run = tmp_path / "run"
    result = _invoke(
        "pretrain",
        "--output",
        run,
        "--dataset",
        "demo-texture",
        "--epochs",
        1,
        "--batch-size",
        100,
        "--device",
        "cpu",
        "--data-root",
        data_root,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "embedkit embed --run" in result.output
    store = tmp_path / "s.zarr"
    result = _invoke(
        "embed",
        "--run",
        run,
        "--store",
        store,
        "--dataset",
        "demo-texture,demo-med",
        "--data-root",
        data_root,
        "--device",
        "cpu",
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "demo-med" in result.output and "simclr/resnet18" in result.output
    result = _invoke(
        "probe",
        "--store",
        store,
        "--dataset",
        "demo-med",
        "--label-fraction",
        "0.1,1",
        "--seeds",
        "0,1",
        "--out",
        tmp_path / "p.parquet",
    )
    assert result.exit_code == 0, result.output
    (full,) = [line for line in result.output.splitlines() if "| 1.000 " in line]
    assert full.count("| - ") == 3  # one seed at 100 %: "-" for each metric's interval
    table = pl.read_parquet(tmp_path / "p.parquet")
    assert table["label_fraction"].to_list() == [0.1, 0.1, 1.0]
    assert (tmp_path / "p.json").is_file()
    result = _invoke("knn", "--store", store, "--out", tmp_path / "k.parquet")
    assert result.exit_code == 0, result.output
    assert sorted(pl.read_parquet(tmp_path / "k.parquet")["dataset"]) == [
        "demo-med",
        "demo-texture",
    ]
    result = _invoke("ood", "--store", store, "--id", "demo-med", "--out", tmp_path / "o.parquet")
    assert result.exit_code == 0, result.output
    ood = pl.read_parquet(tmp_path / "o.parquet")
    assert ood.select("id_dataset", "ood_dataset", "scorer").rows() == [
        ("demo-med", "demo-texture", "knn")
    ]
    assert {"auroc", "fpr95", "aupr_in", "aupr_out", "n_id", "n_ood", "params"} <= set(ood.columns)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["embed", "--store", "{tmp}/s.zarr", "--dataset", "pathmnst"], "did you mean pathmnist"),
        (
            ["embed", "--store", "{tmp}/s.zarr", "--dataset", "dermamnist", "--data-root", "{tmp}"],
            "dermamnist.npz or dermamnist_28.npz not found",
        ),
        (["embed", "--store", "{tmp}/s.zarr", "--size", "32"], "unsupported image size 32"),
        (["embed", "--store", "{tmp}/s.zarr", "--data-root", "{tmp}"], "none of the 12 MedMNIST"),
        (["pretrain", "--output", "{tmp}/r", "--method", "byoll"], "unknown method 'byoll'"),
        (
            ["pretrain", "--output", "{tmp}/r", "--param", "temprature=0.1"],
            "no parameter temprature",
        ),
        (["pretrain", "--output", "{tmp}/r", "--param", "temperature"], "NAME=VALUE"),
        (
            ["pretrain", "--output", "{tmp}/r", "--backbone", "vit_small", "--patch-size", "8"],
            "28 px images do not split into 8 px patches",
        ),
        (["quickstart", "--output", "{tmp}/qs", "--size", "32"], "unsupported image size 32"),
        (["probe", "--store", "{tmp}/none.zarr"], "does not exist"),
        (["probe", "--store", "{store}", "--label-fraction", "1.5"], "outside (0, 1]"),
        (["probe", "--store", "{store}", "--label-fraction", "0"], "outside (0, 1]"),
        (["probe", "--store", "{store}", "--dataset", "pathmnist"], "'pathmnist' is not in store"),
        (["ood", "--store", "{store}", "--scorer", "knn,odin"], "unknown scorer 'odin'"),
        (["ood", "--store", "{store}", "--scorer", "{tmp}/none.py:Score"], "does not exist"),
        (["ood", "--store", "{store}", "--param", "knn.k"], "SCORER.NAME=VALUE"),
        (["ood", "--store", "{store}", "--ood-splits", "val"], "'test' or 'all'"),
        (["probe", "--store", "{store}", "--protocol", "adam"], "unknown probe protocol"),
        (["transfer", "--store", "{store}", "--metric", "f1"], "unknown metric 'f1'"),
        pytest.param(
            ["embed", "--store", "{tmp}/s.zarr", "--device", "cuda:7"],
            "no CUDA GPU is visible",
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible here"),
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, demo_store, args, message):
    args = [a.format(tmp=tmp_path, store=demo_store.path) for a in args]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1]
    assert "Traceback" not in result.output + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written


def test_debug_shows_the_traceback(tmp_path):
    result = runner.invoke(app, ["probe", "--store", str(tmp_path / "none.zarr"), "--debug"])
    assert result.exit_code != 0 and result.exc_info is not None
    assert type(result.exception).__name__ == "StoreError"


def test_help_lists_registry_choices():
    result = _invoke("pretrain", "--help")
    assert "simclr" in result.output and "resnet50" in result.output
    assert "28, 64, 128, 224" in result.output
    assert "knn" in _invoke("ood", "--help").output


def _commands(group, path=()):
    for name, command in group.commands.items():
        if getattr(command, "hidden", False):
            continue
        if hasattr(command, "commands"):
            yield from _commands(command, (*path, name))
        else:
            yield (*path, name), command


def test_every_visible_option_has_help_and_h_is_an_alias():
    import typer.main

    root = typer.main.get_command(app)
    commands = list(_commands(root))
    assert len(commands) >= 15
    for path, command in commands:
        for param in command.params:
            if param.param_type_name == "option" and not param.hidden:
                assert param.help, f"embedkit {' '.join(path)} {param.opts[0]} has no help text"
        short = runner.invoke(app, [*path, "-h"])
        assert short.exit_code == 0 and "Usage: embedkit" in short.output, path
    assert "-h, --help" in _invoke("-h").output


def test_store_ls_takes_store_like_the_other_commands(demo_store):
    by_option = _invoke("store", "ls", "--store", demo_store.path).output
    assert "random/resnet18" in by_option and "demo-texture" in by_option
    assert _invoke("store", "ls", demo_store.path).output == by_option  # old scripts
    result = runner.invoke(app, ["store", "ls"])
    assert result.exit_code == 2 and "name a store or a folder" in result.stderr


def test_embed_defaults_to_the_medmnist_datasets_present(tmp_path, caplog):
    import numpy as np

    arrays = {}
    for split, n in (("train", 20), ("val", 6), ("test", 8)):
        arrays[f"{split}_images"] = np.zeros((n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).reshape(-1, 1).astype(np.uint8)
    np.savez(tmp_path / "breastmnist.npz", **arrays)
    result = runner.invoke(
        app,
        [
            "embed",
            "--store",
            str(tmp_path / "s.zarr"),
            "--data-root",
            str(tmp_path),
            "--device",
            "cpu",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "missing at 28 px: pathmnist, chestmnist, dermamnist" in caplog.text
    from embedkit.store import EmbeddingStore

    assert EmbeddingStore(tmp_path / "s.zarr").datasets() == ["breastmnist"]


def test_report_shows_the_metric_transfer_was_run_with(tmp_path, demo_store):
    out = tmp_path / "transfer.parquet"
    _invoke(
        "transfer", "--store", demo_store.path, "--dataset", "demo-med", "--metric", "auc",
        "--out", out,
    )  # fmt: skip
    auc = pl.read_parquet(out)["auc"][0]
    _invoke("report", "--transfer", out, "--output", tmp_path / "r")
    text = (tmp_path / "r" / "report.md").read_text()
    assert "Probe auc of each encoder" in text and f"{auc:.3f}" in text


def test_methods_and_scorers_list_their_parameters():
    dino = _invoke("methods", "--method", "dino").output
    assert "| dino   | n_local " in dino and "number of local crops (6)." in dino
    assert "| dino   | teacher_temp " in dino
    everything = _invoke("methods").output
    assert all(f"| {name} " in everything for name in ("simclr", "vicreg", "supervised"))
    knn = _invoke("scorers", "--scorer", "knn").output
    assert "| knn    | k         | int  | 50 " in knn
    scorers = _invoke("scorers").output
    assert "| mahalanobis " in scorers and "| vim " in scorers and "| l2 " in scorers
    result = runner.invoke(app, ["scorers", "--scorer", "vimm"])
    assert result.exit_code == 2 and "did you mean vim?" in result.stderr
    assert "faiss" not in result.stderr  # other libraries' info lines stay quiet


def test_tables_export_as_csv_and_latex_beside_the_parquet(tmp_path, demo_store):
    out = tmp_path / "knn.parquet"
    _invoke("knn", "--store", demo_store.path, "--dataset", "demo-med", "--out", out,
            "--format", "parquet,csv,latex")  # fmt: skip
    table = pl.read_parquet(out)
    csv = pl.read_csv(out.with_suffix(".csv"))
    assert csv.columns == table.columns and csv["accuracy"].to_list() == table["accuracy"].to_list()
    tex = out.with_suffix(".tex").read_text()
    assert tex.startswith("\\begin{tabular}") and "\\midrule" in tex
    assert f"{table['accuracy'][0]:.3f}" in tex and "demo-med" in tex
    bad = runner.invoke(app, ["knn", "--store", str(demo_store.path), "--out",
                              str(tmp_path / "b.parquet"), "--format", "xlsx"])  # fmt: skip
    assert bad.exit_code == 2 and "unknown table format xlsx" in bad.stderr
    assert not (tmp_path / "b.parquet").exists()


def test_config_files_set_options_and_the_command_line_wins(tmp_path, demo_store):
    toml = tmp_path / "study.toml"
    toml.write_text(f'[knn]\nstore = "{demo_store.path}"\ndataset = "demo-med"\nk = 5\n')
    yaml = tmp_path / "study.yaml"
    yaml.write_text(f"store: [{demo_store.path}]\ndataset: demo-med\nk: 3\n")
    for config, extra, k in ((toml, [], 5), (toml, ["--k", "7"], 7), (yaml, [], 3)):
        out = tmp_path / f"knn{k}.parquet"
        _invoke("knn", "--config", config, "--out", out, *extra)
        assert pl.read_parquet(out)["k"].to_list() == [k]


@pytest.mark.slow
def test_a_runs_config_json_replays_it_exactly(tmp_path, tiny_run, data_root):
    import hashlib

    replay = tmp_path / "replay"
    _invoke("pretrain", "--config", tiny_run / "config.json", "--output", replay, "--no-progress")
    digest = [hashlib.sha256((r / "encoder.safetensors").read_bytes()).hexdigest()
              for r in (tiny_run, replay)]  # fmt: skip
    assert digest[0] == digest[1]  # same data, method, seed and schedule: the same weights


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("c.toml", "epochz = 3\n", "pretrain has no option epochz (it has accumulate,"),
        ("c.toml", "epochs = [\n", "cannot be read"),
        ("c.txt", "epochs: 3\n", "use a .toml, .yaml or .json file"),
        ("c.json", '{"pretrain": {}, "method_config": {}}', None),
        ("missing.toml", None, "does not exist"),
        ("latin1.toml", b"epochs = 3 # caf\xe9\n", "is not UTF-8 text (byte 16)"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, name, text, message):
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    command = "knn" if message is None else "pretrain"
    result = runner.invoke(app, [command, "--config", str(path), "--out" if command == "knn"
                                 else "--output", str(tmp_path / "x")])  # fmt: skip
    assert result.exit_code == 2
    expected = message or "is a run's config.json: use it with pretrain"
    assert result.stderr.startswith("error: ") and expected in result.stderr
    assert not (tmp_path / "x").exists()


def test_a_grid_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_bytes(b'name = "caf\xe9"\n')
    result = runner.invoke(app, ["grid", "plan", str(path)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert (
        result.stderr == f"error: grid file {path} is not UTF-8 text (byte 11): save it as UTF-8\n"
    )


def test_download_fetches_what_is_missing_and_datasets_says_how(tmp_path, monkeypatch):
    import embedkit.data.loading as loading

    fetched = []

    def fake_download(info, size, root):  # medmnist's downloader needs the network
        fetched.append((info.name, size))
        path = root / (f"{info.name}.npz" if size == 28 else f"{info.name}_{size}.npz")
        path.write_bytes(b"\0" * 2**20)
        return path

    monkeypatch.setattr(loading, "_download", fake_download)
    (tmp_path / "breastmnist.npz").write_bytes(b"\0" * 2**19)  # already there: kept
    listing = _invoke("datasets", "--data-root", tmp_path).output
    assert "embedkit download --dataset breastmnist --size 64,128,224" in listing
    out = _invoke(
        "download", "--dataset", "pneumoniamnist,breastmnist", "--size", "28,64",
        "--data-root", tmp_path,
    ).output  # fmt: skip
    assert fetched == [("pneumoniamnist", 28), ("pneumoniamnist", 64), ("breastmnist", 64)]
    assert out.count(" 1.000 ") == 3 and " 0.500 " in out  # sizes on disk, in MB
    for args, message in [
        (["--dataset", "demo-med"], "generated on use"),
        (["--size", "32"], "unsupported image size 32"),
        (["--dataset", "pathmnst"], "did you mean pathmnist"),
    ]:
        result = runner.invoke(app, ["download", "--data-root", str(tmp_path), *args])
        assert result.exit_code == 2 and message in result.stderr, result.stderr
