"""The registry of OOD scorers: one file per scorer, the file name is the key."""

from __future__ import annotations

import inspect

from ..registry import Registry, documented_parameters
from .base import NotFittedError, OODScorer

SCORERS: Registry[type[OODScorer]] = Registry("scorer")
register_scorer = SCORERS.register
get_scorer = SCORERS.__getitem__


def scorer_parameters(name: str) -> list[dict[str, str]]:
    """The ``--param`` names of a scorer (its constructor's): name, type, default and
    description."""
    scorer_cls = get_scorer(name)
    described = documented_parameters(scorer_cls, "Args")
    rows = []
    for parameter in list(inspect.signature(scorer_cls.__init__).parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        rows.append(
            {
                "scorer": name,
                "parameter": parameter.name,
                "type": str(parameter.annotation),
                "default": str(parameter.default),
                "description": described.get(parameter.name, ""),
            }
        )
    return rows


from . import (  # noqa: E402,F401  (each registers itself)
    energy,
    knn,
    mahalanobis,
    maxlogit,
    msp,
    relative_mahalanobis,
    residual,
    vim,
)

__all__ = [
    "SCORERS",
    "NotFittedError",
    "OODScorer",
    "get_scorer",
    "register_scorer",
    "scorer_parameters",
]
