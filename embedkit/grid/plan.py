"""Planning a grid: its cells and what they cost, before anything runs."""

from __future__ import annotations

import os
from pathlib import Path

import polars as pl

from .cells import cell_state, cost, expand
from .spec import GridSpec

# Images per second that one H100 (bf16) trains a ResNet-50 on at 28 px, derived from the
# measured bare forward of 36,327 img/s (BENCHMARKS.md, issue 12): a training step costs
# about 3 forwards and SSL methods feed 2 views. Other backbones and sizes are scaled by
# their counted forward FLOPs (``plan``); pass --throughput to use your own figure.
H100_RESNET50_28PX_FORWARD = 36_327.0
TRAIN_COST_IN_FORWARDS = 3 * 2


def forward_flops(backbone: str, size: int, patch_size: int = 0) -> float:
    """Forward FLOPs of one image, counted by torch on the CPU (no weights loaded)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ..backbones import create_encoder

    encoder = create_encoder(backbone, "random", size, patch_size).eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        encoder(torch.zeros(1, 3, size, size))
    return float(counter.get_total_flops())


def plan(
    spec: GridSpec,
    output: str | os.PathLike | None = None,
    throughput: float = 0.0,
    data_root: str | None = None,
):
    """The cells, what each costs, and the state of those an output folder already has.

    Args:
        throughput: pretraining images per second on one GPU; 0 uses a default derived
            from a measured H100 figure and each backbone's counted FLOPs.
        data_root: where the user's datasets are counted.

    Returns:
        One row per cell (``cell, kind, label, method, dataset, backbone, init, size,
        image_epochs, embed_images, gpu_hours, state``) and a totals dict.
    """
    cells = expand(spec)
    reference = forward_flops("resnet50", 28)
    rates: dict[tuple[str, int], float] = {}
    rows = []
    for cell in cells:
        key = (cell.axes["backbone"], cell.axes["size"])
        if key not in rates:
            flops = forward_flops(*key)
            rates[key] = H100_RESNET50_28PX_FORWARD * reference / flops
        forward_rate = rates[key]
        train_rate = throughput or forward_rate / TRAIN_COST_IN_FORWARDS
        images = cost(cell, data_root)
        hours = images["image_epochs"] / train_rate / 3600
        hours += images["embed_images"] / forward_rate / 3600
        state = cell_state(Path(output), cell.id)["state"] if output else "pending"
        rows.append(
            {
                "cell": cell.id,
                "kind": cell.kind,
                "label": cell.label,
                **{k: str(cell.axes[k]) for k in ("method", "dataset", "backbone", "init")},
                "size": cell.axes["size"],
                **images,
                "gpu_hours": hours,
                "state": state,
            }
        )
    table = pl.DataFrame(rows)
    totals = {
        "cells": len(cells),
        "pretraining_cells": sum(c.kind == "pretrain" for c in cells),
        "baseline_cells": sum(c.kind == "baseline" for c in cells),
        "image_epochs": float(table["image_epochs"].sum()),
        "embed_images": float(table["embed_images"].sum()),
        "gpu_hours": float(table["gpu_hours"].sum()),
        "throughput": "stated" if throughput else "derived from one measured H100 figure",
    }
    return table, totals


# --- status -------------------------------------------------------------------------------
