"""One mechanism for every family of named things (methods, scorers, backbones).

The registry key is the file name of the entry and its CLI value; CLI choices, docs and test
parametrisation all read the registry, so nothing can drift.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from .errors import UnknownNameError

T = TypeVar("T")


class Registry(dict[str, T]):
    """A ``dict`` of name to entry whose missing keys raise ``UnknownNameError``.

    Args:
        kind: what the entries are (``method``, ``scorer``), for error messages.
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def __missing__(self, name: str) -> T:
        raise UnknownNameError(self.kind, name, self)

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator that adds a class under ``name`` and sets its ``name`` attribute."""

        def add(entry: T) -> T:
            entry.name = name
            self[name] = entry
            return entry

        return add
