"""Listing and verifying embedding stores (``embedkit store ls`` and ``embedkit store verify``)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import polars as pl
import zarr

from ..errors import StoreError
from ..lock import LOCK
from .chunks import chunk_digest, read_chunk
from .reader import EmbeddingStore, child_groups, dataset_attr_problems


def find_stores(paths: list[str | os.PathLike]) -> list[EmbeddingStore]:
    """Stores named directly, or found (recursively) as ``*.zarr`` folders under folders."""
    stores = []
    for path in map(Path, paths):
        if (path / "zarr.json").is_file():
            stores.append(EmbeddingStore(path))
        elif path.is_dir():
            stores.extend(
                EmbeddingStore(p)
                for p in sorted(path.rglob("*.zarr"))
                if (p / "zarr.json").is_file()
            )
        else:
            raise StoreError(f"{path} is neither a store nor a folder")
    if not stores:
        raise StoreError(f"no embedding store found in {', '.join(map(str, paths))}")
    return stores


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def list_stores(paths: list[str | os.PathLike]) -> pl.DataFrame:
    """One row per store, dataset and split: sizes on disk and provenance."""
    rows = []
    for store in find_stores(paths):
        encoder = store.encoder
        for dataset in store.datasets():
            for split in store.splits(dataset):
                attrs = store.split_attrs(dataset, split)
                rows.append(
                    {
                        "store": str(store.path),
                        "encoder": encoder["name"],
                        "pretrain_dataset": encoder.get("pretrain_dataset") or "",
                        "dataset": dataset,
                        "split": split,
                        "n": attrs["n"],
                        "dim": attrs["dim"],
                        "head_dim": attrs.get("head_dim", 0),
                        "dtype": attrs.get("dtype", "float32"),
                        "size": attrs.get("size"),
                        "origin": attrs.get("data_file", {}).get("origin", ""),
                        "mb": round(_folder_bytes(store.path / dataset / split) / 2**20, 2),
                        "created": attrs["created"],
                    }
                )
    return pl.DataFrame(rows)


def _check_labels(labels: np.ndarray, dataset_attrs: dict) -> list[str]:
    """Labels against the recorded task and classes (width, range)."""
    names = dataset_attrs.get("class_names")
    task, n_classes = dataset_attrs.get("task"), len(names) if isinstance(names, list) else 0
    if not n_classes or labels.ndim != 2 or not labels.size:
        return [] if labels.ndim == 2 else [f"labels have shape {labels.shape}, expected (N, L)"]
    width = n_classes if task == "multi-label" else 1
    if labels.shape[1] != width:
        return [f"labels have {labels.shape[1]} columns, {task} {n_classes} classes need {width}"]
    high = 1 if task == "multi-label" else n_classes - 1
    low_seen, high_seen = int(labels.min()), int(labels.max())
    if low_seen < 0 or high_seen > high:
        return [
            f"labels range {low_seen}..{high_seen}, outside 0..{high} of the {n_classes} "
            f"{'labels' if task == 'multi-label' else 'classes'} recorded for the dataset"
        ]
    return []


def _split_folder_problem(folder: Path) -> str | None:
    """Why a split folder is not a readable complete split (None when it is)."""
    try:
        meta = json.loads((folder / "zarr.json").read_text())
    except FileNotFoundError:
        return "split folder without zarr.json"
    except (OSError, ValueError):
        return "zarr.json is damaged (not valid JSON)"
    if meta.get("attributes", {}).get("complete") is not True:
        return "not marked complete (its zarr.json lacks complete: true)"
    return None


def _check_split(store: EmbeddingStore, dataset: str, split: str, dataset_attrs: dict) -> list[str]:
    problems = []
    group = zarr.open_group(str(store.path / dataset / split), mode="r", zarr_format=3)
    attrs = dict(group.attrs)
    try:
        embeddings, labels, indices = group["embeddings"], group["labels"], group["indices"]
    except KeyError as exc:
        return [f"array {exc.args[0]} missing"]
    n, dim = attrs.get("n"), attrs.get("dim")
    if embeddings.shape != (n, dim):
        problems.append(f"embeddings {embeddings.shape}, attributes say ({n}, {dim})")
    if labels.shape[0] != n or indices.shape != (n,):
        problems.append(f"labels {labels.shape} / indices {indices.shape} for {n} rows")
    if str(embeddings.dtype) != attrs.get("dtype", "float32"):
        problems.append(f"embeddings are {embeddings.dtype}, attributes say {attrs.get('dtype')}")
    if labels.dtype != np.int64 or indices.dtype != np.int64:
        problems.append(f"labels {labels.dtype} / indices {indices.dtype}, expected int64")
    elif labels.shape[0] == n:
        problems.extend(_check_labels(labels[:], dataset_attrs))
    for name, array in (("labels", labels), ("indices", indices)):
        recorded = attrs.get(f"{name}_sha256")
        if recorded is None:
            problems.append(f"no {name} checksum recorded (written by an older embedkit)")
        elif chunk_digest(array[:]) != recorded:
            problems.append(f"{name} differ from the checksum recorded at write time")
    digests = attrs.get("chunk_sha256")
    rows = attrs.get("rows_per_chunk", embeddings.chunks[0])
    finite = True
    for i in range(-(-embeddings.shape[0] // rows)):
        try:
            values = read_chunk(group, i, rows)
        except Exception as exc:  # zarr raises codec errors for truncated chunk files
            problems.append(f"chunk {i} unreadable ({type(exc).__name__})")
            continue
        finite = finite and bool(np.isfinite(values).all())
        if digests is not None and (i >= len(digests) or chunk_digest(values) != digests[i]):
            problems.append(f"chunk {i} differs from the checksum recorded at write time")
    if not finite:
        problems.append("NaN or inf embeddings")
    if digests is None:
        problems.append("no chunk checksums recorded (store written by an older embedkit)")
    return problems


def _problem_row(dataset: str, split: str, problem: str) -> dict:
    return {"dataset": dataset, "split": split, "n": None, "status": "bad", "problems": problem}


def verify_store(path: str | os.PathLike) -> pl.DataFrame:
    """Check every split of a store; one row per split with ``problems`` (empty when sound).

    Checks completeness, shapes, dtypes, NaN/inf, the checksums of chunks, labels and indices
    against those recorded at write time, and provenance consistency (one embedding size and
    image size per store, one data file checksum per dataset). Staged (unfinished) splits
    and a lock are reported.
    """
    store = EmbeddingStore(path)
    rows = []
    for dataset in sorted(child_groups(store.path)):
        staged = [p.name for p in (store.path / dataset).iterdir() if p.name.endswith(".partial")]
        for name in staged:
            split = name.removeprefix(".").removesuffix(".partial")
            rows.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "n": None,
                    "status": "unfinished",
                    "problems": "staged, not visible: run embed again with --resume",
                }
            )
        try:
            dataset_attrs = dict(zarr.open_group(str(store.path / dataset), mode="r").attrs)
        except Exception as exc:  # zarr raises several kinds for a damaged zarr.json
            dataset_attrs = {}
            rows.append(_problem_row(dataset, "*", f"dataset zarr.json unreadable ({exc})"))
        else:
            rows += [_problem_row(dataset, "*", p) for p in dataset_attr_problems(dataset_attrs)]
        for folder in sorted((store.path / dataset).iterdir()):
            if not folder.is_dir() or folder.name.startswith("."):
                continue
            split = folder.name
            problem = _split_folder_problem(folder)
            if problem:
                rows.append(_problem_row(dataset, split, problem + ": re-embed it"))
                continue
            try:
                problems = _check_split(store, dataset, split, dataset_attrs)
            except Exception as exc:  # a damaged array's metadata
                problems = [f"unreadable ({type(exc).__name__}: {exc})"]
            attrs = store.split_attrs(dataset, split)
            rows.append(
                {
                    "dataset": dataset,
                    "split": split,
                    "n": attrs.get("n"),
                    "dim": attrs.get("dim"),
                    "size": attrs.get("size"),
                    "md5": attrs.get("data_file", {}).get("md5"),
                    "status": "bad" if problems else "ok",
                    "problems": "; ".join(problems),
                }
            )
    table = pl.DataFrame(rows, schema_overrides={"n": pl.Int64})
    complete = table.filter(pl.col("dim").is_not_null()) if "dim" in table.columns else None
    if complete is not None and complete.height:
        store_wide = []
        for column in ("dim", "size"):
            if complete[column].n_unique() > 1:
                store_wide.append(
                    f"splits disagree on {column}: {sorted(complete[column].unique())}"
                )
        for dataset, group in complete.group_by("dataset"):
            if group["md5"].n_unique() > 1:
                store_wide.append(f"{dataset[0]}: splits come from different data files")
        if store_wide:
            table = pl.concat(
                [
                    table,
                    pl.DataFrame(
                        {
                            "dataset": ["*"],
                            "split": ["*"],
                            "status": ["bad"],
                            "problems": ["; ".join(store_wide)],
                        }
                    ),
                ],
                how="diagonal",
            )
    if (store.path / LOCK).exists():
        table = pl.concat(
            [
                table,
                pl.DataFrame(
                    {
                        "dataset": ["*"],
                        "split": ["*"],
                        "status": ["locked"],
                        "problems": [
                            f"{LOCK} present: a writer is "
                            "running, or one died (delete the lock if so)"
                        ],
                    }
                ),
            ],
            how="diagonal",
        )
    return table.select(
        [
            c
            for c in ("dataset", "split", "n", "dim", "size", "status", "problems")
            if c in table.columns
        ]
    )
