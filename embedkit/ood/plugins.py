"""Scorers named on the command line: registry names or user files (``path.py:ClassName``).

A plug-in is any class with ``fit(X, y=None)`` returning the fitted scorer and
``score_samples(X)`` returning one score per row, higher = more in-distribution; it need not
import embedkit. The file is imported as a module of its own.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from . import SCORERS


def _check_contract(cls: Any, origin: str) -> type:
    if not isinstance(cls, type):
        raise ConfigError(
            f"{origin} is not a class: a scorer is a class with fit and score_samples"
        )
    missing = [m for m in ("fit", "score_samples") if not callable(getattr(cls, m, None))]
    if missing:
        raise ConfigError(
            f"{origin} has no {' or '.join(missing)}: a scorer needs fit(X, y=None) -> self "
            f"and score_samples(X) -> one score per row, higher = more in-distribution"
        )
    return cls


def load_plugin(spec: str) -> type:
    """Import ``ClassName`` from ``path/to/file.py`` given as ``path/to/file.py:ClassName``."""
    path_text, _, class_name = spec.rpartition(":")
    path = Path(path_text).expanduser()
    if not path.is_file():
        raise ConfigError(f"scorer file {path} does not exist (from --scorer {spec})")
    module_name = f"embedkit_plugin_{path.stem}_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # sys.exit() at import too
        del sys.modules[module_name]
        raise ConfigError(f"importing {path} failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, class_name):
        classes = sorted(
            n
            for n, v in vars(module).items()
            if isinstance(v, type) and v.__module__ == module_name
        )
        raise ConfigError(
            f"{path} has no class '{class_name}' (it defines: {', '.join(classes) or 'no class'})"
        )
    return _check_contract(getattr(module, class_name), f"{path}:{class_name}")


def resolve_scorer(spec: str | type) -> tuple[str, type]:
    """``(name, class)`` of a registry name, a ``file.py:Class`` spec or a class."""
    if isinstance(spec, type):
        return getattr(spec, "name", spec.__name__), _check_contract(spec, spec.__name__)
    if spec.rpartition(":")[0].endswith(".py"):
        return spec.rpartition(":")[2], load_plugin(spec)
    return spec, SCORERS[spec]
