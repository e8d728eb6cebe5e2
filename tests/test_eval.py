import numpy as np
import pytest

from embedkit.eval import KNNConfig, OODConfig, ProbeConfig, evaluate_ood, knn_classify, probe
from embedkit.eval.knn import knn_predict
from embedkit.eval.probe import summarise_probe
from embedkit.ood import SCORERS, NotFittedError, get_scorer
from embedkit.ood.knn import KNNScorer


def _blobs(n=300, dim=16, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (3, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, 3, n)
    return centres[labels] * 4 + rng.normal(0, 0.3, (n, dim)), labels.reshape(-1, 1)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorer_contract(name):
    x, y = _blobs()
    scorer = get_scorer(name)()
    with pytest.raises(NotFittedError):
        scorer.score_samples(x[:5])
    assert scorer.fit(x, y) is scorer
    id_scores = scorer.score_samples(x[:50])
    assert id_scores.shape == (50,) and np.isfinite(id_scores).all()
    far = np.random.default_rng(1).normal(0, 1, (50, x.shape[1])) * 0.1
    far[:, 0] -= 10  # far from every ID cluster, in direction as well as distance
    assert np.median(id_scores) > np.median(scorer.score_samples(far))
    assert set(scorer.get_params()) <= set(scorer.__dict__)


def test_knn_scorer_matches_brute_force():
    x, _ = _blobs(400, 8)
    queries = np.random.default_rng(2).normal(0, 2, (30, 8))
    scores = KNNScorer(k=7).fit(x).score_samples(queries)
    bank = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    distances = np.linalg.norm(q[:, None, :] - bank[None, :, :], axis=2)
    np.testing.assert_allclose(scores, -np.sort(distances, axis=1)[:, 6], atol=1e-5)


def test_weighted_knn_matches_brute_force():
    x, y = _blobs(200, 8)
    queries, _ = _blobs(20, 8, seed=5)
    proba = knn_predict(x, y, queries, 3, "multi-class", KNNConfig(k=5, temperature=0.1))
    bank = x / np.linalg.norm(x, axis=1, keepdims=True)
    q = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    similarity = q @ bank.T
    expected = np.zeros((20, 3))
    for i in range(20):
        top = np.argsort(-similarity[i])[:5]
        for j in top:
            expected[i, y[j, 0]] += np.exp(similarity[i, j] / 0.1)
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(proba, expected, atol=1e-4)


def test_evaluations_on_demo_store(demo_store):
    stores = [demo_store]
    table = probe(
        stores, ProbeConfig(datasets=("demo-med",), label_fractions=(0.1, 1.0), seeds=(0, 1))
    )
    assert table.height == 3  # two seeds at 10 %, one at 100 %
    assert table.filter(table["label_fraction"] == 0.1)["n_train"].to_list() == [120, 120]
    summary = summarise_probe(table)
    assert summary["seeds"].to_list() == [2, 1]
    assert (summary["accuracy"] > 0.6).all()  # 3 classes: chance is 1/3
    knn = knn_classify(stores, KNNConfig(datasets=("demo-med",)))
    assert knn["accuracy"][0] > 0.6
    ood = evaluate_ood(stores, OODConfig(id_datasets=("demo-med",)))
    assert sorted(ood["ood_dataset"].to_list()) == ["demo-natural", "demo-texture"]
    assert ood["n_id"].to_list() == [600, 600] and sorted(ood["n_ood"].to_list()) == [600, 1000]
    assert ((ood["auroc"] >= 0) & (ood["auroc"] <= 1)).all()
    assert ood["encoder"].to_list() == ["random/resnet18"] * 2
    everything = evaluate_ood(
        stores,
        OODConfig(id_datasets=("demo-texture",), ood_datasets=("demo-med",), ood_splits="all"),
    )
    assert everything["n_ood"].to_list() == [1200 + 300 + 600]
