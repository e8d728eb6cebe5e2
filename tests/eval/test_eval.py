import re

import numpy as np
import polars as pl
import pytest

from embedkit.errors import ConfigError, StoreError
from embedkit.eval import KNNConfig, OODConfig, ProbeConfig, evaluate_ood, knn_classify, probe
from embedkit.eval.probe import summarise_probe
from embedkit.ood import SCORERS, NotFittedError, get_scorer
from embedkit.ood.knn import KNNScorer
from embedkit.ood.mahalanobis import MahalanobisScorer
from embedkit.ood.relative_mahalanobis import RelativeMahalanobisScorer
from embedkit.ood.vim import ViMScorer
from embedkit.primitives.metrics import ood_metrics
from embedkit.primitives.neighbors import knn_predict
from embedkit.store import EmbeddingStore


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
    # Near the origin: away from every cluster in distance and (normalised) in direction,
    # and where a linear head's logits are small, so every family of score must rank it lower.
    far = np.random.default_rng(1).normal(0, 0.3, (50, x.shape[1]))
    assert np.median(id_scores) > np.median(scorer.score_samples(far))
    assert set(scorer.get_params()) <= set(scorer.__dict__)


@pytest.mark.parametrize("name", sorted(SCORERS))
def test_scorers_follow_scikit_learns_estimator_contract(name):
    """A subset of scikit-learn's estimator checks: unfitted use raises its NotFittedError,
    fit returns self and leaves its inputs alone, clone gives an unfitted twin with the same
    parameters, a pickled fitted scorer scores the same, and a cache changes no score."""
    import pickle

    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError as SklearnNotFittedError

    from embedkit.ood.cache import ScorerCache

    x, y = _blobs()
    x_before, y_before = x.copy(), y.copy()
    scorer = get_scorer(name)()
    with pytest.raises(SklearnNotFittedError):
        scorer.score_samples(x[:5])
    assert scorer.fit(x, y) is scorer
    scores = scorer.score_samples(x[:40])
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)
    twin = clone(scorer)
    assert type(twin) is type(scorer) and twin.get_params() == scorer.get_params()
    with pytest.raises(SklearnNotFittedError):
        twin.score_samples(x[:5])
    shared = get_scorer(name)().fit(x, y, cache=ScorerCache())
    np.testing.assert_array_equal(shared.score_samples(x[:40]), scores)
    restored = pickle.loads(pickle.dumps(shared))
    assert restored._cache is None and shared._cache is not None
    np.testing.assert_array_equal(restored.score_samples(x[:40]), scores)


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
    # one fit at 100 %: no interval (null), not an interval of width 0
    assert summary["accuracy_ci95"][0] is not None and summary["accuracy_ci95"][1] is None
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


def _mahalanobis_reference(x, means, covariance, queries):
    precision = np.linalg.pinv(covariance)
    return np.stack(
        [np.einsum("nd,de,ne->n", queries - m, precision, queries - m) for m in means], 1
    )


def test_mahalanobis_matches_direct_formula():
    x, y = _blobs(500, 6)
    queries = np.random.default_rng(3).normal(0, 3, (40, 6))
    means = np.stack([x[y[:, 0] == c].mean(0) for c in range(3)])
    centred = x - means[y[:, 0]]
    shared = centred.T @ centred / len(x)
    expected = -_mahalanobis_reference(x, means, shared, queries).min(1)
    np.testing.assert_allclose(
        MahalanobisScorer().fit(x, y).score_samples(queries), expected, rtol=1e-7
    )
    background = np.cov(x, rowvar=False, bias=True)
    relative = (
        _mahalanobis_reference(x, means, shared, queries).min(1)
        - _mahalanobis_reference(x, x.mean(0, keepdims=True), background, queries)[:, 0]
    )
    np.testing.assert_allclose(
        RelativeMahalanobisScorer().fit(x, y).score_samples(queries), -relative, rtol=1e-6
    )


def test_vim_matches_direct_formula():
    x, y = _blobs(400, 12)
    queries = np.random.default_rng(4).normal(0, 2, (30, 12))
    scorer = ViMScorer(dim=4).fit(x, y)
    w, b = scorer.head_.weight, scorer.head_.bias
    origin = -np.linalg.pinv(w) @ b
    eigenvalues, eigenvectors = np.linalg.eigh((x - origin).T @ (x - origin))
    residual_basis = eigenvectors[:, np.argsort(eigenvalues)[::-1][4:]]
    logits = x @ w.T + b
    alpha = logits.max(1).sum() / np.linalg.norm((x - origin) @ residual_basis, axis=1).sum()
    q_logits = queries @ w.T + b
    energy = np.log(np.exp(q_logits).sum(1))
    expected = energy - alpha * np.linalg.norm((queries - origin) @ residual_basis, axis=1)
    np.testing.assert_allclose(scorer.score_samples(queries), expected, rtol=1e-6)
    with pytest.raises(ConfigError, match="principal dimension 12"):
        ViMScorer(dim=12).fit(x, y)


PLUGIN = """
import numpy as np

class NormScore:
    \"\"\"Embedding norm: a toy score, higher = more in-distribution.\"\"\"
    def fit(self, X, y=None):
        self.scale_ = float(np.linalg.norm(X, axis=1).mean())
        return self
    def score_samples(self, X):
        return np.linalg.norm(X, axis=1) / self.scale_

class NoScore:
    def fit(self, X, y=None):
        return self
"""


def test_plugin_scorer_over_every_pair(demo_store, tmp_path):
    plugin = tmp_path / "my_scores.py"
    plugin.write_text(PLUGIN)
    table = evaluate_ood(
        [demo_store],
        OODConfig(scorers=(f"{plugin}:NormScore", "knn"), save_scores=str(tmp_path / "scores")),
    )
    assert table.height == 3 * 2 * 2  # 3 ID datasets x 2 OOD datasets x 2 scorers
    assert set(table["scorer"]) == {"NormScore", "knn"}
    saved = pl.read_parquet(tmp_path / "scores" / "random-resnet18__demo-med__NormScore.parquet")
    assert saved.group_by("dataset", "is_ood").len().sort("dataset").rows() == [
        ("demo-med", False, 600),
        ("demo-natural", True, 1000),
        ("demo-texture", True, 600),
    ]
    row = table.filter(
        (pl.col("id_dataset") == "demo-med")
        & (pl.col("scorer") == "NormScore")
        & (pl.col("ood_dataset") == "demo-natural")
    )
    id_scores = saved.filter(~pl.col("is_ood"))["score"].to_numpy()
    ood_scores = saved.filter(pl.col("dataset") == "demo-natural")["score"].to_numpy()
    assert row["auroc"][0] == pytest.approx(ood_metrics(id_scores, ood_scores)["auroc"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("{tmp}/my_scores.py:Missing", "has no class 'Missing' (it defines: NoScore, NormScore)"),
        ("{tmp}/my_scores.py:NoScore", "has no score_samples"),
        ("{tmp}/absent.py:NormScore", "does not exist"),
        ("mahalanobiss", "did you mean mahalanobis"),
    ],
)
def test_bad_plugin(demo_store, tmp_path, spec, message):
    (tmp_path / "my_scores.py").write_text(PLUGIN)
    with pytest.raises(ConfigError if "py:" in spec else KeyError, match=re.escape(message)):
        evaluate_ood([demo_store], OODConfig(scorers=(spec.format(tmp=tmp_path),)))


def test_nan_embeddings_are_refused_on_read(demo_store, tmp_path):
    import shutil

    import zarr

    copy = tmp_path / "nan.zarr"
    shutil.copytree(demo_store.path, copy)
    array = zarr.open_array(str(copy / "demo-med" / "test" / "embeddings"), mode="r+")
    array[3, 5] = np.nan
    store = EmbeddingStore(copy)
    # NaN cannot be written through embedkit, so one found on read is damage: its chunk no
    # longer matches the checksum recorded at write time
    with pytest.raises(StoreError, match="demo-med/test in store .* is damaged .chunk 0 differs"):
        evaluate_ood([store], OODConfig(id_datasets=("demo-med",)))


def test_transfer_matrix(demo_store, tiny_run, data_root, tmp_path):
    from embedkit.embed import EmbedConfig, embed
    from embedkit.eval.transfer import TransferConfig, transfer, transfer_matrix

    run_store = embed(
        EmbedConfig(
            dataset="demo-med,demo-texture",
            run=str(tiny_run),
            device="cpu",
            data_root=str(data_root),
        ),
        tmp_path / "run.zarr",
        progress=False,
    )
    one_l2 = ProbeConfig(label_fractions=(1.0,), seeds=(0,), l2_grid=(1e-2,))  # the table's shape
    table = transfer([demo_store, run_store], TransferConfig(probe=one_l2))
    assert table.height == 4  # 2 encoders x the 2 datasets both stores hold
    in_domain = table.filter(pl.col("in_domain"))
    assert in_domain.select("encoder", "dataset").rows() == [("simclr/resnet18", "demo-texture")]
    matrix = transfer_matrix(table)
    assert matrix["encoder"].to_list() == ["random/resnet18", "simclr/resnet18"]
    assert {"demo-med", "demo-texture"} <= set(matrix.columns)
    assert ((matrix["demo-med"] > 0.5) & (matrix["demo-med"] <= 1)).all()


def test_store_writer_rejects_nan_batches(tmp_path):
    from embedkit.store import StoreWriter

    writer = StoreWriter(tmp_path / "w.zarr", {"name": "x", "weights_sha256": "1" * 64})
    batches = [np.ones((4, 8), np.float32), np.full((4, 8), np.nan, np.float32)]
    with pytest.raises(StoreError, match="NaN or inf embeddings in d/test"):
        writer.write_split(
            "d",
            "test",
            batches,
            8,
            8,
            np.zeros((8, 1), np.int64),
            np.arange(8),
            attrs={},
            dataset_attrs={},
        )
    assert not writer.has_split("d", "test")
    assert not (tmp_path / "w.zarr" / "d" / ".test.partial").exists()


def test_stores_of_one_backbone_must_agree_on_size(demo_store, tmp_path):
    from embedkit.store import StoreWriter

    identity = {**demo_store.encoder, "weights_sha256": "2" * 64, "name": "projection/resnet18"}
    writer = StoreWriter(tmp_path / "p.zarr", identity)
    writer.write_split(
        "demo-med",
        "test",
        [np.ones((6, 128), np.float32)],
        6,
        128,
        np.zeros((6, 1), np.int64),
        np.arange(6),
        attrs={},
        dataset_attrs={},
    )
    with pytest.raises(StoreError, match="different sizes.*512-d.*128-d"):
        knn_classify([demo_store, EmbeddingStore(tmp_path / "p.zarr")], KNNConfig())


@pytest.fixture(scope="module")
def multi_label_store(tmp_path_factory):
    """A ChestMNIST-shaped store: 5 binary labels, embeddings that carry them."""
    from embedkit.store import StoreWriter

    rng = np.random.default_rng(0)
    directions = rng.normal(size=(5, 32))
    path = tmp_path_factory.mktemp("ml") / "ml.zarr"
    writer = StoreWriter(
        path,
        {
            "name": "synthetic/x",
            "method": "none",
            "backbone": "x",
            "init": "random",
            "weights_sha256": "3" * 64,
        },
    )
    for split, n in (("train", 600), ("val", 200), ("test", 300)):
        labels = (rng.random((n, 5)) < 0.2).astype(np.int64)
        x = (labels @ directions + rng.normal(0, 0.5, (n, 32))).astype(np.float32)
        writer.write_split(
            "chestlike",
            split,
            [x],
            n,
            32,
            labels,
            np.arange(n),
            attrs={},
            dataset_attrs={"task": "multi-label", "class_names": list("abcde")},
        )
    x = rng.normal(3, 1, (100, 32)).astype(np.float32)
    writer.write_split(
        "other",
        "test",
        [x],
        100,
        32,
        np.zeros((100, 1), np.int64),
        np.arange(100),
        attrs={},
        dataset_attrs={"task": "multi-class", "class_names": ["z"]},
    )
    return EmbeddingStore(path)


def test_multi_label_probe_knn_and_ood(multi_label_store):
    table = probe(
        [multi_label_store],
        ProbeConfig(datasets=("chestlike",), label_fractions=(0.05, 1.0), seeds=(0,)),
    )
    assert table["n_train"].to_list()[1] == 600
    full = table.filter(pl.col("label_fraction") == 1.0)
    assert full["auc"][0] > 0.9 and full["accuracy"][0] > 0.85  # per-label mean, threshold 0.5
    knn = knn_classify([multi_label_store], KNNConfig(datasets=("chestlike",)))
    assert knn["auc"][0] > 0.8
    ood = evaluate_ood(
        [multi_label_store], OODConfig(id_datasets=("chestlike",), scorers=tuple(SCORERS))
    )
    assert ood.height == len(SCORERS)
    auroc = dict(zip(ood["scorer"], ood["auroc"], strict=True))
    # "other" sits at 3 in every dimension, far from the ID cloud in distance and direction
    assert min(auroc["mahalanobis"], auroc["vim"], auroc["residual"]) > 0.99
    assert auroc["knn"] > 0.7 and auroc["energy"] > 0.6
    # multi-label data is one Gaussian class, so the class and background distances are the
    # same and the relative score is 0 for every row: chance, exactly
    assert auroc["relative_mahalanobis"] == 0.5
    # per-label sigmoids: the largest probability ranks rows as the largest logit does
    assert auroc["msp"] == auroc["maxlogit"] < 0.9


def test_class_absent_from_training_split(tmp_path):
    from embedkit.store import StoreWriter

    writer = StoreWriter(
        tmp_path / "s.zarr",
        {
            "name": "x",
            "method": "none",
            "backbone": "y",
            "init": "random",
            "weights_sha256": "4" * 64,
        },
    )
    for split, labels in (("train", [0, 1] * 10), ("val", [0, 1, 2] * 4), ("test", [0, 1, 2] * 4)):
        y = np.array(labels).reshape(-1, 1)
        writer.write_split(
            "d",
            split,
            [np.random.default_rng(0).normal(size=(len(y), 4)).astype(np.float32)],
            len(y),
            4,
            y,
            np.arange(len(y)),
            attrs={},
            dataset_attrs={"task": "multi-class", "class_names": ["a", "b", "c"]},
        )
    with pytest.raises(ConfigError, match=r"classes \[2\] appear in test but not in the training"):
        probe([EmbeddingStore(tmp_path / "s.zarr")], ProbeConfig(label_fractions=(0.5,)))


def test_evaluations_say_what_they_are_doing(demo_store, caplog):
    import logging

    from embedkit.eval import KNNConfig, OODConfig, ProbeConfig, evaluate_ood, knn_classify, probe

    caplog.set_level(logging.INFO, logger="embedkit")
    config = ProbeConfig(datasets=("demo-texture",), label_fractions=(0.1, 1.0), seeds=(0, 1))
    probe([demo_store], config)
    knn_classify([demo_store], KNNConfig(datasets=("demo-texture",)))
    evaluate_ood([demo_store], OODConfig(id_datasets=("demo-med",), scorers=("knn", "vim")))
    messages = [r.getMessage() for r in caplog.records]
    assert "probe random/resnet18 on demo-texture: 3 fits" in messages
    assert "knn random/resnet18 on demo-texture" in messages
    assert "ood random/resnet18: ID demo-med against demo-natural, demo-texture (2 scorers)" in (
        messages
    )


def test_ood_groups_average_near_and_far_separately(demo_store, tmp_path):
    from embedkit.eval import summarise_ood_groups
    from embedkit.report import build_report

    groups = {"near": ("demo-texture",), "far": ("demo-natural",)}
    config = OODConfig(id_datasets=("demo-med",), scorers=("knn", "mahalanobis"), ood_groups=groups)
    table = evaluate_ood([demo_store], config)
    assert dict(zip(table["ood_dataset"], table["ood_group"], strict=True)) == {
        "demo-texture": "near",
        "demo-natural": "far",
    }
    summary = summarise_ood_groups(table)
    assert summary.height == 2 * 2 and set(summary["n_datasets"]) == {1}
    knn_near = table.filter((pl.col("scorer") == "knn") & (pl.col("ood_group") == "near"))
    row = summary.filter((pl.col("scorer") == "knn") & (pl.col("ood_group") == "near"))
    assert row["auroc"][0] == pytest.approx(knn_near["auroc"][0])
    text = build_report(tmp_path / "r", ood=table).read_text()
    assert "Per OOD group" in text and "near" in text.split("Per OOD group")[1]
    for bad, message in [
        ({"near": ("demo-texture",), "far": ("demo-texture",)}, "is in OOD groups near and far"),
        ({"near": ()}, "needs a name and at least one dataset"),
        ({"near": ("pathmnist",)}, "'pathmnist' is not in store"),
    ]:
        with pytest.raises((ConfigError, StoreError), match=message):
            evaluate_ood([demo_store], OODConfig(id_datasets=("demo-med",), ood_groups=bad))
