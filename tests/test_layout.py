"""The package layout: every stage package imports on its own, states its public names, and
ships in the wheel (an editable install would hide a package missing from pyproject.toml)."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = sorted(
    "embedkit." + ".".join(p.parent.relative_to(ROOT / "embedkit").parts)
    for p in (ROOT / "embedkit").rglob("__init__.py")
    if p.parent != ROOT / "embedkit"
)
STAGES = ["embedkit.pretrain", "embedkit.embed", "embedkit.store", "embedkit.eval"]


def test_stage_packages_exist():
    assert set(STAGES) <= set(PACKAGES)
    flat = {p.stem for p in (ROOT / "embedkit").glob("*.py")}
    # the stages' modules live in their packages, not beside them
    assert not flat & {"store_writer", "store_check", "runs", "inference", "monitor"}


def test_pyproject_ships_every_package():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(config["packages"]) == sorted(["embedkit", "embedkit.cli", *PACKAGES])
    assert config["package-dir"] == {"embedkit.cli": "cli"}


@pytest.mark.parametrize("package", PACKAGES)
def test_public_names_resolve(package):
    module = importlib.import_module(package)
    names = getattr(module, "__all__", None)
    assert names, f"{package} states no public names (__all__)"
    missing = [name for name in names if not hasattr(module, name)]
    assert missing == []


def test_each_package_imports_first_without_a_cycle():
    """Import every package as the first embedkit module of a fresh import state."""
    code = (
        "import importlib, sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] == 'embedkit']:\n"
        "        del sys.modules[key]\n"
        "    importlib.import_module(name)\n"
        "print('ok', len(sys.modules) > 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "ok True"


def test_catalog_names_equal_the_registries():
    from embedkit import catalog
    from embedkit.backbones import BACKBONES
    from embedkit.data import SIZES
    from embedkit.methods import METHODS
    from embedkit.ood import SCORERS

    assert tuple(BACKBONES) == catalog.BACKBONE_NAMES
    assert tuple(sorted(METHODS)) == catalog.METHOD_NAMES
    assert tuple(sorted(SCORERS)) == catalog.SCORER_NAMES
    assert catalog.SIZES is SIZES


def test_the_cli_starts_without_the_heavy_libraries():
    """--help, --version and usage errors must not wait for torch (seconds to import)."""
    heavy = ("torch", "timm", "lightly", "medmnist", "faiss", "polars", "zarr", "sklearn")
    code = (
        f"import sys, embedkit.cli.main; print(','.join(m for m in {heavy!r} if m in sys.modules))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert loaded == "", f"importing the CLI loads {loaded}"
    version = subprocess.run(
        [sys.executable, "-m", "embedkit.cli.main", "--version"],
        capture_output=True,
        text=True,
        check=True,
    )
    from embedkit import __version__

    assert version.stdout.strip() == f"embedkit {__version__}"
