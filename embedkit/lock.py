"""One writer per folder: a ``.lock`` file that appears whole or not at all.

Stores (``embedkit.store``) and pretraining run folders (``embedkit.pretrain``) take one.
The lock's record (pid, host, start time) is written to a temporary file first and then
hard-linked into place, so a full disk or a crash can never leave a half-written lock; an
empty or unreadable lock (written by an older embedkit, or damaged) and the lock of a dead
process on this host are taken over with a warning.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import tempfile
from pathlib import Path

from .errors import EmbedkitError
from .utils import os_error_message, stamp

log = logging.getLogger(__name__)
LOCK = ".lock"


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_holder(lock: Path) -> dict | None:
    """The lock's record; None when it is empty or unreadable (no live writer wrote it)."""
    try:
        holder = json.loads(lock.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) and "pid" in holder else None


def _dead(holder: dict) -> bool:
    """A holder whose process is known to be gone (same host, pid not alive)."""
    return holder.get("host") == socket.gethostname() and not pid_alive(int(holder["pid"]))


def is_held(folder: str | os.PathLike) -> bool:
    """Whether a live writer (or one on another host) holds ``folder``'s lock."""
    holder = _read_holder(Path(folder) / LOCK)
    return bool(holder) and not _dead(holder)


class FolderLock:
    """Hold ``folder/.lock`` while writing ``folder``; use it as a context manager.

    Args:
        folder: an existing folder.
        what: how errors name the folder ("store", "run folder").
        error: the ``EmbedkitError`` subclass raised when another writer holds it.
    """

    def __init__(
        self, folder: str | os.PathLike, what: str, error: type[EmbedkitError] = EmbedkitError
    ) -> None:
        self.folder, self.what, self.error = Path(folder), what, error
        self.path = self.folder / LOCK
        self.held = False

    def acquire(self) -> FolderLock:
        """Take the lock, or raise ``error`` naming who holds it.

        Raises:
            error: a live process (or one on another host) holds the lock, or the lock
                cannot be written (full disk, read-only folder).
        """
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), **stamp()})
        try:
            for _ in range(3):
                try:
                    self._create(record)
                except FileExistsError:
                    self._take_over_if_stale()
                    continue
                self.held = True
                return self
        except OSError as exc:
            message = os_error_message(exc, f"cannot lock {self.what} {self.folder}")
            raise self.error(message) from exc
        raise self.error(f"could not take the lock {self.path}: delete it and try again")

    def _create(self, record: str) -> None:
        """Make the lock appear with its whole record, or not at all (FileExistsError)."""
        fd, tmp = tempfile.mkstemp(prefix=".lock.", suffix=".tmp", dir=self.folder)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(record)
            try:
                os.link(tmp, self.path)  # atomic, and fails if a lock exists
            except OSError as exc:
                if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
                    raise
                # a file system without hard links: exclusive create, then the record
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                try:
                    with os.fdopen(fd, "w") as f:
                        f.write(record)
                except OSError:
                    self.path.unlink(missing_ok=True)
                    raise
        finally:
            Path(tmp).unlink(missing_ok=True)

    def _take_over_if_stale(self) -> None:
        holder = _read_holder(self.path)
        if holder is None:
            log.warning("removing an empty or unreadable lock %s (no writer left it)", self.path)
        elif holder and _dead(holder):
            log.warning("removing the stale lock of process %s on %s", holder["pid"], self.folder)
        elif holder:
            raise self.error(
                f"{self.what} {self.folder} is being written by process {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('created')}: wait for it to finish, or "
                f"delete {self.path} if that process is gone"
            )
        self.path.unlink(missing_ok=True)

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False

    def __enter__(self) -> FolderLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
