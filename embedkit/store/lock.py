"""One writer per store: a ``.lock`` file created exclusively, stale ones taken over."""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from ..errors import StoreError
from ..utils import stamp

log = logging.getLogger(__name__)
LOCK = ".lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def take_lock(folder: Path) -> Path:
    """Create ``folder/.lock`` for this process, or explain who holds it.

    A lock left by a dead process of this host is removed with a warning.

    Raises:
        StoreError: a live process (or one on another host) holds the lock.
    """
    lock = folder / LOCK
    record = {"pid": os.getpid(), "host": socket.gethostname(), **stamp()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
            except (OSError, ValueError):
                holder = {}
            same_host = holder.get("host") == record["host"]
            if same_host and not _pid_alive(int(holder.get("pid", 0))):
                log.warning(
                    "removing the stale lock of process %s on %s", holder.get("pid"), folder
                )
                lock.unlink(missing_ok=True)
                continue
            raise StoreError(
                f"store {folder} is being written by process {holder.get('pid')} on "
                f"{holder.get('host')} since {holder.get('created')}: wait for it, or delete "
                f"{lock} if that process is gone"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(record, f)
        return lock
    raise StoreError(f"could not take the lock {lock}: delete it and try again")
