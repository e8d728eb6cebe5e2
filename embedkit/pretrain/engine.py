"""Checks and engine pieces of ``embedkit.pretrain``: option checks, Fabric, LR schedule."""

from __future__ import annotations

import math
import os
import shutil

import torch

from ..backbones import get_backbone
from ..catalog import BACKBONE_SPECS
from ..configs import RECIPES
from ..data import check_size
from ..errors import ConfigError
from .loggers import check_loggers

PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true")


def check_batch(config, n_train: int) -> None:
    """Refuse a batch larger than the ``n_train`` images pretrained on (after
    ``check_options``, once the data and its ``data_fraction`` share are known)."""
    if config.batch_size * config.accumulate > n_train:
        raise ConfigError(
            f"--batch-size {config.batch_size} x --accumulate {config.accumulate} exceeds the "
            f"{n_train} training images of {config.dataset}: use a smaller batch"
        )


def check_options(config, method_cls) -> None:
    """Refuse options that cannot work, before anything is written: every check that needs
    no data (a grid file runs them on every cell at ``grid plan``, before any cell runs);
    ``method_cls`` is the method's class."""
    check_size(config.size)
    backbone = get_backbone(config.backbone)
    if method_cls.vit_only and not backbone.vit:
        vits = ", ".join(b.name for b in BACKBONE_SPECS if b.vit)
        raise ConfigError(
            f"{config.method} masks patch tokens and needs a vision transformer, not "
            f"{config.backbone}: use --backbone {vits.split(',')[0]} (ViTs: {vits})"
        )
    if not 0 < config.data_fraction <= 1:
        raise ConfigError(
            f"--data-fraction is a share of the training images, above 0 and at most 1, not "
            f"{config.data_fraction}"
        )
    for name in ("epochs", "accumulate", "devices", "num_nodes", "checkpoint_every"):
        if getattr(config, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1")
    if not config.lr > 0:
        raise ConfigError(f"--lr must be positive, not {config.lr}")
    if not config.weight_decay >= 0:
        raise ConfigError(f"--weight-decay must be 0 or positive, not {config.weight_decay}")
    if not 0 <= config.warmup_fraction < 1:
        raise ConfigError(
            f"--warmup is a share of the steps, from 0 up to (not including) 1, not "
            f"{config.warmup_fraction}"
        )
    if config.recipe not in RECIPES:
        raise ConfigError(f"unknown recipe '{config.recipe}': use {', '.join(RECIPES)}")
    if config.warmup_steps < 0:
        raise ConfigError(f"--warmup-steps must be 0 or more, not {config.warmup_steps}")
    if config.knn_every < 0:
        raise ConfigError("--knn-every must be 0 (off) or positive")
    if not 0 <= config.seed < 2**32:
        raise ConfigError(f"--seed must lie in 0..2**32-1 (numpy's range), not {config.seed}")
    check_loggers(config.loggers)
    if config.compile and not c_compiler():
        raise ConfigError(
            "--compile needs a C/C++ compiler for the code torch.compile generates (gcc, "
            "clang or $CC/$CXX): none found; install one or leave --compile out"
        )
    if config.precision not in PRECISIONS:
        raise ConfigError(f"unknown precision '{config.precision}': use {', '.join(PRECISIONS)}")
    world = config.devices * config.num_nodes
    if config.batch_size % world:
        raise ConfigError(
            f"--batch-size {config.batch_size} does not split over {world} processes: "
            f"use a multiple of {world}"
        )
    if config.batch_size // world < method_cls.min_batch_size:
        raise ConfigError(
            f"--batch-size {config.batch_size} is too small for {config.method}: "
            f"use at least {method_cls.min_batch_size} per process"
        )


def c_compiler() -> str | None:
    """A C/C++ compiler on the PATH, as torch.compile needs one: inductor builds its CPU
    kernels with a C++ compiler, and Triton its GPU launchers with a C one."""
    names = [os.environ.get("CXX"), os.environ.get("CC"), "g++", "gcc", "clang++", "clang"]
    return next((found for name in names if name and (found := shutil.which(name))), None)


def make_fabric(config, device: torch.device):
    """A Lightning Fabric for the device, process count and precision of ``config``."""
    from lightning_fabric import Fabric

    if device.type == "cuda" and device.index is not None and config.devices > 1:
        raise ConfigError(f"--device {device} names one GPU: use --device cuda with --devices")
    devices = [device.index] if device.index is not None else config.devices
    precision = config.precision
    if precision == "auto":
        precision = "bf16-mixed" if device.type == "cuda" else "32-true"
    world = config.devices * config.num_nodes
    return Fabric(
        accelerator=device.type,
        devices=devices,
        num_nodes=config.num_nodes,
        strategy="ddp" if world > 1 else "auto",
        precision=precision,
    )


def lr_factor(step: int, total: int, warmup: int) -> float:
    """Linear warmup to 1 over ``warmup`` steps, then a cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def make_optimizer(parameters, lr: float, weight_decay: float, device: torch.device):
    """AdamW, fused where torch has a fused kernel for the device (CPU and CUDA): one pass
    over all parameters instead of a Python loop over tensors (3x faster on a CPU for a
    ResNet-50), and the step counters live on the device, so nothing is read back to the
    host during a step."""
    fused = True if device.type in ("cpu", "cuda") else None
    return torch.optim.AdamW(parameters, lr=lr, weight_decay=weight_decay, fused=fused)


def make_scheduler(optimizer, total: int, warmup_fraction: float, warmup_steps: int = 0):
    """Warmup-then-cosine ``LambdaLR`` over ``total`` optimiser steps; the warmup lasts
    ``warmup_fraction`` of them plus ``warmup_steps`` (at most all of them)."""
    warmup = min(total, int(warmup_fraction * total) + warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, total, warmup))
