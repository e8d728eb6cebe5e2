"""The registry of pretraining methods: one file per method, the file name is the key."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownNameError
from .base import MethodConfig, PretrainMethod

METHODS: dict[str, type[PretrainMethod]] = {}


def register_method(name: str) -> Callable[[type[PretrainMethod]], type[PretrainMethod]]:
    """Class decorator that adds a method under ``name`` (its file name and CLI value)."""

    def add(cls: type[PretrainMethod]) -> type[PretrainMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return add


def get_method(name: str) -> type[PretrainMethod]:
    """Look up a registered method."""
    try:
        return METHODS[name]
    except KeyError:
        raise UnknownNameError("method", name, METHODS) from None


from . import simclr  # noqa: E402,F401  (registers)

__all__ = ["METHODS", "MethodConfig", "PretrainMethod", "get_method", "register_method"]
