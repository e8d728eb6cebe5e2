"""Self-supervised pretraining on Lightning Fabric, into a self-describing run folder.

A run folder holds:

- ``config.json``: the ``PretrainConfig``, the method's full hyperparameters and the data files.
- ``run.json``: status (``running`` or ``complete``), epochs done, encoder checksum, versions.
- ``metrics.jsonl``: one line per optimiser step (epoch, step, loss, lr, images per second),
  and the online kNN monitor's validation accuracy when it is on.
- ``checkpoints/last.ckpt``: model (with EMA teacher and queue), optimiser, scheduler and
  position, for ``resume``.
- ``encoder.safetensors``: the trained backbone, written last; ``embedkit embed --run`` reads it.
- ``logs/``: what the ``loggers`` chosen (Lightning's CSV, TensorBoard, W&B) write, see
  ``embedkit.pretrain.loggers``.

Every random draw is seeded from ``(seed, epoch, rank)``, so a resumed run continues exactly.
Data parallelism is Lightning Fabric's DDP (``devices`` x ``num_nodes`` processes; under
torchrun or SLURM Fabric reads the ranks from the environment): ``batch_size`` is the global
batch, each rank trains on its slice and the losses gather negatives across ranks.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from ..backbones import create_encoder, patch_size_for
from ..configs import PretrainConfig, recipe_method_params
from ..data import dataset_classes, dataset_task, load_split
from ..errors import RunError
from ..methods import get_method, method_config
from ..runs import (
    CHECKPOINT,
    export_encoder,
    mark_progress,
    open_run_folder,
    prepare_run,
    run_state,
    truncate_metrics,
    unreadable_checkpoint,
)
from ..utils import resolve_device, stamp, to_jsonable
from .engine import check_batch, check_options, make_fabric, make_optimizer, make_scheduler
from .epoch import EpochLoop, epoch_line
from .loggers import RunLoggers
from .monitor import KNNMonitor

log = logging.getLogger(__name__)


def save_checkpoint(fabric, checkpoint: Path, state: dict) -> None:
    """Write ``checkpoint`` whole or not at all: into a ``.partial`` file renamed over it, so
    that a full disk or a kill while writing leaves the last complete checkpoint (or, for a
    new run's first, none: the folder is removed).

    Raises:
        RunError: the checkpoint could not be written (its reason, and what to do).
    """
    partial = checkpoint.with_name(checkpoint.name + ".partial")
    try:
        fabric.save(partial, state)
        if fabric.is_global_zero:
            os.replace(partial, checkpoint)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        reason = exc.strerror or str(exc)
        if checkpoint.is_file():
            advice = "the previous one is kept: free space and run the command with --resume"
        else:
            advice = "nothing is kept: free space and run the command again"
        raise RunError(f"writing the checkpoint {checkpoint} failed ({reason}); {advice}") from None


def rows_digest(rows) -> str:
    """SHA-256 of the training rows a ``data_fraction`` run chose (int64, in order)."""
    return hashlib.sha256(np.asarray(rows, dtype=np.int64).tobytes()).hexdigest()


def pretrain(
    config: PretrainConfig, output: str | Path, resume: bool = False, progress: bool = True
) -> Path:
    """Pretrain an encoder and write a run folder (see module docstring).

    Args:
        config: what to train.
        output: the run folder; must not exist yet unless ``resume``.
        resume: continue an interrupted run from ``output/checkpoints/last.ckpt`` (or start
            it, if it stopped before its first checkpoint); a complete run is left as is.
        progress: show a progress bar.

    Returns:
        The run folder.
    """
    output = Path(output)
    state = run_state(output)
    if resume and state.get("status") == "complete" and state.get("epochs_done") == config.epochs:
        log.info("%s is already complete", output)
        return output
    method_cls = get_method(config.method)
    method_config(method_cls, config.method_params)  # a bad --param fails before any loading
    patch_size = patch_size_for(config.backbone, config.size, config.patch_size)
    train = load_split(config.dataset, "train", config.size, config.data_root, config.download)
    n_split = len(train)
    check_options(config, method_cls)
    rows = train.pretraining_rows(config.data_fraction, config.seed)
    if len(rows) < n_split:
        train = train.subset(rows)
    check_batch(config, len(train))
    channels = train.images.shape[-1] if train.images.ndim == 4 else 1
    params = recipe_method_params(config.recipe, config.method, config.method_params, channels)
    hyperparameters = method_config(method_cls, params)
    val = None
    if config.knn_every:
        val = load_split(config.dataset, "val", config.size, config.data_root, config.download)
    device = resolve_device(config.device)
    fabric = make_fabric(config, device)
    torch.manual_seed(config.seed)
    encoder = create_encoder(config.backbone, config.init, config.size, patch_size)
    classes = dataset_classes(config.dataset, config.data_root)
    method = method_cls(encoder, hyperparameters, config.size, len(classes))
    config_json = {
        "pretrain": {**to_jsonable(config), "patch_size": patch_size},
        "method_config": hyperparameters,
        "data_files": train.files,
        "n_train": len(train),
        **(
            {"n_train_split": n_split, "train_rows_sha256": rows_digest(rows)}
            if len(rows) < n_split
            else {}
        ),
        "world_size": fabric.world_size,
        **stamp(),
    }
    load_checkpoint, lock, fresh, loggers = False, None, False, None
    if fabric.is_global_zero:  # before launching, so a refusal stops every rank
        lock, fresh = open_run_folder(output)
    try:
        if fabric.is_global_zero:
            load_checkpoint = prepare_run(output, to_jsonable(config_json), resume)
        fabric.launch()
        load_checkpoint = fabric.broadcast(load_checkpoint, src=0)

        if fabric.device.type == "cuda":
            method = method.to(memory_format=torch.channels_last)
        if config.compile:
            encoder.backbone.compile()
            method.compile_loss()
        optimizer = make_optimizer(
            method.parameters(), config.lr, config.weight_decay, fabric.device
        )
        updates_per_epoch = len(train) // config.batch_size // config.accumulate
        total_updates = updates_per_epoch * config.epochs
        scheduler = make_scheduler(
            optimizer, total_updates, config.warmup_fraction, config.warmup_steps
        )
        model, optimizer = fabric.setup(method, optimizer)
        model.mark_forward_method("training_step")  # through the strategy wrapper and autocast
        start_epoch = 0
        checkpoint = output / CHECKPOINT
        if load_checkpoint:
            state = {"model": model, "optimizer": optimizer}
            try:
                rest = fabric.load(checkpoint, state, weights_only=True)
            except (pickle.UnpicklingError, EOFError, RuntimeError) as exc:
                raise unreadable_checkpoint(checkpoint, exc) from exc
            scheduler.load_state_dict(rest["scheduler"])
            start_epoch = int(rest["epoch"])
            if fabric.is_global_zero:
                truncate_metrics(output / "metrics.jsonl", start_epoch * updates_per_epoch)
            log.info("resuming %s after epoch %d", output, start_epoch)
        if fabric.is_global_zero:
            mark_progress(output, start_epoch)
        loggers = RunLoggers(
            config.loggers, output, start_epoch * updates_per_epoch, fabric.is_global_zero
        )
        if start_epoch == 0:
            loggers.log_hyperparams(to_jsonable(config_json))
        monitor = None
        if val is not None:
            monitor = KNNMonitor(
                train, val, dataset_task(config.dataset, config.data_root), len(classes)
            )

        loop = EpochLoop(
            config, fabric, model, method, optimizer, scheduler, train, updates_per_epoch, loggers
        )
        metrics_file = output / "metrics.jsonl"
        with open(metrics_file, "a") if fabric.is_global_zero else nullcontext() as metrics:
            started = time.perf_counter()
            for epoch in range(start_epoch, config.epochs):
                summary = loop.run_epoch(epoch, metrics, progress)
                done = epoch + 1
                last_step = done * updates_per_epoch - 1
                epoch_metrics = {"train/epoch_loss": summary["loss"], "epoch": done}
                if monitor and (done % config.knn_every == 0 or done == config.epochs):
                    if fabric.is_global_zero:
                        record = {"epoch": epoch, "step": last_step}
                        record.update(monitor(encoder, fabric.device))
                        metrics.write(json.dumps(record) + "\n")
                        summary["knn_accuracy"] = record["knn_accuracy"]
                        epoch_metrics.update(
                            {f"val/{k}": v for k, v in record.items() if k.startswith("knn_")}
                        )
                    fabric.barrier()
                loggers.log_metrics(epoch_metrics, last_step)
                if fabric.is_global_zero:  # one line per epoch, on a terminal or not
                    elapsed = time.perf_counter() - started
                    left = elapsed / (done - start_epoch) * (config.epochs - done)
                    log.info("%s", epoch_line(done, config.epochs, summary, elapsed, left))
                if done % config.checkpoint_every == 0 or done == config.epochs:
                    state = {
                        "model": model,
                        "optimizer": optimizer,
                        "scheduler": scheduler.state_dict(),
                        "epoch": done,
                    }
                    save_checkpoint(fabric, checkpoint, state)
                    loggers.save()
                    if fabric.is_global_zero:
                        metrics.flush()
                        mark_progress(output, done)
        if fabric.is_global_zero:
            export_encoder(encoder, output, config.epochs, method.output_head())
        loggers.finalize("success")
        fabric.barrier()
        return output
    except BaseException:
        if loggers:
            loggers.finalize("failed")
        # a new run that stops before its first checkpoint leaves nothing behind
        if fresh and not (output / CHECKPOINT).is_file():
            shutil.rmtree(output, ignore_errors=True)
        raise
    finally:
        if lock is not None:
            lock.release()
