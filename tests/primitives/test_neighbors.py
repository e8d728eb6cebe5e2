"""The torch search (blocked matmul + top-k, for a GPU without faiss-gpu) finds what FAISS
finds, checked on the CPU."""

import numpy as np
import pytest

import embedkit.primitives.neighbors as neighbors
from embedkit.errors import ConfigError
from embedkit.primitives.neighbors import NeighborIndex, l2_normalise


def _same_neighbours(bank, queries, metric, k):
    faiss_scores, faiss_rows = NeighborIndex(bank, metric, backend="faiss").search(queries, k)
    torch_scores, torch_rows = NeighborIndex(bank, metric, backend="torch").search(queries, k)
    assert torch_rows.dtype == faiss_rows.dtype == np.int64
    np.testing.assert_allclose(torch_scores, faiss_scores, rtol=1e-5, atol=1e-5)
    # each torch neighbour's true score is the score FAISS ranks at that place: the same
    # neighbours up to the order of ties
    if metric == "cosine":  # the index scales rows itself: the same as "ip" on unit rows
        bank, queries = l2_normalise(bank), l2_normalise(queries)
        ip_scores, ip_rows = NeighborIndex(bank, "ip", backend="faiss").search(queries, k)
        np.testing.assert_array_equal(faiss_scores, ip_scores)
        np.testing.assert_array_equal(faiss_rows, ip_rows)
    if metric != "l2":
        true = np.einsum("qd,qkd->qk", queries.astype(np.float64), bank[torch_rows])
    else:
        true = ((queries[:, None, :].astype(np.float64) - bank[torch_rows]) ** 2).sum(-1)
    np.testing.assert_allclose(true, faiss_scores, rtol=1e-4, atol=1e-4)
    agree = (torch_rows == faiss_rows).mean()
    assert agree > 0.99, agree  # random data: ties are rare


@pytest.mark.slow
@pytest.mark.parametrize("metric", ["ip", "cosine", "l2"])
def test_torch_search_matches_faiss(metric, monkeypatch):
    rng = np.random.default_rng(0)
    bank = rng.normal(size=(3000, 64)).astype(np.float32)
    queries = rng.normal(size=(700, 64)).astype(np.float32)
    if metric == "ip":
        bank, queries = l2_normalise(bank), l2_normalise(queries)
    if metric == "cosine":  # rows of many lengths, which the index must scale away
        bank *= rng.uniform(0.1, 10, size=(3000, 1)).astype(np.float32)
        queries *= rng.uniform(0.1, 10, size=(700, 1)).astype(np.float32)
    _same_neighbours(bank, queries, metric, k=20)
    monkeypatch.setattr(neighbors, "_BLOCK_FLOATS", 3000 * 64)  # 64-query blocks, last partial
    _same_neighbours(bank, queries, metric, k=1)
    _same_neighbours(bank, queries, metric, k=3000)


def test_the_backend_is_chosen_by_what_sees_a_gpu(monkeypatch):
    faiss = neighbors._faiss()
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    monkeypatch.setattr(neighbors, "_torch_cuda", lambda: True)
    assert neighbors.resolve_backend() == "torch"  # CUDA torch, CPU-only FAISS
    monkeypatch.setattr(neighbors, "_torch_cuda", lambda: False)
    assert neighbors.resolve_backend() == "faiss"
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 1)
    assert neighbors.resolve_backend() == "faiss"
    with pytest.raises(ConfigError, match="unknown search backend 'annoy'"):
        neighbors.resolve_backend("annoy")


def test_without_faiss_the_torch_search_serves_and_faiss_is_refused(monkeypatch):
    # where FAISS is not installed (the GPU machine's copy travels without it) nothing
    # imports it: auto searches with torch, on the CPU too, and asking for faiss is one line
    monkeypatch.setattr(neighbors, "_faiss", lambda: None)
    monkeypatch.setattr(neighbors, "_torch_cuda", lambda: False)
    assert neighbors.resolve_backend() == "torch"
    with pytest.raises(ConfigError, match="needs FAISS: pip install faiss-gpu"):
        neighbors.resolve_backend("faiss")
    rng = np.random.default_rng(0)
    bank, queries = rng.standard_normal((50, 8)), rng.standard_normal((5, 8))
    index = neighbors.NeighborIndex(bank, "l2")
    assert index.backend == "torch"
    _, ids = index.search(queries, 3)
    distances = ((queries[:, None] - bank[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(ids, np.argsort(distances, axis=1)[:, :3])


@pytest.mark.slow
def test_knn_and_ood_tables_are_the_same_through_the_torch_search(demo_store, monkeypatch):
    from embedkit.eval import KNNConfig, OODConfig, evaluate_ood, knn_classify

    knn_config = KNNConfig(datasets=("demo-med",))
    ood_config = OODConfig(id_datasets=("demo-med",), scorers=("knn",))
    with_faiss = knn_classify([demo_store], knn_config), evaluate_ood([demo_store], ood_config)
    monkeypatch.setattr(neighbors, "resolve_backend", lambda backend="auto": "torch")
    with_torch = knn_classify([demo_store], knn_config), evaluate_ood([demo_store], ood_config)
    for a, b in zip(with_faiss, with_torch, strict=True):
        numeric = [c for c, t in a.schema.items() if t.is_float()]
        np.testing.assert_allclose(
            b.select(numeric).to_numpy(),
            a.select(numeric).to_numpy(),
            atol=1e-5,  # float ties of scores
        )
