"""``--config FILE`` on every command: option values from a TOML, YAML or JSON file, with the
options given on the command line winning (click's ``default_map``).

Keys are the fields of the command's config (``embedkit.configs``: ``warmup_fraction``,
``method_params``), which are also the names grid files and a run's ``config.json`` use; an
option's flag works too (``batch-size``, ``warmup``, ``param``). A file may hold one table per
command (``[pretrain]``, ``[probe]``). Nested tables become dotted ``--param``
values (``[pretrain.param] temperature = 0.1``, ``[ood.param.knn] k = 20``). A run folder's
``config.json`` replays that run: ``embedkit pretrain --config RUN/config.json --output NEW``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from embedkit.errors import ConfigError
from embedkit.utils import read_text


def read_config(path: Path) -> dict[str, Any]:
    """The mapping a TOML, YAML or JSON file holds (one line for anything else)."""
    if not path.is_file():
        raise ConfigError(f"--config {path} does not exist")
    text = read_text(path, f"--config {path}")
    try:
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        elif path.suffix == ".json":
            data = json.loads(text)
        else:
            raise ConfigError(f"--config {path}: use a .toml, .yaml or .json file")
    except ConfigError:
        raise
    except Exception as exc:  # each parser raises its own kind
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"--config {path} cannot be read: {reason}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"--config {path} must hold a table of option = value")
    return data


def command_defaults(data: dict[str, Any], command: str, params: dict, path: Path) -> dict:
    """The ``default_map`` of ``command`` (whose parameters are ``params``: name -> click
    parameter) from a config file's ``data``."""
    if "pretrain" in data and "method_config" in data:  # a run's config.json
        if command != "pretrain":
            raise ConfigError(f"--config {path} is a run's config.json: use it with pretrain")
        data = dict(data["pretrain"])
        if (data.get("patch_size") or 0) <= 1:
            data.pop("patch_size", None)  # 1 is a ResNet's: let the backbone choose
    elif isinstance(data.get(command), dict):
        data = data[command]
    names = {}  # a key: the config field (the parameter's name) or one of its flags
    for name, param in params.items():
        names.update({flag.lstrip("-").replace("-", "_"): name for flag in param.opts})
        names[name] = name
    defaults, unknown = {}, []
    for key, value in data.items():
        name = names.get(key.replace("-", "_"))
        if name is None:
            unknown.append(key)
            continue
        if isinstance(value, dict):
            value = _dotted(value)
        if params[name].multiple and not isinstance(value, list):
            value = [value]
        elif isinstance(value, list) and not params[name].multiple:
            value = ",".join(map(str, value))  # --seeds, --logger: comma-separated
        defaults[name] = value
    if unknown:
        valid = ", ".join(sorted(params))
        raise ConfigError(
            f"--config {path}: {command} has no option {', '.join(unknown)} (it has {valid}; "
            f"a flag's spelling works too, e.g. batch-size)"
        )
    return defaults


def _dotted(table: dict, prefix: str = "") -> list[str]:
    """``{"knn": {"k": 20}}`` to ``["knn.k=20"]``; lists of numbers as ``0.1,1.0``."""
    items = []
    for key, value in table.items():
        if isinstance(value, dict):
            items += _dotted(value, f"{prefix}{key}.")
        else:
            if isinstance(value, list):
                value = ",".join(map(str, value))
            elif isinstance(value, bool):
                value = str(value).lower()
            items.append(f"{prefix}{key}={value}")
    return items
