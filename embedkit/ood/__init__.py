"""The registry of OOD scorers: one file per scorer, the file name is the key."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import UnknownNameError
from .base import NotFittedError, OODScorer

SCORERS: dict[str, type[OODScorer]] = {}


def register_scorer(name: str) -> Callable[[type[OODScorer]], type[OODScorer]]:
    """Class decorator that adds a scorer under ``name`` (its file name and CLI value)."""

    def add(cls: type[OODScorer]) -> type[OODScorer]:
        cls.name = name
        SCORERS[name] = cls
        return cls

    return add


def get_scorer(name: str) -> type[OODScorer]:
    """Look up a registered scorer."""
    try:
        return SCORERS[name]
    except KeyError:
        raise UnknownNameError("scorer", name, SCORERS) from None


from . import knn  # noqa: E402,F401  (registers)

__all__ = ["SCORERS", "NotFittedError", "OODScorer", "get_scorer", "register_scorer"]
