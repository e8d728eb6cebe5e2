"""Work that OOD scorers share, held by an object that ``evaluate_ood`` creates and hands to
them (``fit(X, y, cache=...)``), instead of module state.

``evaluate_ood`` fits every scorer on the same training arrays and scores the same OOD arrays
with each of them. A result computed from the same array objects is computed once per cache:
the float64 copy of an embedding matrix on the compute device, the Gaussian class statistics
and their whitening (mahalanobis, relative_mahalanobis), the probe head and its logits (the
logit scorers) and ViM's residual space (vim, residual).

One ``ScorerCache`` serves a store; ``for_id_dataset()`` gives the cache of one ID dataset.
Results whose inputs are all arrays passed to ``keep()`` (the OOD arrays' float64 copies on
the compute device, and the kNN scorer's unit rows where the torch search runs) live in the
store's cache and serve every ID dataset; every other result ends with its ID dataset's cache.

Keys are the identities of the input arrays, and the cache holds those arrays, so no id is
reused while it lives; the arrays must not change in place while a cache holds them (the
store's arrays do not). A scorer fitted without a cache computes everything itself.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class ScorerCache:
    """Results shared by the scorers fitted with it, keyed on the identity of their inputs."""

    def __init__(self) -> None:
        self._results: dict[tuple, tuple[tuple, Any]] = {}
        self._kept: dict[int, Any] = {}  # id -> array
        self._lasting: dict[tuple, tuple[tuple, Any]] = {}  # results over kept arrays only

    def keep(self, array: Any) -> None:
        """Results computed only from kept arrays serve every ``for_id_dataset()`` cache made
        from this one; the array is held, and must not change in place, while it lives."""
        self._kept[id(array)] = array

    def is_kept(self, array: Any) -> bool:
        """Whether ``array`` was passed to ``keep()`` (of this cache or its parent)."""
        return id(array) in self._kept

    def for_id_dataset(self) -> ScorerCache:
        """A cache for one ID dataset: its own results end with it, results over kept arrays
        are this cache's."""
        child = ScorerCache()
        child._kept, child._lasting = self._kept, self._lasting
        return child

    def get(self, kind: str, arrays: tuple, extra: Hashable, compute: Callable[[], T]) -> T:
        """The result of the first call with the same ``kind``, the same array objects and the
        same ``extra``; ``compute()`` the first time."""
        key = (kind, tuple(id(a) for a in arrays), extra)
        results = self._lasting if arrays and all(map(self.is_kept, arrays)) else self._results
        hit = results.get(key)
        if hit is None:
            hit = (arrays, compute())  # the arrays are held: their ids stay theirs
            results[key] = hit
        return hit[1]


def cached(
    cache: ScorerCache | None, kind: str, arrays: tuple, extra: Hashable, compute: Callable[[], T]
) -> T:
    """``cache.get(...)``, or ``compute()`` without a cache."""
    return compute() if cache is None else cache.get(kind, arrays, extra, compute)
