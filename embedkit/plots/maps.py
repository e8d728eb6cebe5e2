"""Figures of a store's embeddings: 2-D maps, and nearest-neighbour retrieval grids."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from ..errors import ConfigError
from ..eval.results import store_datasets
from ..primitives.neighbors import NeighborIndex, l2_normalise
from ..store import EmbeddingStore

PROJECTIONS = ("pca", "umap")


def _project(x: np.ndarray, projection: str, seed: int) -> np.ndarray:
    if projection == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit_transform(x)
    if projection == "umap":
        try:
            import umap
        except ImportError as exc:
            raise ConfigError(
                "UMAP maps need umap-learn: pip install 'embedkit[umap]', or use projection='pca'"
            ) from exc
        return umap.UMAP(n_components=2, random_state=seed).fit_transform(x)
    raise ConfigError(f"unknown projection '{projection}': use {' or '.join(PROJECTIONS)}")


def embedding_map(
    store: EmbeddingStore,
    datasets: tuple[str, ...] = (),
    split: str = "test",
    color_by: str = "dataset",
    projection: str = "pca",
    max_points: int = 1000,
    seed: int = 0,
) -> Figure:
    """A 2-D map (PCA, or UMAP with umap-learn) of a store's embeddings.

    Args:
        store: the store.
        datasets: datasets to show; empty means all.
        split: the split to show.
        color_by: ``dataset`` (one colour per dataset) or ``class`` (one per class name;
            single-label datasets only).
        projection: ``pca`` or ``umap``.
        max_points: at most this many points per dataset (a seeded random subset).
        seed: seeds the subsets and UMAP.
    """
    if color_by not in ("dataset", "class"):
        raise ConfigError(f"color_by must be 'dataset' or 'class', not '{color_by}'")
    rng = np.random.default_rng(seed)
    points, groups = [], []
    shown = store_datasets(store, datasets)
    for dataset in shown:
        part = store.get(dataset, split)
        keep = np.sort(rng.permutation(len(part.embeddings))[:max_points])
        points.append(l2_normalise(part.embeddings[keep].astype(np.float32)))
        if color_by == "dataset":
            groups += [dataset] * len(keep)
        else:
            if part.labels.shape[1] > 1:
                raise ConfigError(f"{dataset} is multi-label: colour it by dataset")
            names = store.dataset_attrs(dataset)["class_names"]
            prefix = f"{dataset}: " if len(shown) > 1 else ""
            groups += [f"{prefix}{names[i]}" for i in part.labels[keep, 0]]
    xy = _project(np.concatenate(points), projection, seed)
    groups_array = np.array(groups)
    fig = Figure(figsize=(6, 5), layout="constrained")
    ax = fig.subplots()
    for group in dict.fromkeys(groups):
        mask = groups_array == group
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, alpha=0.7, label=group)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(f"{store.encoder_name}: {split} split, {projection.upper()}", fontsize=10)
    ax.legend(fontsize=7, markerscale=2, loc="best")
    return fig


def split_images(
    store: EmbeddingStore, dataset: str, split: str, indices: np.ndarray
) -> np.ndarray:
    """Images of a split by their row in the data file (a stored ``indices`` value), read
    back from the data file the store's provenance names."""
    from ..data.npz import read_member

    attrs = store.split_attrs(dataset, split)
    path = Path(attrs["data_file"]["path"])
    if not path.exists():
        raise ConfigError(
            f"the data file of {dataset}/{split}, {path}, is gone: the store holds "
            f"embeddings only; put the file back to see its images"
        )
    if attrs["data_file"].get("origin") == "user" and path.suffix != ".npz":
        from ..data import load_split  # a folder or manifest: its decoded (cached) images

        name = path.stem if path.suffix == ".csv" else path.name
        data = load_split(name, split, attrs["size"], path.parent)
        return np.asarray(data.images)[np.searchsorted(data.indices, indices)]
    return read_member(path, f"{split}_images")[indices]


def retrieval_grid(
    store: EmbeddingStore,
    query_dataset: str,
    query_rows: tuple[int, ...] = (0, 1, 2, 3),
    k: int = 5,
    bank_datasets: tuple[str, ...] = (),
    query_split: str = "test",
    bank_split: str = "train",
) -> Figure:
    """Each query image (first column) and its ``k`` nearest images (cosine) in the bank.

    Args:
        store: the store; images are read from the data files its provenance names.
        query_dataset: dataset of the queries.
        query_rows: rows of the query split to show.
        k: neighbours per query.
        bank_datasets: datasets searched (their ``bank_split``); empty means all.
        query_split, bank_split: the splits of queries and bank.
    """
    banks = store_datasets(store, bank_datasets)
    parts = [store.get(d, bank_split) for d in banks]
    owner = np.concatenate([np.full(len(p.embeddings), i) for i, p in enumerate(parts)])
    row = np.concatenate([np.arange(len(p.embeddings)) for p in parts])
    bank = l2_normalise(np.concatenate([p.embeddings for p in parts]).astype(np.float32))
    query = store.get(query_dataset, query_split)
    rows = np.asarray(query_rows)
    similarity, neighbours = NeighborIndex(bank, metric="ip").search(
        l2_normalise(query.embeddings[rows].astype(np.float32)), k
    )
    queries = split_images(store, query_dataset, query_split, query.indices[rows])
    found: dict[tuple[int, int], np.ndarray] = {}  # datasets may differ in channels
    for i, part in enumerate(parts):  # one read of each bank dataset's file
        places = np.argwhere(owner[neighbours] == i)
        if len(places):
            file_rows = part.indices[row[neighbours[tuple(places.T)]]]
            images = split_images(store, banks[i], bank_split, file_rows)
            found.update(zip(map(tuple, places), images, strict=True))
    fig = Figure(figsize=(1.5 * (k + 1), 1.65 * len(rows)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(rows), k + 1))

    def show(ax, image, title, colour="black"):
        # MedMNIST stores grey images as (H, W), some as (H, W, 1): grey, on the file's own
        # 0-255 scale (no per-image contrast stretch, so intensities compare across panels)
        image = image.squeeze()
        grey = image.ndim == 2
        ax.imshow(image, cmap="gray" if grey else None, vmin=0, vmax=255)
        ax.set_title(title, fontsize=7, color=colour)
        ax.set_xticks([])
        ax.set_yticks([])

    for i in range(len(rows)):
        show(axes[i, 0], queries[i], f"query {query_dataset}", "tab:blue")
        for j in range(k):
            dataset = banks[owner[neighbours[i, j]]]
            show(axes[i, j + 1], found[i, j], f"{dataset} {similarity[i, j]:.2f}")
    fig.suptitle(f"{store.encoder_name}: nearest {bank_split} images", fontsize=9)
    return fig
