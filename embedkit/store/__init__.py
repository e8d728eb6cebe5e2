"""The embedding store between the stages: one zarr v3 hierarchy per encoder.

- ``reader``: ``EmbeddingStore``, the only code that reads zarr; every evaluation and
  notebook goes through it.
- ``writer``: ``StoreWriter``, whole chunks, one split at a time, visible only when complete.
- ``chunks``: chunk writes, SHA-256 digests and the intact-chunk scan used by resume.
- ``check``: ``list_stores`` and ``verify_store`` (``embedkit store ls / verify``).

One writer at a time holds the store's ``.lock`` (``embedkit.lock``).
"""

from ..lock import LOCK
from .check import find_stores, list_stores, verify_store
from .reader import (
    FORMAT_VERSION,
    EmbeddingSplit,
    EmbeddingStore,
    child_groups,
    chunk_rows,
    open_stores,
)
from .writer import DTYPES, StoreWriter, check_store_path

__all__ = [
    "DTYPES",
    "FORMAT_VERSION",
    "LOCK",
    "EmbeddingSplit",
    "EmbeddingStore",
    "StoreWriter",
    "child_groups",
    "check_store_path",
    "chunk_rows",
    "find_stores",
    "list_stores",
    "open_stores",
    "verify_store",
]
