"""Dataset names as commands take them: registered datasets and the user's own in a root.

A name is looked up in the registry (MedMNIST, the demo family) first, then among the user's
datasets in the data root (``embedkit.data.custom``), so every command, grid file and
multi-domain spec (``pneumoniamnist+NAME``) takes both.
"""

from __future__ import annotations

import os

from ..errors import ConfigError, UnknownNameError
from .custom import UserDataset, check_no_clash, find_user_dataset, user_dataset_names
from .registry import DATASETS, GROUPS, DatasetInfo, components, registered
from .root import data_root


def find_dataset(name: str, root: str | os.PathLike | None = None) -> UserDataset | None:
    """The user's dataset ``name`` in the data root (None for a registered name)."""
    folder = data_root(root)
    if registered(name) is not None:
        check_no_clash(folder, name)
        return None
    return find_user_dataset(name, folder)


def get_info(name: str, root: str | os.PathLike | None = None) -> DatasetInfo:
    """Look up one dataset, registered or the user's in the data root (see ``data_root``),
    suggesting close names when there is none of that name."""
    info = registered(name)
    if info is not None:
        return info
    user = find_user_dataset(name, data_root(root))
    if user is not None:
        return user.info
    folder = data_root(root)
    error = UnknownNameError(
        "dataset", name, list(DATASETS) + list(GROUPS) + user_dataset_names(folder)
    )
    error.args = (
        f"{error.args[0]} (nor is there a folder {name}/, {name}.csv or {name}.npz in "
        f"{folder}; see `embedkit datasets`)",
    )
    raise error


def parse_dataset_spec(spec: str, root: str | os.PathLike | None = None) -> list[str]:
    """Expand a ``--dataset`` value into dataset entries.

    ``spec`` is one name, a comma-separated list, a group (``all``, ``demo``) or a
    multi-domain spec ``a+b+c``, which stays one entry whose parts are concatenated when
    loaded. Every part is checked against the registry and the data root.

    Returns:
        The entries in order, without duplicates.
    """
    entries: list[str] = []
    if spec.strip() and not all(part.strip() for part in spec.split(",")):
        raise ConfigError(f"--dataset '{spec}' has an empty name: give names separated by commas")
    for item in (part.strip() for part in spec.split(",")):
        if not item:
            continue
        if item in GROUPS:
            expanded = list(GROUPS[item])
        else:
            for part in item.split("+"):
                get_info(part, root)
            expanded = [item]
        entries.extend(e for e in expanded if e not in entries)
    if not entries:
        raise ConfigError("no dataset given: pass --dataset NAME (see `embedkit datasets`)")
    return entries


def dataset_classes(dataset: str, root: str | os.PathLike | None = None) -> tuple[str, ...]:
    """Class names of an entry; ``domain/class`` where a multi-domain entry offsets labels."""
    infos = [get_info(name, root) for name in components(dataset)]
    if len({info.class_names for info in infos}) == 1:
        return infos[0].class_names
    return tuple(f"{info.name}/{c}" for info in infos for c in info.class_names)


def dataset_task(dataset: str, root: str | os.PathLike | None = None) -> str:
    """The task of an entry; a multi-domain entry with offset labels is multi-class."""
    infos = [get_info(name, root) for name in components(dataset)]
    if len({info.class_names for info in infos}) > 1:
        return "multi-class"
    return infos[0].task
