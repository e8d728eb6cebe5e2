"""The run folder: the contract between pretraining (which writes it) and extraction (which
reads it). Creation and resumption checks, progress, the exported encoder and head.

Layout: ``config.json``, ``run.json``, ``metrics.jsonl``, ``checkpoints/last.ckpt`` and,
written last, ``encoder.safetensors`` and ``head.safetensors``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import polars as pl
from torch import nn

from .backbones import Encoder, state_sha256
from .errors import RunError
from .lock import LOCK, FolderLock
from .utils import os_error_message, stamp, torch_file_problem, write_json

ENCODER_FILE = "encoder.safetensors"
HEAD_FILE = "head.safetensors"
CHECKPOINT = Path("checkpoints") / "last.ckpt"
RESUME_KEYS = (
    "method",
    "backbone",
    "dataset",
    "size",
    "patch_size",
    "epochs",
    "batch_size",
    "accumulate",
    "lr",
    "seed",
)


def run_state(run: Path) -> dict[str, Any]:
    """The content of ``run.json`` (empty when there is none)."""
    try:
        return json.loads((Path(run) / "run.json").read_text())
    except (OSError, ValueError):
        return {}


def open_run_folder(output: Path) -> tuple[FolderLock, bool]:
    """Create ``output`` if needed and take its lock (one writer per run folder).

    Returns:
        The held lock, and whether the folder was new (nothing of an earlier run in it).
    """
    if output.exists() and not output.is_dir():
        raise RunError(f"--output {output} is a file: choose a folder")
    fresh = not output.exists() or not any(c.name != LOCK for c in output.iterdir())
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunError(os_error_message(exc, f"cannot create run folder {output}")) from exc
    return FolderLock(output, "run folder", RunError).acquire(), fresh


def prepare_run(output: Path, config_json: dict[str, Any], resume: bool) -> bool:
    """Check a run folder (created and locked by ``open_run_folder``), write its config;
    return whether a checkpoint is to be loaded."""
    has_checkpoint = (output / CHECKPOINT).is_file()
    if any(c.name != LOCK for c in output.iterdir()):
        if not resume:
            raise RunError(
                f"run folder {output} already exists: pass --resume to continue it "
                f"or choose another --output"
            )
        if not (output / "config.json").is_file():
            raise RunError(f"cannot resume {output}: it is not a pretraining run folder")
        try:
            saved = json.loads((output / "config.json").read_text())["pretrain"]
        except (ValueError, KeyError):
            raise RunError(
                f"cannot resume {output}: its config.json is damaged; start a new run in "
                f"another --output"
            ) from None
        for key in RESUME_KEYS:
            if saved.get(key) != config_json["pretrain"][key]:
                raise RunError(
                    f"cannot resume {output}: it was trained with {key} "
                    f"'{saved.get(key)}', not '{config_json['pretrain'][key]}'"
                )
    if has_checkpoint:
        check_checkpoint(output / CHECKPOINT)
    (output / CHECKPOINT).parent.mkdir(parents=True, exist_ok=True)
    if not has_checkpoint:
        write_json(output / "config.json", config_json)
    return has_checkpoint


def check_checkpoint(path: Path) -> None:
    """Refuse a checkpoint that torch could not read, before any rank tries."""
    problem = torch_file_problem(path)
    if problem:
        raise RunError(
            f"cannot resume from {path}: {problem}; delete it to restart the run from its "
            f"beginning (or from an older copy of the checkpoint)"
        )


def unreadable_checkpoint(path: Path, exc: Exception) -> RunError:
    """The one line for a checkpoint that torch refused to load with ``weights_only``."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return RunError(
            f"cannot resume from {path}: it holds Python objects besides tensors, which "
            f"embedkit does not execute (it was not written by embedkit); delete it to restart "
            f"the run"
        )
    if isinstance(exc, RuntimeError) and "state_dict" in str(exc):
        return RunError(
            f"cannot resume from {path}: its model does not match this configuration (a "
            f"method parameter differs from the run's config.json); resume with the run's "
            f"own --param values"
        )
    return RunError(
        f"cannot resume from {path}: it is damaged ({type(exc).__name__}); delete it to "
        f"restart the run from its beginning"
    )


def mark_progress(output: Path, epochs_done: int) -> None:
    """Record in ``run.json`` that training is under way after ``epochs_done`` epochs."""
    write_json(output / "run.json", {"status": "running", "epochs_done": epochs_done, **stamp()})


def truncate_metrics(path: Path, steps: int) -> None:
    """Drop metric lines of steps at or after ``steps`` (logged after the last checkpoint)."""
    if not path.exists():
        return
    lines = [line for line in path.read_text().splitlines() if json.loads(line)["step"] < steps]
    path.write_text("".join(line + "\n" for line in lines))


def _save(module: nn.Module, path: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(state, str(tmp))
    tmp.replace(path)


def export_encoder(
    encoder: Encoder, output: Path, epochs: int, head: nn.Module | None = None
) -> None:
    """Write ``head.safetensors`` (when given) and ``encoder.safetensors`` atomically, then
    mark the run complete."""
    if head is not None:
        _save(head, output / HEAD_FILE)
    _save(encoder.backbone, output / ENCODER_FILE)
    write_json(
        output / "run.json",
        {
            "status": "complete",
            "epochs_done": epochs,
            "encoder_file": ENCODER_FILE,
            "head_file": HEAD_FILE if head is not None else None,
            "encoder_sha256": state_sha256(encoder.backbone),
            **stamp(),
        },
    )


def read_finished_run(run: Path) -> dict[str, Any]:
    """The ``config.json`` of a complete run; RunError for anything else."""
    run = Path(run)
    if not (run / "run.json").is_file() or not (run / "config.json").is_file():
        raise RunError(
            f"{run} is not a pretraining run folder (no run.json / config.json): pass the "
            f"--output folder of `embedkit pretrain`"
        )
    status = run_state(run).get("status")
    if status != "complete" or not (run / ENCODER_FILE).is_file():
        raise RunError(
            f"run {run} is not finished (status {status}): "
            f"resume it with `embedkit pretrain --resume --output {run}`"
        )
    return json.loads((run / "config.json").read_text())


def load_head(run: Path, encoder: Encoder) -> nn.Module:
    """The exported output head of a finished run, on top of ``encoder``, in eval mode."""
    from .backbones import load_state_dict
    from .data import dataset_classes
    from .methods import get_method, method_config

    run = Path(run)
    recorded = read_finished_run(run)
    pretrain = recorded["pretrain"]
    if not (run / HEAD_FILE).is_file():
        if "head_file" in run_state(run) and run_state(run)["head_file"] is None:
            raise RunError(
                f"{pretrain['method']} trains no projection head (run {run}): embed without "
                f"--with-head"
            )
        raise RunError(
            f"run {run} has no {HEAD_FILE} (made by an older embedkit): embed without "
            f"--with-head, or pretrain it again"
        )
    method_cls = get_method(pretrain["method"])
    # the hyperparameters the run trained with, the recipe's additions included
    trained = {k: v for k, v in (recorded.get("method_config") or {}).items() if v is not None}
    config = method_config(method_cls, trained or pretrain.get("method_params", {}))
    n_classes = len(dataset_classes(pretrain["dataset"], pretrain.get("data_root")))
    head = method_cls(encoder, config, pretrain["size"], n_classes).output_head()
    head.load_state_dict(load_state_dict(run / HEAD_FILE))
    return head.eval()


def read_metrics(run: str | Path) -> pl.DataFrame:
    """A run's ``metrics.jsonl`` as a table: one row per optimiser step (epoch, step, loss, lr,
    images_per_s; knn_accuracy and knn_auc on the steps where the monitor ran)."""
    run = Path(run)
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise RunError(f"{run} has no metrics.jsonl: is it a pretraining run folder?")
    try:
        return pl.read_ndjson(path)
    except Exception as exc:  # polars raises several kinds for a damaged line
        raise RunError(f"{path} cannot be read ({type(exc).__name__}): is it damaged?") from None


def summarise_runs(runs: list[str | Path]) -> pl.DataFrame:
    """One row per pretraining run: method, backbone, dataset, status, epochs and optimiser
    steps logged, the last epoch's mean loss, the last and best kNN validation accuracy (when
    the run monitored it), and the median images per second."""
    rows = []
    for run in map(Path, runs):
        metrics = read_metrics(run)
        try:
            pretrain = json.loads((run / "config.json").read_text())["pretrain"]
        except (OSError, ValueError, KeyError):
            pretrain = {}
        steps = metrics.filter(pl.col("loss").is_not_null())
        last = steps.filter(pl.col("epoch") == steps["epoch"].max())
        knn = (
            metrics["knn_accuracy"].drop_nulls()
            if "knn_accuracy" in metrics.columns
            else pl.Series([], dtype=pl.Float64)
        )
        rows.append(
            {
                "run": run.name,
                "method": pretrain.get("method"),
                "backbone": pretrain.get("backbone"),
                "dataset": pretrain.get("dataset"),
                "status": run_state(run).get("status"),
                "epochs": int(steps["epoch"].max()) + 1 if steps.height else 0,
                "steps": steps.height,
                "last_epoch_loss": float(last["loss"].mean()) if last.height else None,
                "knn_accuracy": float(knn[-1]) if knn.len() else None,
                "best_knn_accuracy": float(knn.max()) if knn.len() else None,
                "images_per_s": float(steps["images_per_s"].median()) if steps.height else None,
            }
        )
    return pl.DataFrame(rows, strict=False)
