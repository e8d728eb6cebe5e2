"""The explorer's points: which rows, their map, neighbours, thumbnails and scores.

``point_data`` gathers, for the stores and options of an ``ExploreConfig``, one column per
field of the page's data source (see ``embedkit.explore``).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl

from ..configs import ExploreConfig
from ..errors import ConfigError
from ..eval.results import store_datasets
from ..plots.maps import PROJECTIONS, _project, split_images
from ..primitives.neighbors import NeighborIndex, l2_normalise
from ..store import EmbeddingStore
from ..utils import cache_folder

log = logging.getLogger(__name__)

KEYS = ("dataset", "split", "index")


def _check(stores: list[EmbeddingStore], config: ExploreConfig) -> str:
    if not 1 <= len(stores) <= 2:
        raise ConfigError(f"explore shows one store or two side by side, not {len(stores)}")
    if config.max_points < 1 or config.k < 1:
        raise ConfigError("--max-points and --k must be at least 1")
    if not 8 <= config.thumbnail <= 256:
        raise ConfigError(f"--thumbnail must lie in 8..256 px, not {config.thumbnail}")
    if config.projection == "auto":
        try:
            import umap  # noqa: F401
        except ImportError:
            return "pca"
        return "umap"
    if config.projection not in PROJECTIONS:
        raise ConfigError(
            f"unknown projection '{config.projection}': use auto, {' or '.join(PROJECTIONS)}"
        )
    return config.projection


def _label_names(store: EmbeddingStore, dataset: str, labels: np.ndarray) -> list[str]:
    names = store.dataset_attrs(dataset)["class_names"]
    if labels.shape[1] == 1:
        return [names[i] for i in labels[:, 0]]
    return [";".join(n for n, on in zip(names, row, strict=True) if on) or "none" for row in labels]


def _rows(stores: list[EmbeddingStore], config: ExploreConfig) -> pl.DataFrame:
    """The points: dataset, split, index, row (in its split of each store), label."""
    first = stores[0]
    parts = []
    for dataset in store_datasets(first, config.datasets):
        for split in config.splits:
            if split not in first.splits(dataset):
                continue
            data = first.get(dataset, split)
            part = pl.DataFrame(
                {
                    "dataset": dataset,
                    "split": split,
                    "index": data.indices.astype(np.int64),
                    "row0": np.arange(len(data.indices)),
                    "label": _label_names(first, dataset, data.labels),
                }
            )
            for number, other in enumerate(stores[1:], 1):
                if dataset not in other.datasets() or split not in other.splits(dataset):
                    break  # the second store lacks it: not shown
                rows = pl.DataFrame(
                    {"index": other.get(dataset, split).indices.astype(np.int64)}
                ).with_row_index(f"row{number}")
                part = part.join(rows.cast({f"row{number}": pl.Int64}), on="index")
            else:
                parts.append(part)
    table = pl.concat(parts) if parts else pl.DataFrame()
    if not table.height:
        raise ConfigError(
            "no points to show: the stores share no split of the datasets asked for "
            f"({', '.join(config.datasets) or 'all'}; splits {', '.join(config.splits)})"
        )
    if table.height > config.max_points:
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(table.height, config.max_points, replace=False))
        log.info("showing %d of %d points (--max-points)", len(keep), table.height)
        table = table[keep]
    return table


def _embeddings(store: EmbeddingStore, table: pl.DataFrame, column: str) -> np.ndarray:
    parts = []
    for (dataset, split), group in table.group_by(["dataset", "split"], maintain_order=True):
        rows = group[column].to_numpy()
        parts.append((group["position"].to_numpy(), store.get(dataset, split).embeddings[rows]))
    out = np.empty((table.height, parts[0][1].shape[1]), np.float32)
    for positions, values in parts:
        out[positions] = values
    return out


def _cache_path(store: EmbeddingStore, table: pl.DataFrame, projection: str, seed: int) -> Path:
    digest = hashlib.sha256()
    digest.update(json.dumps([store.encoder.get("weights_sha256"), projection, seed]).encode())
    for column in KEYS:
        digest.update(table[column].cast(pl.Utf8).str.join("\0").item().encode())
    return cache_folder("explore") / f"{digest.hexdigest()[:32]}.npy"


def _map(store, table, column, projection, seed) -> tuple[np.ndarray, np.ndarray]:
    """``(xy, embeddings)``: the 2-D map (cached) and the unit-length embeddings."""
    x = l2_normalise(_embeddings(store, table, column))
    path = _cache_path(store, table, projection, seed)
    if path.is_file():
        return np.load(path), x
    xy = _project(x, projection, seed).astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
        np.save(tmp, xy)
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache the map in %s: %s", path.parent, exc)
    return xy, x


def _neighbours(x: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` nearest other points of each (cosine distance)."""
    k = min(k, len(x) - 1)
    if k < 1:
        return [[] for _ in x], [[] for _ in x]
    similarity, index = NeighborIndex(x, metric="ip").search(x, k + 1)
    neighbours, distances = [], []
    for i, (row, sims) in enumerate(zip(index, similarity, strict=True)):
        keep = [(j, s) for j, s in zip(row, sims, strict=True) if j != i][:k]
        neighbours.append([int(j) for j, _ in keep])
        distances.append([round(float(1 - s), 3) for _, s in keep])
    return neighbours, distances


def _thumbnails(store: EmbeddingStore, table: pl.DataFrame, side: int) -> list[str]:
    """WebP data URIs of the points' images (lossy, quality 80: about 250 bytes for a 28 px
    MedMNIST image against 600-1,600 as PNG), read through the store's provenance."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def encode(image: np.ndarray) -> str:
        picture = Image.fromarray(np.asarray(image).squeeze())
        if picture.size != (side, side):
            picture = picture.resize((side, side), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, format="WEBP", quality=80)
        return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()

    out = [""] * table.height
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:  # Pillow frees the GIL
        for (dataset, split), group in table.group_by(["dataset", "split"], maintain_order=True):
            images = split_images(store, dataset, split, group["index"].to_numpy())
            for position, uri in zip(group["position"], pool.map(encode, images), strict=True):
                out[position] = uri
    return out


def _scores(folder: str | None, encoder: str, table: pl.DataFrame) -> dict[str, np.ndarray]:
    """One column per saved (scorer, ID dataset) of this encoder: NaN where not scored."""
    if folder is None:
        return {}
    files = sorted(Path(folder).glob("*.parquet"))
    if not Path(folder).is_dir() or not files:
        raise ConfigError(
            f"--scores {folder} holds no saved scores: run `embedkit ood --save-scores`"
        )
    columns = {}
    keys = table.select(KEYS).with_row_index("position")
    for file in files:
        saved = pl.read_parquet(file)
        if saved.height == 0 or saved["encoder"][0] != encoder:
            continue
        name = f"{saved['scorer'][0]} (ID {saved['id_dataset'][0]})"
        joined = keys.join(saved.select(*KEYS, "score"), on=list(KEYS), how="left")
        values = np.full(table.height, np.nan)
        values[joined["position"].to_numpy()] = joined["score"].fill_null(np.nan).to_numpy()
        columns[name] = values
    if not columns:
        raise ConfigError(f"--scores {folder} holds no scores of encoder {encoder}")
    return columns


def point_data(
    stores: list[EmbeddingStore], config: ExploreConfig
) -> tuple[dict[str, list], dict[str, np.ndarray], str]:
    """``(columns, scores, projection)``: the points' keys, labels, thumbnails, map
    coordinates and neighbours per store (``x0``, ``neighbours0``, ...), the saved OOD
    scores by name, and the projection used."""
    projection = _check(stores, config)
    table = _rows(stores, config).with_row_index("position").cast({"position": pl.Int64})
    data: dict[str, list] = {k: table[k].to_list() for k in (*KEYS, "label")}
    data["thumb"] = _thumbnails(stores[0], table, config.thumbnail)
    for number, store in enumerate(stores):
        xy, x = _map(store, table, f"row{number}", projection, config.seed)
        data[f"x{number}"], data[f"y{number}"] = xy[:, 0].tolist(), xy[:, 1].tolist()
        data[f"neighbours{number}"], data[f"distances{number}"] = _neighbours(x, config.k)
    return data, _scores(config.scores, stores[0].encoder_name, table), projection
