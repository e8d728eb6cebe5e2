"""The data root: the folder that holds MedMNIST's files and the user's own datasets."""

from __future__ import annotations

import os
from pathlib import Path

ENV_DATA_ROOT = "EMBEDKIT_DATA"


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The data root: ``root`` if given, else ``$EMBEDKIT_DATA``, else ``~/.medmnist``."""
    if root is not None:
        return Path(root).expanduser()
    if os.environ.get(ENV_DATA_ROOT):
        return Path(os.environ[ENV_DATA_ROOT]).expanduser()
    return Path.home() / ".medmnist"


def candidate_files(name: str, size: int) -> list[str]:
    """File names tried for a dataset at a size (MedMNIST names the 28 px file without suffix)."""
    return [f"{name}.npz", f"{name}_28.npz"] if size == 28 else [f"{name}_{size}.npz"]
