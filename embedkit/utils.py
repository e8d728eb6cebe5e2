"""Small helpers shared by every stage: devices, JSON artefacts, provenance stamps."""

from __future__ import annotations

import dataclasses
import datetime as dt
import errno
import json
import os
import re
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError

if TYPE_CHECKING:
    import torch


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when present, else CPU; anything else is passed to torch."""
    import torch  # here, not at the top: the CLI imports this module to print --help

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"unknown device '{device}': use auto, cpu, cuda or cuda:N") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"device '{device}' asked for but no CUDA GPU is visible: use --device cpu"
        )
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{device}' does not exist: {torch.cuda.device_count()} GPU(s) "
            f"visible (cuda:0 to cuda:{torch.cuda.device_count() - 1})"
        )
    return resolved


def to_jsonable(value: Any) -> Any:
    """Dataclasses, paths and tuples as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def read_text(path: str | os.PathLike, what: str) -> str:
    """A text file the user wrote (a grid file, a config), as UTF-8; ``what`` names it in
    the one-line ``ConfigError`` for any other encoding."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        message = f"{what} is not UTF-8 text (byte {exc.start}): save it as UTF-8"
        raise ConfigError(message) from None


def write_json(path: Path, value: Any) -> None:
    """Write JSON atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(to_jsonable(value), indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def stamp() -> dict[str, str]:
    """Who made an artefact and when: embedkit's version, a UTC time, torch's version and the
    CPU's instruction set as torch dispatches on it (which decides, for one, whether
    ``small_map_conv`` computes the small convolutions' weight gradients)."""
    import torch

    from . import __version__

    return {
        "embedkit_version": __version__,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "torch_version": str(torch.__version__),  # a str subclass yaml would tag
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


_OS_REASONS = {
    errno.ENOSPC: ("no space left on the device", "free some space or choose another location"),
    errno.EDQUOT: ("disk quota exceeded", "free some space or choose another location"),
    errno.EACCES: ("permission denied", "choose a location you can write to"),
    errno.EPERM: ("operation not permitted", "choose a location you can write to"),
    errno.EROFS: ("read-only file system", "choose a location you can write to"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "choose another path"),
    errno.EISDIR: ("it is a folder, not a file", "choose a file path"),
    errno.ENAMETOOLONG: ("the name is too long", "choose a shorter path"),
}
# file-system errors that the CLI reports in one line (others keep their traceback)
USER_OS_ERRNOS = frozenset(_OS_REASONS)


def os_errno(exc: OSError) -> int | None:
    """The errno of an OSError, also of those raised by Rust libraries (polars) that put it
    only in the message: ``Read-only file system (os error 30): PATH``."""
    if exc.errno is not None:
        return exc.errno
    found = re.search(r"\(os error (\d+)\)", str(exc))
    return int(found.group(1)) if found else None


def os_error_message(exc: OSError, context: str) -> str:
    """One line for a file-system error: what failed, where, why, and what to do."""
    code = os_errno(exc)
    if code in _OS_REASONS:
        reason, action = _OS_REASONS[code]
    else:
        reason, action = exc.strerror or str(exc), "check the path"
    found = exc.errno is None and re.search(r"\(os error \d+\): (.+)$", str(exc))
    filename = exc.filename or (found.group(1) if found else None)
    where = f" ({filename})" if filename else ""
    return f"{context}: {reason}{where}: {action}"


def check_writable(path: str | os.PathLike, what: str) -> None:
    """Refuse ``path`` when its nearest existing folder cannot be written (read-only file
    system, no permission), before any work is done."""
    path = Path(path)
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not os.access(existing, os.W_OK):
        raise ConfigError(
            f"cannot write {what} {path}: {existing} is read-only or not writable for you: "
            f"choose a location you can write to"
        )


def disk_free(path: str | os.PathLike) -> int:
    """Free bytes on the file system of ``path`` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


def torch_file_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` cannot be a ``torch.save`` file (None when its structure looks sound).

    torch writes a zip archive (older versions a pickle stream); a truncated archive has no
    central directory, which ``zipfile`` notices without reading the tensors.
    """
    import zipfile

    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return os_error_message(exc, "cannot read it")
    if not head:
        return "it is empty"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path):
                return None
        except (zipfile.BadZipFile, OSError):
            return "it is damaged (truncated or overwritten)"
    if head[:1] == b"\x80":  # a pickle stream: torch.save's legacy format
        return None
    return "it is neither a torch checkpoint nor a safetensors file"


def check_output_folder(path: str | os.PathLike, option: str = "--output") -> Path:
    """Refuse an output folder path that names an existing file (before anything runs)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"{option} {path} is a file: choose a folder")
    return path


def cache_folder(name: str) -> Path:
    """``$XDG_CACHE_HOME/embedkit/NAME`` (``~/.cache`` by default): where embedkit keeps
    what it can compute again (checksums, decoded images, explorer maps)."""
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "embedkit" / name


def stable_hash(value: Any) -> str:
    """SHA-256 of a JSON-able value's canonical JSON (sorted keys): a content address."""
    import hashlib

    text = json.dumps(to_jsonable(value), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()
