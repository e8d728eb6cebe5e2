"""The package layout: every stage package imports on its own, states its public names, and
ships in the wheel (an editable install would hide a package missing from pyproject.toml)."""

from __future__ import annotations

import ast
import importlib
import os
import shutil
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
    assert not flat & {"store_writer", "store_check", "inference", "monitor"}


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


@pytest.mark.slow
def test_each_package_imports_first():
    """Import every package as the first embedkit module of a fresh import state (an
    ``__init__`` that needed a hand-kept import order would fail here)."""
    code = (
        "import importlib, sys\n"
        f"for name in {PACKAGES!r}:\n"
        "    for key in [k for k in sys.modules if k.split('.')[0] == 'embedkit']:\n"
        "        del sys.modules[key]\n"
        "    print(importlib.import_module(name).__name__)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == PACKAGES


def _lint_imports(root: Path) -> subprocess.CompletedProcess:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run(
        [str(lint), "--config", str(ROOT / "pyproject.toml"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
        timeout=300,
    )


def test_imports_follow_the_layers_without_a_cycle():
    """The import-linter contracts of pyproject.toml: layers that import only downward, and no
    cycle between the modules of any package."""
    result = _lint_imports(ROOT)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [  # an upward import, and a cycle inside one layer
        ("primitives/metrics.py", "from ..eval import probe", "embedkit's layers"),
        ("ood/base.py", "from . import knn", "no import cycle"),
    ],
)
def test_the_contracts_fail_on_a_bad_import(tmp_path, module, line, broken):
    shutil.copytree(ROOT / "embedkit", tmp_path / "embedkit")
    target = tmp_path / "embedkit" / module
    target.write_text(target.read_text() + f"\n{line}  # noqa\n")
    result = _lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout and "BROKEN" in result.stdout


def test_nothing_in_the_library_imports_the_cli():
    """The CLI (cli/, outside the folder import-linter reads) is the top layer: the library
    may start it as a process, never import it."""
    hits = []
    for path in (ROOT / "embedkit").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                names = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                absolute = node.level == 0
            elif isinstance(node, ast.Import):
                names, absolute = [a.name for a in node.names], True
            else:
                continue
            if any(
                (absolute and n.startswith("embedkit.cli"))
                or (not absolute and n.startswith("cli"))
                for n in names
            ):
                hits.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert hits == []


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
