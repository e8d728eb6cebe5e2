"""Faults and bad input: full disks, locks, damaged checkpoints and stores, one-line errors.

The disk-full cases use a real size-limited tmpfs where this machine lets the test mount
one (as root), and inject ENOSPC where it cannot or where a fault must land mid-write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.embed import EmbedConfig, embed
from embedkit.errors import RunError, StoreError
from embedkit.lock import LOCK, FolderLock
from embedkit.pretrain import PretrainConfig, pretrain
from embedkit.runs import CHECKPOINT
from embedkit.store import EmbeddingStore, StoreWriter, verify_store

runner = CliRunner()
IDENTITY = {"name": "t/x", "method": "none", "backbone": "x", "weights_sha256": "5" * 64}


def _cli(*args):
    result = runner.invoke(app, [str(a) for a in args])
    lines = result.stderr.strip().splitlines()
    return result.exit_code, (lines[-1] if lines else ""), result.output + result.stderr


def _pretrain_args(output, data_root, *extra):
    return [
        "pretrain",
        "--output",
        output,
        "--dataset",
        "demo-texture",
        "--batch-size",
        "64",
        "--device",
        "cpu",
        "--data-root",
        data_root,
        "--no-progress",
        *extra,
    ]


def _embed_args(store, data_root, *extra):
    return [
        "embed",
        "--store",
        store,
        "--dataset",
        "demo-texture",
        "--device",
        "cpu",
        "--data-root",
        data_root,
        "--no-progress",
        *extra,
    ]


def _ood_args(store, out, scorer, *extra):
    return [
        "ood",
        "--store",
        store.path,
        "--id",
        "demo-med",
        "--scorer",
        scorer,
        "--out",
        out,
        *extra,
    ]


def _one_line_error(args, message):
    code, last, everything = _cli(*args)
    assert code == 2, everything
    assert last.startswith("error: ") and message in last, everything
    assert "Traceback" not in everything
    return last


def _tmpfs(folder: Path, options: str) -> Path:
    """Mount a tmpfs at ``folder``, or skip where this machine does not allow it."""
    folder.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)],
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(
            "cannot mount a tmpfs here (needs root); the injected-ENOSPC tests cover the "
            "same code paths"
        )
    return folder


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: real ENOSPC."""
    yield _tmpfs(tmp_path / "disk", "size=512k")
    subprocess.run(["umount", "-l", str(tmp_path / "disk")], check=False)


@pytest.fixture
def read_only_disk(tmp_path):
    """A read-only tmpfs: real EROFS, which root cannot bypass (unlike permission bits)."""
    yield _tmpfs(tmp_path / "ro", "ro,size=64m")
    subprocess.run(["umount", "-l", str(tmp_path / "ro")], check=False)


def _fill(folder: Path) -> None:
    fd = os.open(folder / "filler", os.O_CREAT | os.O_WRONLY)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


# --- locks -------------------------------------------------------------------------------


def test_a_full_disk_leaves_no_lock_and_says_so(small_disk):
    store = small_disk / "s.zarr"
    store.mkdir()
    _fill(small_disk)
    with pytest.raises(StoreError, match="no space left on the device") as caught:
        StoreWriter(store, IDENTITY)
    assert str(store) in str(caught.value)
    assert sorted(p.name for p in store.iterdir()) == []  # no 0-byte lock, no temp file


@pytest.mark.parametrize("content", ["", '{"pid": ', "\x00\x00"])
def test_an_empty_or_unreadable_lock_is_taken_over(tmp_path, content, caplog):
    store = tmp_path / "s.zarr"
    store.mkdir()
    (store / LOCK).write_text(content)  # what an older embedkit left on a full disk
    with StoreWriter(store, IDENTITY) as writer:
        assert json.loads((store / LOCK).read_text())["pid"] == os.getpid()
        writer.root.attrs["probe"] = 1
    assert "empty or unreadable lock" in caplog.text
    assert not (store / LOCK).exists()


def test_a_live_writer_is_named_and_a_dead_one_is_taken_over(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    with subprocess.Popen(["sleep", "30"]) as live:
        record = {"pid": live.pid, "host": socket.gethostname(), "created": "then"}
        (folder / LOCK).write_text(json.dumps(record))
        with pytest.raises(RunError, match=f"being written by process {live.pid} on "):
            FolderLock(folder, "run folder", RunError).acquire()
        live.kill()
    live.wait()
    with FolderLock(folder, "run folder", RunError) as lock:
        assert lock.held and json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (folder / LOCK).exists()


# --- pretraining run folders -------------------------------------------------------------


def _config(data_root, **overrides):
    base = {
        "dataset": "demo-texture",
        "epochs": 2,
        "batch_size": 64,
        "device": "cpu",
        "data_root": str(data_root),
    }
    return PretrainConfig(**{**base, **overrides})


@pytest.fixture
def interrupted_run(tmp_path, data_root, interrupt_after_first_epoch):
    """A run stopped after its first of two epochs (checkpoint written)."""
    with interrupt_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        pretrain(_config(data_root), tmp_path / "run", progress=False)
    assert (tmp_path / "run" / CHECKPOINT).is_file()
    assert not (tmp_path / "run" / LOCK).exists()  # released on the way out
    return tmp_path / "run"


@pytest.mark.slow
def test_a_second_writer_of_a_run_folder_is_refused(interrupted_run, data_root):
    metrics = (interrupted_run / "metrics.jsonl").read_text()
    with subprocess.Popen(["sleep", "30"]) as live:
        (interrupted_run / LOCK).write_text(
            json.dumps({"pid": live.pid, "host": socket.gethostname(), "created": "now"})
        )
        with pytest.raises(RunError, match=f"run folder .* is being written by process {live.pid}"):
            pretrain(_config(data_root), interrupted_run, resume=True, progress=False)
        live.kill()
    assert (interrupted_run / "metrics.jsonl").read_text() == metrics  # untouched
    (interrupted_run / LOCK).unlink()
    pretrain(_config(data_root), interrupted_run, resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (interrupted_run / "metrics.jsonl").open()]
    assert steps == sorted(set(steps))  # no step logged twice
    assert not (interrupted_run / LOCK).exists()


@pytest.mark.slow
def test_a_truncated_checkpoint_is_one_line(interrupted_run, data_root):
    checkpoint = interrupted_run / CHECKPOINT
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    args = _pretrain_args(interrupted_run, data_root, "--resume", "--epochs", "2")
    last = _one_line_error(args, "is damaged (truncated or overwritten)")
    assert "delete it" in last


@pytest.mark.slow
def test_a_checkpoint_with_objects_is_refused_without_unsafe_advice(interrupted_run, data_root):
    checkpoint = interrupted_run / CHECKPOINT
    torch.save({"model": {}, "epoch": 1, "payload": Path("anything")}, checkpoint)
    with pytest.raises(RunError, match="holds Python objects") as caught:
        pretrain(_config(data_root), interrupted_run, resume=True, progress=False)
    assert "weights_only" not in str(caught.value)


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(
    tmp_path, data_root, monkeypatch
):
    from embedkit.methods.simclr import SimCLR

    def broken(self, images, labels, generator):
        raise ValueError("broken augmentation")

    monkeypatch.setattr(SimCLR, "training_step", broken)
    with pytest.raises(ValueError, match="broken augmentation"):
        pretrain(_config(data_root), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


# --- extraction on a full disk -----------------------------------------------------------


def _embed_config(data_root, **overrides):
    base = {"dataset": "demo-texture", "device": "cpu", "data_root": str(data_root)}
    return EmbedConfig(**{**base, **overrides})


def test_a_store_that_cannot_fit_is_refused_before_writing(small_disk, data_root):
    args = _embed_args(small_disk / "s.zarr", data_root)
    last = _one_line_error(args, "not enough space for store")
    assert "free" in last and "MB" in last
    assert not (small_disk / "s.zarr").exists()


def test_disk_full_mid_write_is_one_line_and_resumable(tmp_path, data_root, monkeypatch):
    import embedkit.store.writer as writer_module

    real = writer_module.write_chunks
    calls = []

    def fills_up(group, produce, chunk_range, log_file, name):
        calls.append(name)
        if len(calls) == 2:  # the second split hits a full disk
            raise OSError(errno.ENOSPC, "No space left on device", str(log_file))
        return real(group, produce, chunk_range, log_file, name)

    monkeypatch.setattr(writer_module, "write_chunks", fills_up)
    store = tmp_path / "s.zarr"
    args = _embed_args(store, data_root)
    last = _one_line_error(args, f"no space left on the device writing store {store}")
    assert "--resume" in last and "MB in all" in last
    assert not (store / LOCK).exists()
    assert EmbeddingStore(store).splits("demo-texture") == ["train"]
    monkeypatch.undo()
    assert _cli(*args, "--resume")[0] == 0
    assert EmbeddingStore(store).splits("demo-texture") == ["train", "val", "test"]


@pytest.mark.slow
def test_a_full_disk_at_a_checkpoint_keeps_the_last_whole_one(tmp_path, data_root, monkeypatch):
    """The first checkpoint of a new run fails: one line, no folder left. A later one
    fails: the previous checkpoint is kept whole (written aside and renamed over it) and the
    run resumes from it to the same weights as a run that never failed."""
    from lightning_fabric import Fabric
    from safetensors.torch import load_file

    real_save, saves = Fabric.save, []

    def fills_up_at(count):
        def save(self, path, state, *args, **kwargs):
            saves.append(path)
            if len(saves) == count:  # half a file, then the disk is full
                Path(path).write_bytes(b"\x80\x02half")
                raise OSError(errno.ENOSPC, "No space left on device", str(path))
            return real_save(self, path, state, *args, **kwargs)

        return save

    monkeypatch.setattr(Fabric, "save", fills_up_at(1))
    run = tmp_path / "run"
    args = _pretrain_args(run, data_root, "--epochs", "2")
    _one_line_error(args, "No space left on device); nothing is kept: free space and run")
    assert not run.exists()

    saves.clear()
    monkeypatch.setattr(Fabric, "save", fills_up_at(2))
    _one_line_error(args, "the previous one is kept: free space and run the command with --resume")
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["last.ckpt"]  # no partial file beside it
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(Fabric, "save", real_save)
    assert _cli(*args, "--resume")[0] == 0
    assert _cli(*_pretrain_args(tmp_path / "straight", data_root, "--epochs", "2"))[0] == 0
    resumed = load_file(run / "encoder.safetensors")
    straight = load_file(tmp_path / "straight" / "encoder.safetensors")
    assert all(torch.equal(resumed[k], straight[k]) for k in straight)


def test_read_only_targets_are_one_line(read_only_disk, data_root, demo_store):
    embed_args = _embed_args(read_only_disk / "s.zarr", data_root)
    _one_line_error(embed_args, f"{read_only_disk} is read-only or not writable")
    pretrain_args = _pretrain_args(read_only_disk / "run", data_root, "--epochs", "1")
    _one_line_error(pretrain_args, f"cannot create run folder {read_only_disk / 'run'}")
    table = read_only_disk / "k.parquet"
    _one_line_error(["knn", "--store", demo_store.path, "--out", table], "is read-only")
    assert list(read_only_disk.iterdir()) == []
    # a data root where the demo data would have to be generated
    last = _one_line_error(_embed_args(read_only_disk.parent / "s.zarr", read_only_disk), "")
    assert "read-only" in last and str(read_only_disk) in last, last
    assert not (read_only_disk.parent / "s.zarr").exists()


def test_os_errors_of_rust_libraries_are_read_from_their_message():
    from embedkit.utils import os_errno, os_error_message

    polars_style = OSError("Read-only file system (os error 30): /x/t.parquet")
    assert os_errno(polars_style) == errno.EROFS
    assert os_error_message(polars_style, "cannot write") == (
        "cannot write: read-only file system (/x/t.parquet): choose a location you can write to"
    )
    full = OSError(errno.ENOSPC, "No space left on device", "/x/c/0")
    assert os_error_message(full, "cannot write store s.zarr").startswith(
        "cannot write store s.zarr: no space left on the device (/x/c/0): free some space"
    )


# --- nothing half-written ----------------------------------------------------------------


def test_bad_dtype_creates_no_store(tmp_path, data_root):
    with pytest.raises(Exception, match="unknown --dtype 'float64'"):
        embed(_embed_config(data_root, dtype="float64"), tmp_path / "new.zarr", progress=False)
    assert not (tmp_path / "new.zarr").exists()
    embed(_embed_config(data_root, splits=("test",)), tmp_path / "new.zarr", progress=False)


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("--lr", "-1", "--lr must be positive"),
        ("--weight-decay", "-0.1", "--weight-decay must be 0 or positive"),
        ("--warmup", "1.5", "--warmup is a share of the steps"),
        ("--seed", "-1", "--seed must lie in 0..2**32-1"),
        (
            "--logger",
            "csv,mlflow",
            "unknown logger 'mlflow': valid loggers: csv, tensorboard, wandb",
        ),
        ("--logger", "tensorbord", "unknown logger 'tensorbord': did you mean tensorboard?"),
        ("--logger", "csv,", "has an empty name"),
    ],
)
def test_bad_optimiser_options_create_no_run_folder(tmp_path, data_root, option, value, message):
    args = _pretrain_args(tmp_path / "run", data_root, option, value)
    _one_line_error(args, message)
    assert not (tmp_path / "run").exists()


# --- store verify ------------------------------------------------------------------------


def _store(tmp_path, labels=None):
    path = tmp_path / "s.zarr"
    x = np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32)
    with StoreWriter(path, IDENTITY) as writer:
        for split in ("train", "test"):
            writer.write_split(
                "d",
                split,
                [x],
                40,
                8,
                (np.arange(40) % 3).reshape(-1, 1) if labels is None else labels,
                np.arange(40),
                attrs={},
                dataset_attrs={"task": "multi-class", "class_names": ["a", "b", "c"]},
            )
    return path


def _damage_marker(split_folder: Path) -> None:
    meta = json.loads((split_folder / "zarr.json").read_text())
    del meta["attributes"]["complete"]
    (split_folder / "zarr.json").write_text(json.dumps(meta))


def _damage_json(split_folder: Path) -> None:
    with open(split_folder / "zarr.json", "a") as f:
        f.write("garbage}")


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        (_damage_marker, "not marked complete"),
        (_damage_json, "zarr.json is damaged (not valid JSON)"),
    ],
)
def test_verify_reports_a_split_that_lost_its_metadata(tmp_path, damage, problem):
    path = _store(tmp_path)
    damage(path / "d" / "test")
    table = verify_store(path)
    rows = {r["split"]: r for r in table.iter_rows(named=True)}
    assert rows["train"]["status"] == "ok"
    assert rows["test"]["status"] == "bad" and problem in rows["test"]["problems"]
    code, _, output = _cli("store", "verify", "--store", path)
    assert code == 1 and "test" in output and problem in output


@pytest.mark.parametrize(
    ("labels", "problem"),
    [
        (
            np.where(np.arange(40) == 5, 99, np.arange(40) % 3).reshape(-1, 1),
            "labels range 0..99, outside 0..2 of the 3 classes",
        ),
        (np.full((40, 1), -1), "labels range -1..-1, outside 0..2"),
        (np.zeros((40, 3), np.int64), "labels have 3 columns, multi-class 3 classes need 1"),
    ],
)
def test_verify_checks_labels_against_the_dataset(tmp_path, labels, problem):
    table = verify_store(_store(tmp_path, labels=labels.astype(np.int64)))
    assert table["status"].to_list() == ["bad", "bad"]
    assert all(problem in p for p in table["problems"])


def test_verify_checks_the_label_dtype(tmp_path):
    import zarr

    path = _store(tmp_path)
    group = zarr.open_group(str(path / "d" / "test"), mode="r+")
    del group["labels"]
    group.create_array("labels", data=np.zeros((40, 1), np.float32))
    rows = {r["split"]: r["problems"] for r in verify_store(path).iter_rows(named=True)}
    assert "labels float32 / indices int64, expected int64" in rows["test"]


# --- messages ----------------------------------------------------------------------------


def test_messages_say_what_to_do(tmp_path, data_root, demo_store):
    (tmp_path / "afile.zarr").write_text("x")
    last = _one_line_error(
        _embed_args(tmp_path / "afile.zarr", data_root), "is a file, not a store folder"
    )
    assert "such as" not in last
    (tmp_path / "weights.txt").write_text("these are not weights\n")
    _one_line_error(
        _embed_args(tmp_path / "w.zarr", data_root, "--init", tmp_path / "weights.txt"),
        "neither a torch checkpoint nor a safetensors file",
    )
    last = _one_line_error(
        ["ood", "--store", demo_store.path, "--id", "demo-med", "--ood", "demo-med"],
        "--ood names only the ID dataset demo-med itself",
    )
    assert "demo-natural, demo-texture" in last
    _one_line_error(
        ["pretrain", "--output", tmp_path / "r", "--epochs", "abc"], "Invalid value for '--epochs'"
    )
    for command in (["report", "--probe", "x.parquet"], ["quickstart"]):
        _one_line_error(
            [*command, "--output", tmp_path / "afile.zarr"],
            f"--output {tmp_path / 'afile.zarr'} is a file",
        )
    _one_line_error(
        ["probe", "--store", demo_store.path, "--out", tmp_path / "afile.zarr" / "p.parquet"],
        f"{tmp_path / 'afile.zarr'} is a file, not a folder",
    )
    scores = tmp_path / "afile.zarr" / "scores"  # found by the file system, not a check
    _one_line_error(
        _ood_args(demo_store, tmp_path / "o" / "o.parquet", "knn", "--save-scores", scores),
        "a part of the path is a file, not a folder",
    )
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile.zarr", "weights.txt"]


def test_probe_without_a_val_split_says_how_to_embed_it(tmp_path, data_root):
    store = embed(
        _embed_config(data_root, splits=("train", "test")), tmp_path / "s.zarr", progress=False
    )
    last = _one_line_error(["probe", "--store", store.path], "lacks the val split of demo-texture")
    assert "--splits train,val,test" in last


def test_usage_errors_are_one_line():
    for args, message in [
        (["pretrain", "--output", "r", "--epochs", "abc"], "Invalid value for '--epochs'"),
        (["store", "verify", "--bogus"], "No such option: --bogus"),
        (["nosuch"], "No such command 'nosuch'"),
        (["--bogus"], "No such option: --bogus"),
    ]:
        code, last, everything = _cli(*args)
        assert code == 2 and last.startswith("error: ") and message in last
        assert "Usage:" not in everything


# --- options of the evaluations ----------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["ood", "--scorer", "knn", "--param", "mahalanobis.foo=3"],
            "scorer mahalanobis is not selected",
        ),
        (
            ["ood", "--scorer", "knn", "--param", "knn.kk=3"],
            "scorer knn has no parameter kk: its parameters are k",
        ),
        (["ood", "--scorer", "knn", "--param", "knn.k=abc"], "knn.k=abc: expected type int"),
        (["probe", "--dataset", ""], "has an empty name"),
        (["probe", "--dataset", "demo-med,,"], "has an empty name"),
        (["ood", "--id", "demo-med,", "--scorer", "knn"], "has an empty name"),
        (["ood", "--scorer", "knn,,"], "has an empty name"),
        (["knn", "--temperature", "0"], "temperature of the weighted vote must be above 0"),
        (["knn", "--k", "0"], "k must be at least 1"),
        (["knn", "--k", "100000"], "k=100000 neighbours asked of a bank of 1200 embeddings"),
        (["ood", "--scorer", "knn", "--param", "knn.k=0"], "k=0 neighbours asked of a bank"),
        (["probe", "--seeds", "-1"], "seeds must be 0 or more, not [-1]"),
        (["ood", "--id", "demo-md", "--scorer", "knn"], "did you mean demo-med?"),
        (["knn", "--dataset", "pathmnist"], "embed it with `embedkit embed --dataset pathmnist`"),
        (["probe", "--seeds", ""], "is not a comma-separated list of integers"),
        (["probe", "--seeds", "0,,1"], "is not a comma-separated list of integers"),
        (["probe", "--label-fraction", "0.1,"], "is not a comma-separated list of numbers"),
        (["transfer", "--seeds", "x"], "is not a comma-separated list of integers"),
    ],
)
def test_bad_evaluation_options_are_one_line(demo_store, tmp_path, args, message):
    out = tmp_path / "t.parquet"
    _one_line_error([*args, "--store", demo_store.path, "--out", out], message)
    assert not out.exists()


@pytest.mark.parametrize("value", ["0", "-1"])
def test_a_batch_size_below_one_creates_no_store(tmp_path, data_root, value):
    args = _embed_args(tmp_path / "s.zarr", data_root, "--batch-size", value)
    _one_line_error(args, "--batch-size must be at least 1")
    assert not (tmp_path / "s.zarr").exists()


def test_probe_protocol_checks(demo_store):
    from embedkit.errors import ConfigError
    from embedkit.eval import ProbeConfig, probe

    for config, message in [
        (ProbeConfig(seeds=()), "at least one value in seeds"),
        (ProbeConfig(l2_grid=(-1.0,)), "L2 strengths must be 0 or more"),
        (ProbeConfig(protocol="sgd", lr_grid=(0.0,)), "learning rates must be above 0"),
        (ProbeConfig(protocol="sgd", epochs=0), "at least 1 epoch"),
    ]:
        with pytest.raises(ConfigError, match=message):
            probe([demo_store], config)


def test_an_empty_dataset_name_is_refused_by_embed(tmp_path, data_root):
    args = _embed_args(tmp_path / "s.zarr", data_root)
    args[args.index("demo-texture")] = "demo-texture,,"
    _one_line_error(args, "has an empty name")
    assert not (tmp_path / "s.zarr").exists()


def test_a_plugin_scorer_that_fails_is_one_line(tmp_path, demo_store):
    plugin = tmp_path / "broken.py"
    plugin.write_text(
        "class Broken:\n"
        "    def fit(self, X, y=None):\n"
        "        raise RuntimeError('boom')\n"
        "    def score_samples(self, X):\n"
        "        return X[:, 0]\n"
    )
    args = _ood_args(demo_store, tmp_path / "o.parquet", f"{plugin}:Broken")
    _one_line_error(args, "scorer Broken failed in fit on demo-med: RuntimeError: boom")
    result = runner.invoke(app, [str(a) for a in [*args, "--debug"]])
    assert isinstance(result.exception.__cause__, RuntimeError)  # --debug keeps the cause


@pytest.mark.parametrize("where", ["import", "fit"])
def test_a_plugin_calling_sys_exit_is_one_line_not_exit_0(tmp_path, demo_store, where):
    plugin = tmp_path / "quits.py"
    body = "        raise SystemExit(0)\n" if where == "fit" else "        return self\n"
    plugin.write_text(
        ("raise SystemExit(0)\n" if where == "import" else "")
        + "class Quits:\n    def fit(self, X, y=None):\n"
        + body
        + "    def score_samples(self, X):\n        return X[:, 0]\n"
    )
    args = _ood_args(demo_store, tmp_path / "o.parquet", f"{plugin}:Quits")
    message = "failed: SystemExit" if where == "import" else "Quits failed in fit on demo-med"
    _one_line_error(args, message)
    assert not (tmp_path / "o.parquet").exists()


# --- damaged data files ------------------------------------------------------------------


def _damaged_copy(data_root: Path, tmp_path: Path, damage) -> Path:
    """A data root holding demo-texture's file after ``damage(path)``."""
    root = tmp_path / "data"
    root.mkdir()
    shutil.copy(Path(data_root) / "demo-texture_28.npz", root / "demo-texture_28.npz")
    damage(root / "demo-texture_28.npz")
    return root


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _not_zip(path: Path) -> None:
    path.write_text("<html>404 Not Found</html>")


def _labels(values):
    def damage(path: Path) -> None:
        arrays = dict(np.load(path))
        labels = arrays["train_labels"].astype(np.asarray(values).dtype)
        labels[: len(values)] = np.asarray(values).reshape(-1, 1)
        arrays["train_labels"] = labels
        np.savez(path, **arrays)

    return damage


def _wide_labels(path: Path) -> None:
    arrays = dict(np.load(path))
    arrays["train_labels"] = np.zeros((len(arrays["train_labels"]), 2), np.uint8)
    np.savez(path, **arrays)


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (_truncate, "is damaged (truncated, or not an npz archive"),
        (_not_zip, "is damaged (truncated, or not an npz archive: file is not a zip file)"),
        (_labels([99]), "train_labels holds 1 value(s) outside 0..2 (row 0: [99])"),
        (_labels([-1, 4]), "train_labels holds 2 value(s) outside 0..2"),
        (_labels([np.nan, 1.0]), "train_labels holds 1 NaN or infinite value(s)"),
        (_labels([0.5]), "train_labels holds fractional values"),
        (_wide_labels, "train_labels has 2 column(s), not 1"),
    ],
)
def test_a_damaged_data_file_is_one_line_and_embeds_nothing(tmp_path, data_root, damage, message):
    root = _damaged_copy(data_root, tmp_path, damage)
    last = _one_line_error(_embed_args(tmp_path / "s.zarr", root), message)
    assert "demo-texture_28.npz" in last
    assert not (tmp_path / "s.zarr").exists()


# --- damaged stores: verify and every evaluator ------------------------------------------

DAMAGED = ("demo-med", "test")  # a split that probe, knn, ood and transfer all read


def _split_path(store: Path) -> Path:
    return store.joinpath(*DAMAGED)


def _edit_json(path: Path, edit) -> None:
    meta = json.loads(path.read_text())
    edit(meta)
    path.write_text(json.dumps(meta))


def _flip_bytes(store: Path) -> None:
    chunk = _split_path(store) / "embeddings" / "c" / "1" / "0"
    data = bytearray(chunk.read_bytes())
    data[100:104] = bytes(b ^ 0xFF for b in data[100:104])
    chunk.write_bytes(bytes(data))


def _write_nan(store: Path) -> None:
    import zarr

    zarr.open_array(str(_split_path(store) / "embeddings"), mode="r+")[3, 5] = np.nan


def _truncate_chunk(store: Path) -> None:
    chunk = _split_path(store) / "embeddings" / "c" / "0" / "0"
    chunk.write_bytes(chunk.read_bytes()[:100])


def _delete_chunk(store: Path) -> None:
    (_split_path(store) / "embeddings" / "c" / "1" / "0").unlink()


def _alter_labels(store: Path) -> None:
    import zarr

    labels = zarr.open_array(str(_split_path(store) / "labels"), mode="r+")
    labels[:10] = (labels[:10] + 1) % 3  # still valid classes: only the checksum sees it


def _set_split_attr(key, value):
    def damage(store: Path) -> None:
        _edit_json(
            _split_path(store) / "zarr.json", lambda m: m["attributes"].__setitem__(key, value)
        )

    return damage


def _alter_checksum(store: Path) -> None:
    def edit(meta):
        meta["attributes"]["chunk_sha256"][0] = "0" * 64

    _edit_json(_split_path(store) / "zarr.json", edit)


def _alter_md5(store: Path) -> None:
    _edit_json(
        _split_path(store) / "zarr.json",
        lambda m: m["attributes"]["data_file"].__setitem__("md5", "f" * 32),
    )


def _array_shape(store: Path) -> None:
    _edit_json(
        _split_path(store) / "embeddings" / "zarr.json",
        lambda m: m.__setitem__("shape", [599, 512]),
    )


def _delete_array(name):
    def damage(store: Path) -> None:
        shutil.rmtree(_split_path(store) / name)

    return damage


STORE_DAMAGE = {
    "flipped bytes": (_flip_bytes, "chunk 1 differs from its checksum"),
    "NaN written": (_write_nan, "chunk 0 differs from its checksum"),
    "truncated chunk": (_truncate_chunk, "a chunk file is unreadable"),
    "deleted chunk": (_delete_chunk, "chunk 1 differs from its checksum"),
    "altered labels": (_alter_labels, "labels differ from their checksum"),
    "row count attribute": (_set_split_attr("n", 500), "embeddings have shape (600, 512)"),
    "array shape": (_array_shape, "embeddings have shape (599, 512)"),
    "checksum log": (_alter_checksum, "chunk 0 differs from its checksum"),
    "md5 attribute": (_alter_md5, "the splits of demo-med in store"),
    "labels deleted": (_delete_array("labels"), "array labels missing"),
    "indices deleted": (_delete_array("indices"), "array indices missing"),
}


@pytest.mark.parametrize("kind", list(STORE_DAMAGE))
def test_a_damaged_store_is_found_by_verify_and_refused_by_every_evaluator(
    tmp_path, demo_store, kind
):
    damage, message = STORE_DAMAGE[kind]
    store = tmp_path / "s.zarr"
    shutil.copytree(demo_store.path, store)
    damage(store)
    table = verify_store(store)
    assert "bad" in table["status"].to_list(), table
    bad = table.filter(table["status"] == "bad")
    assert set(bad["dataset"].to_list()) <= {DAMAGED[0], "*"}
    if kind == "altered labels":  # labels were once outside the checksums
        assert bad.rows() and "labels differ from the checksum" in bad["problems"][0]
    out = tmp_path / "result.parquet"
    for command in (
        ["probe", "--dataset", "demo-med", "--label-fraction", "1.0", "--seeds", "0"],
        ["knn", "--dataset", "demo-med"],
        ["ood", "--id", "demo-med", "--ood", "demo-texture", "--scorer", "knn"],
        ["transfer", "--dataset", "demo-med"],
    ):
        last = _one_line_error([*command, "--store", store, "--out", out], message)
        if kind == "md5 attribute":  # which split is wrong, only the user can tell
            assert "record different data files" in last and "test: md5 ffffffffffff" in last
        else:
            assert f"demo-med/test in store {store} is damaged" in last
            assert "--splits test --overwrite" in last
        assert "embedkit store verify" in last
        assert not out.exists()


def _dataset_attr(key, value):
    def damage(store: Path) -> None:
        _edit_json(
            store / "demo-med" / "zarr.json", lambda m: m["attributes"].__setitem__(key, value)
        )

    return damage


def _root(edit):
    def damage(store: Path) -> None:
        path = store / "zarr.json"
        meta = json.loads(path.read_text())
        path.write_text(json.dumps(edit(meta)))

    return damage


ATTRIBUTE_DAMAGE = {
    "class_names claim more classes": (
        _dataset_attr("class_names", ["a", "b", "c", "d", "e"]),
        "demo-med in store",  # the message names the dataset, its problem and verify
    ),
    "class_names not a list": (_dataset_attr("class_names", 3), "is not a list of names"),
    "unknown task": (_dataset_attr("task", "regression"), "task 'regression' is none of"),
}


@pytest.mark.parametrize("kind", list(ATTRIBUTE_DAMAGE))
def test_damaged_dataset_attributes_are_found_by_verify_and_refused(tmp_path, demo_store, kind):
    damage, message = ATTRIBUTE_DAMAGE[kind]
    store = tmp_path / "s.zarr"
    shutil.copytree(demo_store.path, store)
    damage(store)
    if kind == "class_names claim more classes":  # a 3-class task claiming 5 is possible:
        _dataset_attr("task", "binary")(store)  # make it inconsistent (binary, 5 names)
        message = "a binary task with 5 class names"
    table = verify_store(store)
    bad = table.filter(table["status"] == "bad")
    assert set(bad["dataset"]) == {"demo-med"} and message in bad["problems"][0]
    out = tmp_path / "result.parquet"
    for command in (
        ["probe", "--dataset", "demo-med", "--label-fraction", "1.0", "--seeds", "0"],
        ["knn", "--dataset", "demo-med"],
    ):
        last = _one_line_error([*command, "--store", store, "--out", out], message)
        assert "has damaged attributes" in last and "embedkit store verify" in last
        assert not out.exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: [m], "zarr.json is damaged"),
        (lambda m: {**m, "attributes": {**m["attributes"], "encoder": None}}, "encoder record"),
    ],
    ids=["a list", "encoder null"],
)
def test_a_damaged_store_record_is_one_line_everywhere(tmp_path, demo_store, edit, message):
    store = tmp_path / "s.zarr"
    shutil.copytree(demo_store.path, store)
    _root(edit)(store)
    for command in (
        ["store", "ls", store],
        ["knn", "--store", store, "--out", tmp_path / "k.parquet"],
    ):
        _one_line_error(command, message)


def test_control_characters_in_an_encoder_name_are_escaped(tmp_path, demo_store):
    from embedkit.store import EmbeddingStore

    store = tmp_path / "s.zarr"
    shutil.copytree(demo_store.path, store)
    _root(
        lambda m: {
            **m,
            "attributes": {
                **m["attributes"],
                "encoder": {**m["attributes"]["encoder"], "name": "evil\x1b[31mred\x07"},
            },
        }
    )(store)
    assert EmbeddingStore(store).encoder_name == "evil\\x1b[31mred\\x07"


@pytest.mark.parametrize(
    ("param", "message"),
    [
        ("augment.minscale=0.2", "augment has no setting minscale: its settings are min_scale"),
        ("augment=xray", "unknown augmentation preset 'xray': use natural, grayscale-medical"),
        ("augment={'min_scale': 0.2}", "unknown augmentation preset"),
        ("temperature=abc", "--param simclr.temperature=abc: expected float"),
        ("projection_dim=1.5", "--param simclr.projection_dim=1.5: expected int"),
        ("augment.blur_sigma=0.1", "augment.blur_sigma: expected 2 comma-separated numbers"),
        ("temperature=-0.1", "--param simclr.temperature=-0.1: must be 0 or more (default 0.2)"),
        ("augment.blur_sigma=-1,2", "augment.blur_sigma: numbers of 0 or more"),
    ],
)
def test_bad_method_parameters_create_no_run_folder(tmp_path, data_root, param, message):
    _one_line_error(_pretrain_args(tmp_path / "run", data_root, "--param", param), message)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_augmentation_presets_and_dotted_settings_are_recorded(tmp_path, data_root):
    args = _pretrain_args(tmp_path / "run", data_root, "--epochs", "1")
    args += ["--param", "augment=grayscale-medical", "--param", "augment.min_scale=0.3"]
    args += ["--param", "augment.blur_sigma=0.1,1.0"]
    code, _, everything = _cli(*args)
    assert code == 0, everything
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["method_config"]
    augment = recorded["augment"]
    assert augment["saturation"] == 0.0 and augment["hue"] == 0.0  # the preset
    assert augment["grayscale_prob"] == 0.0 and augment["brightness"] == 0.4
    assert augment["min_scale"] == 0.3  # the dotted setting, after the preset
    assert augment["blur_sigma"] == [0.1, 1.0] and augment["blur_prob"] == 0.5  # simclr's
