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

import json
import logging
import pickle
import shutil
import time
from collections.abc import Mapping
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import to_float
from ..backbones import create_encoder, patch_size_for
from ..data import dataset_classes, dataset_task, load_split
from ..errors import RunError
from ..methods import get_method, method_config
from ..utils import resolve_device, stamp, to_jsonable
from .engine import check_config, make_fabric, make_scheduler
from .loggers import RunLoggers
from .monitor import KNNMonitor
from .runs import (
    CHECKPOINT,
    export_encoder,
    mark_progress,
    open_run_folder,
    prepare_run,
    run_state,
    truncate_metrics,
    unreadable_checkpoint,
)

log = logging.getLogger(__name__)
LOG_EVERY = 20  # optimiser steps between metric lines' flush (and loss checks)


@dataclass(frozen=True)
class PretrainConfig:
    """How an encoder is pretrained; saved as ``config.json`` in the run folder.

    Attributes:
        dataset: a dataset entry (``pathmnist``, ``organamnist+organcmnist``); train split.
        size: image size in pixels.
        method: a registered method (``embedkit.methods.METHODS``).
        backbone: a registered backbone (``embedkit.backbones.BACKBONES``).
        init: ``random``, ``imagenet``, ``timm:TAG`` or a weights file.
        patch_size: ViT patch size; 0 picks one for ``size``.
        epochs: passes over the training split.
        batch_size: global images per forward pass (the last partial batch is dropped).
        accumulate: forward passes per optimiser step (gradient accumulation).
        lr: peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with linear warmup before the cosine decay.
        seed: seeds initialisation, sampling order and augmentations.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        devices: processes per node (GPUs, or CPU processes on the gloo backend).
        num_nodes: machines.
        precision: a Fabric precision; ``auto`` is ``bf16-mixed`` on GPU, ``32-true`` on CPU.
        compile: ``torch.compile`` the backbone.
        data_root: where the npz files are (see ``embedkit.data.data_root``).
        download: fetch missing MedMNIST files with medmnist's downloader.
        checkpoint_every: save a checkpoint every this many epochs (and at the end).
        knn_every: run the online kNN monitor on the val split every this many epochs (0: off).
        loggers: experiment loggers besides ``metrics.jsonl``: ``csv``, ``tensorboard``,
            ``wandb`` (see ``embedkit.pretrain.loggers``).
        method_params: overrides of the method's ``Config`` fields.
    """

    dataset: str = "demo-med"
    size: int = 28
    method: str = "simclr"
    backbone: str = "resnet18"
    init: str = "random"
    patch_size: int = 0
    epochs: int = 100
    batch_size: int = 256
    accumulate: int = 1
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    compile: bool = False
    data_root: str | None = None
    download: bool = False
    checkpoint_every: int = 1
    knn_every: int = 0
    loggers: tuple[str, ...] = ()
    method_params: Mapping[str, Any] = field(default_factory=dict)


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
    hyperparameters = method_config(method_cls, config.method_params)
    patch_size = patch_size_for(config.backbone, config.size, config.patch_size)
    train = load_split(config.dataset, "train", config.size, config.data_root, config.download)
    check_config(config, len(train), method_cls.min_batch_size)
    val = None
    if config.knn_every:
        val = load_split(config.dataset, "val", config.size, config.data_root, config.download)
    device = resolve_device(config.device)
    fabric = make_fabric(config, device)
    torch.manual_seed(config.seed)
    encoder = create_encoder(config.backbone, config.init, config.size, patch_size)
    classes = dataset_classes(config.dataset)
    method = method_cls(encoder, hyperparameters, config.size, len(classes))
    config_json = {
        "pretrain": {**to_jsonable(config), "patch_size": patch_size},
        "method_config": hyperparameters,
        "data_files": train.files,
        "n_train": len(train),
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
        optimizer = torch.optim.AdamW(
            method.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        updates_per_epoch = len(train) // config.batch_size // config.accumulate
        total_updates = updates_per_epoch * config.epochs
        scheduler = make_scheduler(optimizer, total_updates, config.warmup_fraction)
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
            monitor = KNNMonitor(train, val, dataset_task(config.dataset), len(classes))

        loop = _Loop(
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
                    fabric.save(checkpoint, state)
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


def _clock(seconds: float) -> str:
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}"


def epoch_line(done: int, epochs: int, summary: dict[str, float], elapsed: float, left: float):
    """``epoch 3/100: loss 4.1234, 1,234 img/s, lr 2.90e-04, kNN val acc 0.812, elapsed
    0:01:23, about 0:45:12 left`` (the kNN part only on monitored epochs)."""
    parts = [
        f"epoch {done}/{epochs}: loss {summary['loss']:.4f}",
        f"{summary['images_per_s']:,.0f} img/s",
        f"lr {summary['lr']:.2e}",
    ]
    if "knn_accuracy" in summary:
        parts.append(f"kNN val acc {summary['knn_accuracy']:.3f}")
    parts += [f"elapsed {_clock(elapsed)}", f"about {_clock(left)} left"]
    return ", ".join(parts)


class _Loop:
    """One epoch of optimiser steps: sampling, accumulation, hooks and metric lines."""

    def __init__(
        self, config, fabric, model, method, optimizer, scheduler, train, updates, loggers
    ):
        self.config, self.fabric, self.model, self.method = config, fabric, model, method
        self.loggers = loggers
        self.optimizer, self.scheduler = optimizer, scheduler
        self.images, self.labels = train.images, torch.from_numpy(train.labels)
        self.n_train, self.updates = len(train), updates
        self.local_batch = config.batch_size // fabric.world_size

    def _batch(self, order: np.ndarray, pass_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = pass_index * self.config.batch_size + self.fabric.global_rank * self.local_batch
        rows = np.sort(order[start : start + self.local_batch])
        batch = torch.from_numpy(np.array(self.images[rows])).to(self.fabric.device)
        batch = to_float(batch).contiguous(memory_format=torch.channels_last)
        return batch, self.labels[rows].to(self.fabric.device)

    def run_epoch(self, epoch: int, metrics, progress: bool) -> dict[str, float]:
        """Train one epoch; return its mean loss, images per second and last lr."""
        config, fabric, method = self.config, self.fabric, self.method
        self.model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(self.n_train)
        generator = torch.Generator(device=fabric.device).manual_seed(
            (config.seed * 1_000_003 + epoch) * 4099 + fabric.global_rank
        )
        bar = tqdm(
            range(self.updates),
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=None if progress and fabric.is_global_zero else True,
            leave=False,
            unit="step",
        )
        pending, window_start = [], time.perf_counter()
        self.epoch_losses, epoch_start = [], time.perf_counter()
        for update in bar:
            global_step = epoch * self.updates + update
            method.progress = global_step / (self.updates * config.epochs)
            method.epoch = epoch
            loss_sum = torch.zeros((), device=fabric.device)
            for micro in range(config.accumulate):
                images, labels = self._batch(order, update * config.accumulate + micro)
                skip_sync = fabric.world_size > 1 and micro < config.accumulate - 1
                with fabric.no_backward_sync(self.model, enabled=skip_sync):
                    loss = self.model.training_step(images, labels, generator)
                    fabric.backward(loss / config.accumulate)
                loss_sum += loss.detach() / config.accumulate
            method.before_optimizer_step()
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            method.after_step((global_step + 1) / (self.updates * config.epochs))
            pending.append((global_step, loss_sum, self.scheduler.get_last_lr()[0]))
            if len(pending) == LOG_EVERY or update == self.updates - 1:
                rate = len(pending) * config.batch_size * config.accumulate
                rate /= time.perf_counter() - window_start
                self._flush(pending, epoch, rate, metrics, bar)
                pending, window_start = [], time.perf_counter()
        seconds = time.perf_counter() - epoch_start
        images = self.updates * config.batch_size * config.accumulate
        return {
            "loss": float(np.mean(self.epoch_losses)) if self.epoch_losses else float("nan"),
            "images_per_s": images / seconds if seconds > 0 else 0.0,
            "lr": self.scheduler.get_last_lr()[0],
        }

    def _flush(self, pending, epoch: int, rate: float, metrics, bar) -> None:
        losses = self.fabric.all_reduce(torch.stack([p[1] for p in pending]), reduce_op="mean")
        losses = losses.float().cpu().tolist()
        self.epoch_losses.extend(losses)
        for (step, _, lr), loss in zip(pending, losses, strict=True):
            if not np.isfinite(loss):
                raise RunError(
                    f"the loss became {loss} at epoch {epoch + 1}: lower --lr or raise --batch-size"
                )
            if metrics is not None:
                record = {"epoch": epoch, "step": step, "loss": loss, "lr": lr}
                metrics.write(json.dumps({**record, "images_per_s": rate}) + "\n")
            if self.loggers:
                self.loggers.log_metrics(
                    {"train/loss": loss, "train/lr": lr, "train/images_per_s": rate}, step
                )
        bar.set_postfix(loss=f"{losses[-1]:.3f}", img_s=f"{rate:.0f}")
