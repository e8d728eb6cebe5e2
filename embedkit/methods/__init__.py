"""The registry of pretraining methods: one file per method, the file name is the key."""

from __future__ import annotations

from ..registry import Registry
from .base import MethodConfig, PretrainMethod

METHODS: Registry[type[PretrainMethod]] = Registry("method")
register_method = METHODS.register
get_method = METHODS.__getitem__

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

__all__ = ["METHODS", "MethodConfig", "PretrainMethod", "get_method", "register_method"]
