"""The registry of pretraining methods: one file per method, the file name is the key."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from ..errors import ConfigError
from ..registry import Registry
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
    "register_method",
]
