"""Stage 1, pretraining: SSL methods on timm backbones, into self-describing run folders.

- ``loop``: ``PretrainConfig`` and ``pretrain``, the training loop on Lightning Fabric.
- ``epoch``: one epoch's optimiser steps and metric lines, and the epoch summary line.
- ``loggers``: Lightning's CSV, TensorBoard and W&B loggers beside ``metrics.jsonl``.
- ``engine``: option checks, the Fabric set-up and the learning-rate schedule.
- ``monitor``: the online kNN monitor on the validation split.

The run folder it writes is ``embedkit.runs`` (the contract with ``embedkit.embed``); the
methods themselves are a family of their own in ``embedkit.methods``.
"""

from .loop import PretrainConfig, pretrain

__all__ = ["PretrainConfig", "pretrain"]
