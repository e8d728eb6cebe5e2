"""Where the bench scripts find real data: ``--data-root`` or ``EMBEDKIT_DATA``, never a
path guessed next to the checkout. Without either, the scripts use generated demo data."""

from __future__ import annotations

import argparse
import os
from pathlib import Path


def add_data_root(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-root",
        default=os.environ.get("EMBEDKIT_DATA"),
        help="folder holding MedMNIST .npz files (default: $EMBEDKIT_DATA; without either, "
        "generated demo data)",
    )


def real_file(data_root: str | None, name: str) -> Path | None:
    """``data_root/name`` if a data root was given and holds it (a 28 px file also under
    MedMNIST's own name without the size, ``pneumoniamnist.npz``), else None; a data root
    that was given but lacks the file is an error, not a silent fallback."""
    if not data_root:
        return None
    names = [name]
    if name.endswith("_28.npz"):
        names.append(name.removesuffix("_28.npz") + ".npz")
    for candidate in names:
        path = Path(data_root).expanduser() / candidate
        if path.is_file():
            return path
    raise SystemExit(
        f"{Path(data_root).expanduser() / name} does not exist: pass the folder that holds "
        f"{' or '.join(names)}"
    )
