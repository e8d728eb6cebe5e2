"""One mechanism for every family of named things (methods, scorers, backbones).

The registry key is the file name of the entry and its CLI value; CLI choices, docs and test
parametrisation all read the registry, so nothing can drift.
"""

from __future__ import annotations

import inspect
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


def value_fits(value: object, default: object) -> bool:
    """Whether ``value`` has the type of a parameter whose default is ``default``: an int
    where a float is expected is fine, a bool is never a number; defaults that are None or
    of other types are not checked. Shared by method (``--param``) and scorer parameters."""
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    return True


def documented_parameters(cls: type, section: str) -> dict[str, str]:
    """``{name: description}`` from the Google-style ``section`` (``Args`` or
    ``Attributes``) of the docstrings of ``cls`` and its bases (the nearest wins)."""
    found: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        found.update(_section(inspect.getdoc(klass) or "", section))
    return found


def _section(doc: str, section: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    lines = doc.splitlines()
    if f"{section}:" not in lines:
        return entries
    current = None
    for line in lines[lines.index(f"{section}:") + 1 :]:
        if line and not line.startswith(" "):
            break  # the next section
        text = line.strip()
        names, sep, rest = text.partition(": ")
        if line.startswith("    ") and not line.startswith("     ") and sep:
            for name in names.split(", "):  # "epochs, lr: ..." documents two at once
                entries[name.strip()] = rest.strip()
            current = [n.strip() for n in names.split(", ")]
        elif current and text:
            for name in current:
                entries[name] += " " + text
    return entries
