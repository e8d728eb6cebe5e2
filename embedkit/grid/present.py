"""A grid on a partial data root: the datasets whose files are absent are listed and skipped.

A user with some of MedMNIST's twelve files (or the three a small machine holds) runs a
preset as it is: pretraining entries that need an absent dataset (a multi-domain entry when
any of its parts is absent) and absent evaluation datasets are dropped before the cells are
made, and the skipped names are recorded in the output folder so that ``grid status`` and
``grid collect`` see the same cells. The demo family is always present (it is generated);
a user's dataset is present when the root holds its folder, manifest or npz.
"""

from __future__ import annotations

import dataclasses
import logging
import os

from ..data import components, data_root, find_dataset, get_info
from ..data.registry import registered
from ..data.root import candidate_files
from ..errors import DataNotFoundError
from .spec import GridSpec

log = logging.getLogger(__name__)


def absent_datasets(spec: GridSpec, root: str | os.PathLike | None) -> list[str]:
    """The datasets ``spec`` names that have no file in the data root at one of its sizes."""
    folder = data_root(root)
    return sorted(name for name in _names(spec) if not _present(name, folder, spec))


def _names(spec: GridSpec) -> set[str]:
    names = {n for entry in spec.pretrain["dataset"] for n in components(entry)}
    return names | set(spec.evaluate.datasets) | set(spec.evaluate.ood_datasets)


def _present(name: str, folder, spec: GridSpec) -> bool:
    info = registered(name)
    if info is None:  # the user's: its folder, manifest or npz (a broken one is an error)
        return find_dataset(name, folder) is not None
    return info.family == "demo" or all(
        any((folder / f).is_file() for f in candidate_files(name, size))
        for size in spec.pretrain["size"]
    )


def modalities(spec: GridSpec, root: str | os.PathLike | None) -> dict[str, str]:
    """The modality of every dataset ``spec`` names (those present in the root), recorded
    with the grid's output so that ``grid collect`` tells multi-modality sets without it."""
    return {name: get_info(name, root).modality for name in sorted(_names(spec))}


def without(spec: GridSpec, absent: list[str] | tuple[str, ...]) -> GridSpec:
    """``spec`` with the entries that need an ``absent`` dataset dropped."""
    if not absent:
        return spec
    kept = [e for e in spec.pretrain["dataset"] if not set(components(e)) & set(absent)]
    if not kept:
        raise DataNotFoundError(
            f"grid {spec.origin}: none of its pretraining datasets is in the data root "
            f"(absent: {', '.join(absent)}); download them or point --data-root at them"
        )
    evaluate = dataclasses.replace(
        spec.evaluate,
        datasets=tuple(d for d in spec.evaluate.datasets if d not in absent),
        ood_datasets=tuple(d for d in spec.evaluate.ood_datasets if d not in absent),
    )
    return dataclasses.replace(spec, pretrain={**spec.pretrain, "dataset": kept}, evaluate=evaluate)


def restrict_to_data(
    spec: GridSpec, root: str | os.PathLike | None, download: bool = False
) -> tuple[GridSpec, list[str]]:
    """``spec`` on the datasets present in the data root, and the absent ones (logged);
    with ``download`` nothing is skipped (the files are fetched)."""
    absent = [] if download else absent_datasets(spec, root)
    kept = without(spec, absent)  # a grid left with nothing is refused in one line
    if absent:
        log.warning("skipping the datasets absent from %s: %s", data_root(root), ", ".join(absent))
    return kept, absent
