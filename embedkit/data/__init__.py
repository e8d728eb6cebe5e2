"""Datasets: the registry, loading of MedMNIST-format files, the demo family, the user's own
datasets (folders, manifests, npz files), label fractions."""

from . import demo as _demo  # noqa: F401  (registers the demo family)
from .loading import DataFile, SplitData, load_split
from .names import dataset_classes, dataset_task, find_dataset, get_info, parse_dataset_spec
from .registry import (
    DATASETS,
    GROUPS,
    MEDMNIST_2D,
    SIZES,
    SPLITS,
    DatasetInfo,
    check_size,
    components,
)
from .root import data_root
from .sampler import label_fraction_indices

__all__ = [
    "DATASETS",
    "GROUPS",
    "MEDMNIST_2D",
    "SIZES",
    "SPLITS",
    "DataFile",
    "DatasetInfo",
    "SplitData",
    "check_size",
    "components",
    "data_root",
    "dataset_classes",
    "dataset_task",
    "find_dataset",
    "get_info",
    "label_fraction_indices",
    "load_split",
    "parse_dataset_spec",
]
