"""The embedding store between the stages: one zarr v3 hierarchy per encoder.

- ``reader``: ``EmbeddingStore``, the only code that reads zarr; every evaluation and
  notebook goes through it.
- ``writer``: ``StoreWriter``, whole chunks, one split at a time, visible only when complete.
- ``chunks``: chunk writes, SHA-256 digests and the intact-chunk scan used by resume.
- ``lock``: one writer per store.
- ``check``: ``list_stores`` and ``verify_store`` (``embedkit store ls / verify``).
"""

from .check import find_stores, list_stores, verify_store
from .lock import LOCK
from .reader import (
    FORMAT_VERSION,
    EmbeddingSplit,
    EmbeddingStore,
    child_groups,
    chunk_rows,
    open_stores,
)
from .writer import DTYPES, StoreWriter

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "LOCK",
    "EmbeddingSplit",
    "EmbeddingStore",
    "StoreWriter",
    "child_groups",
    "chunk_rows",
    "find_stores",
    "list_stores",
    "open_stores",
    "verify_store",
]
