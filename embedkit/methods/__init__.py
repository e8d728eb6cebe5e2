"""The registry of pretraining methods: one file per method, the file name is the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..registry import Registry, documented_parameters
from .base import MethodConfig, PretrainMethod

METHODS: Registry[type[PretrainMethod]] = Registry("method")
register_method = METHODS.register
get_method = METHODS.__getitem__


def method_config(method_cls: type[PretrainMethod], params: Mapping[str, Any]) -> MethodConfig:
    """The method's ``Config`` with ``params`` overriding its defaults (names checked)."""
    names = {f.name for f in dataclasses.fields(method_cls.Config)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ConfigError(
            f"{method_cls.name} has no parameter {', '.join(unknown)}: "
            f"valid ones are {', '.join(sorted(names))}"
        )
    return method_cls.Config(**params)


def method_parameters(name: str) -> list[dict[str, str]]:
    """The ``--param`` names of a method: name, type, default and description."""
    method_cls = get_method(name)
    described = documented_parameters(method_cls.Config, "Attributes")
    rows = []
    for field in dataclasses.fields(method_cls.Config):
        if field.default is not dataclasses.MISSING:
            default = field.default
        else:
            default = field.default_factory()  # type: ignore[misc]
        rows.append(
            {
                "method": name,
                "parameter": field.name,
                "type": str(field.type),
                "default": (
                    f"{type(default).__name__}(...)"
                    if dataclasses.is_dataclass(default)
                    else str(default)
                ),
                "description": described.get(field.name, "")
                + (
                    " (a group of augmentation settings, not settable with --param yet)"
                    if field.name.startswith("augment")
                    else ""
                ),
            }
        )
    return rows


from . import (  # noqa: E402,F401  (each registers itself)
    barlowtwins,
    dino,
    mocov1,
    mocov2,
    mocov3,
    simclr,
    simsiam,
    supervised,
    vicreg,
)

__all__ = [
    "METHODS",
    "MethodConfig",
    "PretrainMethod",
    "get_method",
    "method_config",
    "method_parameters",
    "register_method",
]
