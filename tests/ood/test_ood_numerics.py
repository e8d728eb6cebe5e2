"""OOD numerics against references: the pseudo-inverse cutoff of scikit-learn / scipy,
MSP without float saturation, and the shared probe head keyed on content."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from embedkit.ood import get_scorer
from embedkit.primitives.linear import LinearHead


def _rank_deficient(n: int, seed: int) -> np.ndarray:
    """48-d features: 40 ordinary units, 4 dead ones, 4 whose variance is ~1e-12 of the
    largest (real directions that a 1e-10 cutoff would drop)."""
    rng = np.random.default_rng(seed)
    base = rng.normal(size=(n, 40))
    small = base[:, :4] @ np.random.default_rng(99).normal(size=(4, 4)) * 1e-6
    return np.hstack([base, np.zeros((n, 4)), small + 1e-6 * rng.normal(size=(n, 4))])


def test_mahalanobis_matches_scikit_learn_on_a_rank_deficient_covariance():
    train, test = _rank_deficient(600, 0), _rank_deficient(80, 1)
    ours = -get_scorer("mahalanobis")().fit(train).score_samples(test)
    reference = EmpiricalCovariance().fit(train).mahalanobis(test)  # squared, pinvh
    np.testing.assert_allclose(ours, reference, rtol=1e-3)
    # the small directions matter: without them the distances differ by far more
    without = -get_scorer("mahalanobis")().fit(train[:, :44]).score_samples(test[:, :44])
    assert np.abs(without / reference - 1).max() > 0.01


def test_msp_ranks_samples_whose_probability_saturates_at_one():
    scorer = get_scorer("msp")()
    scorer.head_ = LinearHead(np.array([[1.0, 0.0], [0.0, 1.0]]), np.zeros(2), False)
    x = np.array([[560.0, 0.0], [520.0, 0.0], [40.0, 0.0], [0.0, 0.3]])
    assert (scorer.head_.probabilities(x[:3]).max(axis=1) == 1.0).all()  # float64 ties
    scores = scorer.score_samples(x)
    assert scores[0] > scores[1] > scores[2] > scores[3]
    np.testing.assert_allclose(scores[3], np.log(scorer.head_.probabilities(x[3:]).max()))
    multi = get_scorer("msp")()
    multi.head_ = LinearHead(np.eye(2), np.zeros(2), True)
    np.testing.assert_allclose(
        multi.score_samples(np.array([[2.0, -1.0]])), [np.log(1 / (1 + np.exp(-2.0)))]
    )


def test_logit_scorers_share_one_head_through_a_cache_and_fit_their_own_without():
    from embedkit.ood.cache import ScorerCache

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 8))
    y = (x[:, :1] > 0).astype(np.int64)
    cache = ScorerCache()
    first = get_scorer("energy")().fit(x, y, cache=cache)
    same = get_scorer("maxlogit")().fit(x, y, cache=cache)
    assert same.head_ is first.head_  # one fit shared by the logit scorers of one cache
    alone = get_scorer("maxlogit")().fit(x, y)
    assert alone.head_ is not first.head_  # no module state: without a cache, its own fit
    np.testing.assert_array_equal(alone.head_.weight, first.head_.weight)
    x[:, 0] *= -1  # the same array object, other content: a new cache fits it again
    changed = get_scorer("energy")().fit(x, y, cache=ScorerCache())
    assert np.sign(changed.head_.weight[1, 0] - changed.head_.weight[0, 0]) != np.sign(
        first.head_.weight[1, 0] - first.head_.weight[0, 0]
    )


def test_scorers_sharing_a_cache_fit_each_statistic_once_with_the_same_scores(monkeypatch):
    """What ``evaluate_ood`` does per ID dataset: the Gaussian scorers share class statistics,
    whitening and distances, vim and residual share the residual space, and every score is
    bit-identical to a scorer fitted on its own."""
    import torch

    from embedkit.ood.cache import ScorerCache

    rng = np.random.default_rng(3)
    x, x2 = rng.normal(size=(300, 12)), rng.normal(size=(300, 12)) * 2 + 1
    y = rng.integers(0, 3, (300, 1))
    queries = rng.normal(size=(40, 12)) + 0.5
    names = ("mahalanobis", "relative_mahalanobis", "vim", "residual", "energy")
    eigh = torch.linalg.eigh
    calls = []
    monkeypatch.setattr(torch.linalg, "eigh", lambda a: calls.append(a.shape) or eigh(a))

    def scores(train, cache=None):
        return {n: get_scorer(n)().fit(train, y, cache=cache).score_samples(queries) for n in names}

    alone, alone2 = scores(x), scores(x2)
    # 1 + 2 + 1 + 1 eigendecompositions per training set, and one for each of the three
    # probe heads (vim, residual and energy fit one; it finds its principal axes)
    assert len(calls) == 2 * (5 + 3)
    calls.clear()
    cache = ScorerCache()
    together, together2 = scores(x, cache), scores(x2, cache)  # another array: not mixed up
    assert len(calls) == 2 * (3 + 1)  # class covariance, background, residual space, probe
    again = scores(x, cache)
    assert len(calls) == 2 * (3 + 1)  # the same arrays again: all from the cache
    for name in names:
        np.testing.assert_array_equal(together[name], alone[name])
        np.testing.assert_array_equal(together2[name], alone2[name])
        np.testing.assert_array_equal(again[name], alone[name])
    assert not np.allclose(together["mahalanobis"], together2["mahalanobis"])


@pytest.mark.slow
def test_a_stores_ood_arrays_go_to_the_compute_device_once_for_all_id_datasets(
    demo_store, monkeypatch
):
    """``evaluate_ood`` scores each OOD test split against every other ID dataset; its
    float64 copy is made once per store, and the table is the same as with one copy per ID."""
    import embedkit.ood._gaussian as gaussian
    from embedkit.eval import OODConfig, evaluate_ood
    from embedkit.ood.cache import ScorerCache

    converted = []
    real = gaussian.cached

    def spy(cache, kind, arrays, extra, compute):
        def counted():
            converted.append(arrays[0])  # held: no id is reused while the test runs
            return compute()

        return real(cache, kind, arrays, extra, counted if kind == "float64" else compute)

    monkeypatch.setattr(gaussian, "cached", spy)
    config = OODConfig(scorers=("mahalanobis", "vim"))
    table = evaluate_ood([demo_store], config)
    assert table.height == 3 * 2 * 2  # 3 ID datasets x 2 OOD datasets x 2 scorers
    ood_rows = {len(demo_store.get(d, "test").indices) for d in demo_store.datasets()}
    assert any(len(a) in ood_rows for a in converted)
    assert len({id(a) for a in converted}) == len(converted)  # no array converted twice
    once = len(converted)
    converted.clear()
    monkeypatch.setattr(ScorerCache, "keep", lambda self, array: None)  # nothing outlives an ID
    per_id = evaluate_ood([demo_store], config)
    assert len(converted) == once + 3  # each of the 3 test splits once more as an OOD set
    assert per_id.equals(table)


def test_the_knn_scorers_torch_search_uploads_each_ood_split_once_per_store(
    demo_store, monkeypatch
):
    """Where the torch search runs (a GPU that FAISS does not see), the kNN scorer's unit
    rows of each OOD split are made once per store, with the same scores as per ID dataset."""
    import embedkit.primitives.neighbors as neighbors
    from embedkit.eval import OODConfig, evaluate_ood
    from embedkit.ood.cache import ScorerCache

    monkeypatch.setattr(neighbors, "resolve_backend", lambda backend="auto": "torch")
    uploads = []
    real = neighbors.NeighborIndex.device_rows
    monkeypatch.setattr(
        neighbors.NeighborIndex,
        "device_rows",
        lambda self, queries: uploads.append(len(queries)) or real(self, queries),
    )
    config = OODConfig(scorers=("knn",))
    table = evaluate_ood([demo_store], config)
    tests = sorted(len(demo_store.get(d, "test").indices) for d in demo_store.datasets())
    assert sorted(uploads) == tests  # 3 OOD splits, each once (twice without keeping)
    monkeypatch.setattr(ScorerCache, "keep", lambda self, array: None)  # nothing outlives an ID
    per_id = evaluate_ood([demo_store], config)
    assert sorted(uploads) == tests  # searched block by block from the arrays instead
    assert per_id.equals(table)
    assert table["auroc"].is_between(0.0, 1.0).all() and table.height == 3 * 2
