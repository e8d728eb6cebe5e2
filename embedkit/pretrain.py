"""Self-supervised pretraining on Lightning Fabric, into a self-describing run folder.

A run folder holds:

- ``config.json``: the ``PretrainConfig``, the method's full hyperparameters and the data files.
- ``run.json``: status (``running`` or ``complete``), epochs done, encoder checksum, versions.
- ``metrics.jsonl``: one line per optimiser step (epoch, step, loss, lr, images per second).
- ``checkpoints/last.ckpt``: model, optimiser, scheduler and position, for ``resume``.
- ``encoder.safetensors``: the trained backbone, written last; ``embedkit embed --run`` reads it.

Every random draw is seeded from ``(seed, epoch)``, so a resumed run continues exactly.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .augment import to_float
from .backbones import create_encoder, get_backbone
from .data import check_size, dataset_classes, load_split
from .errors import ConfigError, RunError
from .methods import get_method
from .methods.base import PretrainMethod
from .runs import (
    CHECKPOINT,
    export_encoder,
    mark_progress,
    prepare_run,
    run_state,
    truncate_metrics,
)
from .utils import resolve_device, stamp, to_jsonable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PretrainConfig:
    """How an encoder is pretrained; saved as ``config.json`` in the run folder.

    Attributes:
        dataset: a dataset entry (``pathmnist``, ``organamnist+organcmnist``); train split.
        size: image size in pixels.
        method: a registered method (``embedkit.methods.METHODS``).
        backbone: a registered backbone (``embedkit.backbones.BACKBONES``).
        init: ``random``, ``imagenet`` or a weights file.
        epochs: passes over the training split.
        batch_size: images per optimiser step (the last partial batch is dropped).
        lr: peak AdamW learning rate, reached after warmup.
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with linear warmup before the cosine decay.
        seed: seeds initialisation, sampling order and augmentations.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: where the npz files are (see ``embedkit.data.data_root``).
        download: fetch missing MedMNIST files with medmnist's downloader.
        checkpoint_every: save a checkpoint every this many epochs (and at the end).
        method_params: overrides of the method's ``Config`` fields.
    """

    dataset: str = "demo-med"
    size: int = 28
    method: str = "simclr"
    backbone: str = "resnet18"
    init: str = "random"
    epochs: int = 100
    batch_size: int = 256
    lr: float = 3e-4
    weight_decay: float = 0.05
    warmup_fraction: float = 0.1
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    checkpoint_every: int = 1
    method_params: Mapping[str, Any] = field(default_factory=dict)


def _method_config(method_cls: type[PretrainMethod], params: Mapping[str, Any]):
    names = {f.name for f in dataclasses.fields(method_cls.Config)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(
            f"{method_cls.name} has no parameter {', '.join(unknown)}: "
            f"valid ones are {', '.join(sorted(names))}"
        )
    return method_cls.Config(**params)


def _lr_factor(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _check(config: PretrainConfig, n_train: int, min_batch: int) -> None:
    check_size(config.size)
    get_backbone(config.backbone)
    if config.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, not {config.epochs}")
    if config.batch_size < min_batch:
        raise ConfigError(
            f"--batch-size {config.batch_size} is too small for {config.method}: "
            f"use at least {min_batch}"
        )
    if config.batch_size > n_train:
        raise ConfigError(
            f"--batch-size {config.batch_size} exceeds the {n_train} training "
            f"images of {config.dataset}: use a smaller batch"
        )


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
    from lightning_fabric import Fabric

    output = Path(output)
    state = run_state(output)
    if resume and state.get("status") == "complete" and state.get("epochs_done") == config.epochs:
        log.info("%s is already complete", output)
        return output
    method_cls = get_method(config.method)
    method_config = _method_config(method_cls, config.method_params)
    train = load_split(config.dataset, "train", config.size, config.data_root, config.download)
    _check(config, len(train), method_cls.min_batch_size)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    encoder = create_encoder(config.backbone, config.init)
    n_classes = len(dataset_classes(config.dataset))
    model = method_cls(encoder, method_config, config.size, n_classes)
    config_json = {
        "pretrain": config,
        "method_config": method_config,
        "data_files": train.files,
        "n_train": len(train),
        **stamp(),
    }
    load_checkpoint = prepare_run(output, to_jsonable(config_json), resume)

    fabric = Fabric(
        accelerator=device.type,
        devices=[device.index or 0] if device.type == "cuda" else 1,
        precision="bf16-mixed" if device.type == "cuda" else "32-true",
    )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    steps_per_epoch = len(train) // config.batch_size
    total_steps = steps_per_epoch * config.epochs
    warmup = int(config.warmup_fraction * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, total_steps, warmup)
    )
    model, optimizer = fabric.setup(model, optimizer)
    model.mark_forward_method("training_step")  # through the strategy wrapper and autocast
    start_epoch = 0
    checkpoint = output / CHECKPOINT
    if load_checkpoint:
        state = {"model": model, "optimizer": optimizer}
        rest = fabric.load(checkpoint, state, weights_only=True)
        scheduler.load_state_dict(rest["scheduler"])
        start_epoch = int(rest["epoch"])
        truncate_metrics(output / "metrics.jsonl", start_epoch * steps_per_epoch)
        log.info("resuming %s after epoch %d", output, start_epoch)
    mark_progress(output, start_epoch)

    images, labels = train.images, torch.from_numpy(train.labels)
    with open(output / "metrics.jsonl", "a") as metrics:
        for epoch in range(start_epoch, config.epochs):
            model.train()
            order = np.random.default_rng([config.seed, epoch]).permutation(len(train))
            generator = torch.Generator(device=fabric.device).manual_seed(
                config.seed * 1_000_003 + epoch
            )
            bar = tqdm(
                range(steps_per_epoch),
                desc=f"epoch {epoch + 1}/{config.epochs}",
                disable=None if progress else True,
                leave=False,
                unit="step",
            )
            for step_in_epoch in bar:
                start = time.perf_counter()
                batch_idx = np.sort(order[step_in_epoch * config.batch_size :][: config.batch_size])
                batch = torch.from_numpy(np.array(images[batch_idx]))
                batch = to_float(batch.to(fabric.device, non_blocking=True))
                batch = batch.contiguous(memory_format=torch.channels_last)
                loss = model.training_step(batch, labels[batch_idx].to(fabric.device), generator)
                if not torch.isfinite(loss):
                    raise RunError(
                        f"the loss became {loss.item()} at epoch {epoch + 1}: "
                        f"lower --lr or raise --batch-size"
                    )
                optimizer.zero_grad(set_to_none=True)
                fabric.backward(loss)
                optimizer.step()
                scheduler.step()
                global_step = epoch * steps_per_epoch + step_in_epoch
                model.after_step((global_step + 1) / total_steps)
                rate = len(batch_idx) / (time.perf_counter() - start)
                record = {
                    "epoch": epoch,
                    "step": global_step,
                    "loss": loss.item(),
                    "lr": scheduler.get_last_lr()[0],
                    "images_per_s": rate,
                }
                metrics.write(json.dumps(record) + "\n")
                bar.set_postfix(loss=f"{record['loss']:.3f}", img_s=f"{rate:.0f}")
            metrics.flush()
            done = epoch + 1
            if done % config.checkpoint_every == 0 or done == config.epochs:
                state = {
                    "model": model,
                    "optimizer": optimizer,
                    "scheduler": scheduler.state_dict(),
                    "epoch": done,
                }
                fabric.save(checkpoint, state)
                mark_progress(output, done)
            log.info("epoch %d/%d loss %.4f", done, config.epochs, record["loss"])
    if fabric.is_global_zero:
        export_encoder(encoder, output, config.epochs)
    return output
