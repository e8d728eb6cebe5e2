"""A table of the registered datasets, the user's own and the files a data root holds."""

from __future__ import annotations

import os

import polars as pl

from ..catalog import SIZES
from ..errors import ConfigError, EmbedkitError
from .custom import user_dataset_names
from .loading import candidate_files, data_root, find_file
from .names import find_dataset, get_info
from .registry import DATASETS, GROUPS


def dataset_table(root: str | os.PathLike | None = None) -> pl.DataFrame:
    """One row per registered dataset and per dataset of the user's in the data root: task,
    channels, classes, split sizes, sizes on disk and, for the user's, where it is. A user's
    dataset that cannot be read is listed with the reason in ``to_get``."""
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
                "to_get": ""
                if info.family == "demo" or len(present) == len(SIZES)
                else f"embedkit download --dataset {info.name} --size "
                + ",".join(str(s) for s in SIZES if str(s) not in present),
                "source": "",
            }
        )
    for name in user_dataset_names(folder):
        rows.append(_user_row(name, folder))
    return pl.DataFrame(rows)


def _user_row(name: str, folder) -> dict:
    try:
        user = find_dataset(name, folder)
    except EmbedkitError as exc:
        row = dict.fromkeys(("task", "channels", "classes", "train", "val", "test"))
        return {
            "dataset": name,
            "family": "user",
            **row,
            "on_disk": "unreadable",
            "to_get": str(exc),
            "source": str(folder / name),
        }
    info = user.info
    return {
        "dataset": name,
        "family": "user",
        "task": info.task,
        "channels": info.n_channels,
        "classes": info.n_classes,
        **{s: info.n_samples.get(s) for s in ("train", "val", "test")},
        "on_disk": f"{user.kind}, any size",
        "to_get": "",
        "source": info.source,
    }


def download(
    datasets: tuple[str, ...], sizes: tuple[int, ...], root: str | os.PathLike | None = None
) -> pl.DataFrame:
    """Fetch MedMNIST files into the data root with medmnist's downloader (files already
    there are kept); one row per dataset and size with the file and its size on disk.

    Args:
        datasets: registered names, or ``all`` for the 12 MedMNIST 2D datasets.
        sizes: image sizes (28, 64, 128, 224).
        root: the data root (see ``embedkit.data.data_root``).
    """
    names = [n for d in datasets for n in GROUPS.get(d, (d,))]
    infos = [get_info(name) for name in names]  # unknown names fail before any download
    for info in infos:
        if info.family == "demo":
            raise ConfigError(f"{info.name} is generated on use: there is nothing to download")
    for size in sizes:
        if size not in SIZES:
            raise ConfigError(f"unsupported image size {size}: choose from {SIZES}")
    folder = data_root(root)
    rows = []
    for info in infos:
        for size in sizes:
            path = find_file(info, size, folder, download=True)
            rows.append(
                {
                    "dataset": info.name,
                    "size": size,
                    "file": str(path),
                    "mb": round(path.stat().st_size / 2**20, 1),
                }
            )
    return pl.DataFrame(rows)
