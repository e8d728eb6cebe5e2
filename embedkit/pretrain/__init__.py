"""Stage 1, pretraining: SSL methods on timm backbones, into self-describing run folders.

- ``loop``: ``PretrainConfig`` and ``pretrain``, the training loop on Lightning Fabric.
- ``epoch``: one epoch's optimiser steps and metric lines, and the epoch summary line.
- ``loggers``: Lightning's CSV, TensorBoard and W&B loggers beside ``metrics.jsonl``.
- ``engine``: option checks, the Fabric set-up and the learning-rate schedule.
- ``runs``: the run folder (config, status, metrics, checkpoint, exported encoder and head),
  which ``embedkit.embed`` reads.
- ``monitor``: the online kNN monitor on the validation split.

The methods themselves are a family of their own in ``embedkit.methods``.
"""

# ``runs`` first: ``embedkit.embed`` reads run folders and is imported by ``monitor``.
from .runs import (
    CHECKPOINT,
    ENCODER_FILE,
    HEAD_FILE,
    load_head,
    read_finished_run,
    read_metrics,
    run_state,
    summarise_runs,
)

# isort: split
from .loop import PretrainConfig, pretrain

__all__ = [
    "CHECKPOINT",
    "ENCODER_FILE",
    "HEAD_FILE",
    "PretrainConfig",
    "load_head",
    "pretrain",
    "read_finished_run",
    "read_metrics",
    "run_state",
    "summarise_runs",
]
