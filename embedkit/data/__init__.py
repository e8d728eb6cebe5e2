"""Datasets: the registry, loading of MedMNIST-format files, the demo family, label fractions."""

from . import demo as _demo  # noqa: F401  (registers the demo family)
from .loading import DataFile, SplitData, data_root, dataset_classes, dataset_task, load_split
from .registry import (
    DATASETS,
    GROUPS,
    MEDMNIST_2D,
    SIZES,
    SPLITS,
    DatasetInfo,
    check_size,
    components,
    get_info,
    parse_dataset_spec,
)
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
    "get_info",
    "label_fraction_indices",
    "load_split",
    "parse_dataset_spec",
]
