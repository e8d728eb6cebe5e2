"""Work that scorers share while one ID dataset is scored (not a scorer).

``evaluate_ood`` fits every scorer on the same training arrays and scores the same OOD
arrays with each of them. Inside ``sharing()`` a result computed from the same array
objects is computed once: the float64 copy of an embedding matrix on the compute device,
the Gaussian class statistics and their whitening (mahalanobis, relative_mahalanobis), the
probe head and its logits (the logit scorers) and ViM's residual space (vim, residual).

Keys are the identities of the input arrays, and the cache holds those arrays, so no id is
reused while the block runs; the arrays must not change in place inside the block (the
store's arrays do not). Outside the block nothing is kept and every call computes.

``evaluate_ood`` scores the same OOD arrays for every ID dataset of a store. Inside
``keeping()``, results whose inputs are all arrays passed to ``keep()`` (the OOD arrays'
float64 copies on the compute device, and the kNN scorer's float32 unit rows where the torch
search runs) outlive each ``sharing()`` block: they are computed once for the whole
``keeping()`` block, not once per ID dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")

_cache: dict[tuple, tuple[tuple, Any]] | None = None
_kept: dict[int, Any] | None = None  # id -> array, inside keeping()
_lasting: dict[tuple, tuple[tuple, Any]] = {}  # results over kept arrays, inside keeping()


@contextmanager
def sharing():
    """Share results among the scorers fitted and run inside the block (nestable: an inner
    block uses the outer one's cache)."""
    global _cache
    outer = _cache
    if outer is None:
        _cache = {}
    try:
        yield
    finally:
        _cache = outer


@contextmanager
def keeping():
    """Keep results over the arrays passed to ``keep()`` inside the block across the
    ``sharing()`` blocks opened in it (nestable: an inner block uses the outer one's)."""
    global _kept, _lasting
    outer = _kept, _lasting
    if _kept is None:
        _kept, _lasting = {}, {}
    try:
        yield
    finally:
        _kept, _lasting = outer


def keep(array: Any) -> None:
    """Inside ``keeping()``: results computed only from ``array`` (and other kept arrays)
    last until that block ends; the array is held, and must not change in place, until then.
    Outside it nothing happens."""
    if _kept is not None:
        _kept[id(array)] = array


def kept(array: Any) -> bool:
    """Whether ``array`` was passed to ``keep()`` in the ``keeping()`` block now open."""
    return _kept is not None and id(array) in _kept


def active() -> bool:
    return _cache is not None


def shared(kind: str, arrays: tuple, extra: Hashable, compute: Callable[[], T]) -> T:
    """``compute()``, or inside ``sharing()`` the result of the first call with the same
    ``kind``, the same array objects and the same ``extra`` in the block (in the enclosing
    ``keeping()`` block when every array is kept)."""
    if _cache is None:
        return compute()
    key = (kind, tuple(id(a) for a in arrays), extra)
    cache = _lasting if arrays and all(kept(a) for a in arrays) else _cache
    hit = cache.get(key)
    if hit is None:
        hit = (arrays, compute())  # the arrays are held: their ids stay theirs
        cache[key] = hit
    return hit[1]
