"""The errors embedkit raises for input a person can fix.

Every ``EmbedkitError`` carries one line that says what is wrong and what to do. The CLI
prints that line and exits with code 2; Python users catch the class they care about.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class EmbedkitError(Exception):
    """Base class: a problem with the user's input or files, explained in one line."""


class UnknownNameError(EmbedkitError, KeyError):
    """A name that is not in a registry (dataset, method, backbone, scorer)."""

    def __init__(self, kind: str, name: str, choices: Iterable[str]) -> None:
        choices = sorted(choices)
        close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        super().__init__(f"unknown {kind} '{name}': {hint}valid {kind}s: {', '.join(choices)}")
        self.kind, self.name, self.choices = kind, name, choices

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class DataNotFoundError(EmbedkitError, FileNotFoundError):
    """A dataset file that is not in the data root."""


class InvalidDataError(EmbedkitError, ValueError):
    """A data file that exists but cannot be used (wrong keys, shapes or dtype)."""


class ConfigError(EmbedkitError, ValueError):
    """An option value outside its valid range."""


class StoreError(EmbedkitError):
    """An embedding store that is missing, incomplete or lacks what was asked for."""


class RunError(EmbedkitError):
    """A run folder that is missing, unfinished or of another kind."""


class WeightsUnavailableError(EmbedkitError):
    """Pretrained weights that are not on disk and cannot be downloaded."""


class NonOfficialDataWarning(UserWarning):
    """A dataset file whose checksum differs from MedMNIST's official release."""
