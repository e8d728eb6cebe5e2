"""A table of the registered datasets and the files a data root holds."""

from __future__ import annotations

import os

import polars as pl

from .loading import candidate_files, data_root
from .registry import DATASETS, SIZES


def dataset_table(root: str | os.PathLike | None = None) -> pl.DataFrame:
    """One row per registered dataset: task, channels, classes, split sizes, sizes on disk."""
    folder = data_root(root)
    rows = []
    for info in DATASETS.values():
        present = [
            str(s)
            for s in SIZES
            if any((folder / name).is_file() for name in candidate_files(info.name, s))
        ]
        rows.append(
            {
                "dataset": info.name,
                "family": info.family,
                "task": info.task,
                "channels": info.n_channels,
                "classes": info.n_classes,
                "train": info.n_samples["train"],
                "val": info.n_samples["val"],
                "test": info.n_samples["test"],
                "on_disk": ",".join(present)
                or ("generated on use" if info.family == "demo" else "-"),
            }
        )
    return pl.DataFrame(rows)
