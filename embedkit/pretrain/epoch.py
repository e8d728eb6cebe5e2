"""One pretraining epoch: sampling, gradient accumulation, the method's hooks, metric lines
(``metrics.jsonl`` and the loggers), and the one-line epoch summary of ``pretrain``."""

from __future__ import annotations

import json
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..augment import to_float
from ..errors import RunError
from ..host_syncs import upload

LOG_EVERY = 20  # optimiser steps between metric lines' flush (and loss checks)


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


class EpochLoop:
    """One epoch of optimiser steps: sampling, accumulation, hooks and metric lines."""

    def __init__(
        self, config, fabric, model, method, optimizer, scheduler, train, updates, loggers
    ):
        self.config, self.fabric, self.model, self.method = config, fabric, model, method
        self.loggers = loggers
        self.optimizer, self.scheduler = optimizer, scheduler
        self.images, self.labels = train.images, train.labels
        self.n_train, self.updates = len(train), updates
        self.local_batch = config.batch_size // fabric.world_size

    def _batch(self, order: np.ndarray, pass_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = pass_index * self.config.batch_size + self.fabric.global_rank * self.local_batch
        rows = np.sort(order[start : start + self.local_batch])
        device = self.fabric.device  # pinned, non-blocking copies: the GPU need not finish first
        images = upload(np.array(self.images[rows]), device, torch.uint8)
        batch = to_float(images).contiguous(memory_format=torch.channels_last)
        return batch, upload(self.labels[rows], device, torch.int64)

    def run_epoch(self, epoch: int, metrics, progress: bool) -> dict[str, float]:
        """Train one epoch; return its mean loss, images per second and last lr."""
        config, fabric, method = self.config, self.fabric, self.method
        self.model.train()
        order = np.random.default_rng([config.seed, epoch]).permutation(self.n_train)
        generator = torch.Generator().manual_seed(  # augmentation draws, on the host
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
