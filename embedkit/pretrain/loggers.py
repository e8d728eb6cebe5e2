"""Experiment loggers for pretraining runs: Lightning's own CSV, TensorBoard and W&B loggers.

``metrics.jsonl`` is always written and stays the run's history (``report --run`` and
``read_metrics`` read it, and it is truncated to the checkpoint on resume). The loggers are
for the tools people already watch runs with, under ``RUN/logs/``:

- ``csv``: ``logs/csv/version_N/metrics.csv`` and ``hparams.yaml`` (Lightning's layout: each
  start or resume of the run is a new version, so a resumed run's steps after its last
  checkpoint appear in two versions).
- ``tensorboard``: ``logs/tensorboard/`` (``pip install 'embedkit[tensorboard]'``); a resumed
  run writes into the same folder and TensorBoard drops the events after the checkpoint
  (``purge_step``), so the curves join without overlap.
- ``wandb``: a Weights & Biases run named after the run folder in project ``$WANDB_PROJECT``
  (default ``embedkit``), files under ``logs/wandb`` (``pip install 'embedkit[wandb]'``; set
  ``WANDB_MODE=offline`` where there is no network). Its id is kept in ``logs/wandb-id``, so a
  resumed run continues the same W&B run.

Metric names: ``train/loss``, ``train/lr``, ``train/images_per_s`` per optimiser step,
``train/epoch_loss`` and ``epoch`` per epoch, ``val/knn_accuracy`` (and ``val/knn_auc``) when
the kNN monitor runs; the step is the optimiser step, as in ``metrics.jsonl``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigError, UnknownNameError

LOGGERS = ("csv", "tensorboard", "wandb")
LOG_DIR = "logs"
_EXTRAS = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def check_loggers(names: Iterable[str]) -> tuple[str, ...]:
    """The logger names, checked (known, their package installed), in the order given."""
    names = tuple(dict.fromkeys(names))
    for name in names:
        if name not in LOGGERS:
            raise UnknownNameError("logger", name, LOGGERS)
        modules = _EXTRAS.get(name, ())
        if modules and not any(importlib.util.find_spec(m) for m in modules):
            raise ConfigError(
                f"--logger {name} needs the {modules[0]} package: pip install 'embedkit[{name}]'"
            )
    return names


def _wandb_id(folder: Path) -> str:
    path = folder / "wandb-id"
    if path.is_file():
        return path.read_text().strip()
    run_id = secrets.token_hex(4)
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(run_id + "\n")
    return run_id


class RunLoggers:
    """The Lightning loggers of one pretraining run, called like one logger.

    The loggers' methods act on global rank zero only (Lightning's ``rank_zero_only``), so
    every rank may call these.

    Args:
        names: logger names from ``LOGGERS`` (checked with ``check_loggers``).
        output: the run folder; the loggers write under ``output/logs``.
        start_step: the first optimiser step of this session (0, or the resumed position).
        is_global_zero: whether this process writes files (the W&B id).
    """

    def __init__(self, names: Iterable[str], output: Path, start_step: int, is_global_zero: bool):
        self.loggers = []
        names = check_loggers(names)
        if not names:
            return
        from pytorch_lightning import loggers

        root = Path(output) / LOG_DIR
        for name in names:
            if name == "csv":
                logger = loggers.CSVLogger(root, name="csv")
            elif name == "tensorboard":
                logger = loggers.TensorBoardLogger(
                    root,
                    name="tensorboard",
                    version="",
                    default_hp_metric=False,
                    purge_step=start_step or None,
                )
            else:
                logger = loggers.WandbLogger(
                    name=Path(output).resolve().name,
                    save_dir=root,
                    id=_wandb_id(root) if is_global_zero else None,
                    project=os.environ.get("WANDB_PROJECT", "embedkit"),
                )
            self.loggers.append(logger)

    def __bool__(self) -> bool:
        return bool(self.loggers)

    def log_hyperparams(self, params: Mapping[str, Any]) -> None:
        """Log ``params`` (JSON-able) as plain dicts, lists and scalars."""
        plain = json.loads(json.dumps(params))
        for logger in self.loggers:
            logger.log_hyperparams(plain)

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        for logger in self.loggers:
            logger.log_metrics(dict(metrics), step=step)

    def save(self) -> None:
        for logger in self.loggers:
            logger.save()

    def finalize(self, status: str) -> None:
        """``success`` or ``failed``: flush and close every logger."""
        for logger in self.loggers:
            logger.finalize(status)
