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
    """``data_root/name`` if a data root was given and holds it, else None (a data root that
    was given but lacks the file is an error, not a silent fallback)."""
    if not data_root:
        return None
    path = Path(data_root).expanduser() / name
    if not path.is_file():
        raise SystemExit(f"{path} does not exist: pass the folder that holds {name}")
    return path
