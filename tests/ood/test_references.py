"""embedkit's OOD scorers and metrics against pytorch-ood 0.4.0, fitted on the same features.

pytorch-ood returns outlier scores (higher = more OOD); embedkit's scorers return the
opposite convention, so each pair must rank samples in exactly reverse order and give the
same AUROC. Where pytorch-ood computes in float32 (Mahalanobis, ViM) or adds a ridge of
1e-6 to the scatter matrix (Mahalanobis), agreement is to float32 precision.

OpenOOD v1.5's metric definitions are tested in ``test_metrics.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from embedkit.ood import get_scorer
from embedkit.primitives.linear import LinearHead
from embedkit.primitives.metrics import ood_metrics

pytorch_ood = pytest.importorskip(
    "pytorch_ood", reason="pytorch-ood (a test extra: pip install -e '.[test]') is not installed"
)
from pytorch_ood import detector as pood  # noqa: E402
from pytorch_ood.metrics import OODMetrics  # noqa: E402


@pytest.fixture(scope="module")
def features():
    """Four separated classes in 32-d (full-rank covariance), ID test samples drawn like
    the training ones, and OOD samples between the classes."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 32)) * 3
    mixing = np.eye(32) + 0.3 * rng.normal(size=(32, 32))

    def draw(n, labels):
        return centres[labels] + rng.normal(size=(n, 32)) @ mixing

    y_train, y_test = rng.integers(0, 4, 800), rng.integers(0, 4, 300)
    a, b = rng.integers(0, 4, 300), rng.integers(0, 4, 300)
    between = 0.5 * (centres[a] + centres[b]) + rng.normal(size=(300, 32)) @ mixing
    return {
        "train": draw(800, y_train),
        "y_train": y_train,
        "id": draw(300, y_test),
        "ood": between,  # midway between two classes: low confidence, far from every mean
    }


def _theirs(scores) -> np.ndarray:
    return np.asarray(torch.as_tensor(scores).double().cpu())


def _auroc_pytorch_ood(id_outlier, ood_outlier) -> float:
    metrics = OODMetrics()
    scores = torch.as_tensor(np.r_[id_outlier, ood_outlier])
    labels = torch.as_tensor(np.r_[np.zeros(len(id_outlier)), -np.ones(len(ood_outlier))])
    return metrics.update(scores, labels.long()).compute()["AUROC"]


def _reference(name: str, features, ours_fitted):
    """pytorch-ood's outlier scores of the ID and OOD test sets."""
    x = {k: torch.as_tensor(features[k]) for k in ("train", "id", "ood")}
    y = torch.as_tensor(features["y_train"])
    if name == "mahalanobis":
        detector = pood.Mahalanobis(None).fit_features(x["train"].float(), y)
        return [_theirs(detector.predict_features(x[s].float())) for s in ("id", "ood")]
    if name == "knn":
        detector = pood.KNN(None, k=ours_fitted.k).fit_features(x["train"], y)
        return [_theirs(detector.predict_features(x[s])) for s in ("id", "ood")]
    head = ours_fitted.head_  # the logit scorers share embedkit's linear head
    if name == "vim":
        w = torch.as_tensor(head.weight, dtype=torch.float32)
        b = torch.as_tensor(head.bias, dtype=torch.float32)
        detector = pood.ViM(None, d=ours_fitted.dim_, w=w, b=b).fit_features(x["train"], y)
        return [_theirs(detector.predict_features(x[s].float())) for s in ("id", "ood")]
    score = {
        "energy": lambda z: pood.EnergyBased.score(z, t=1.0),
        "maxlogit": pood.MaxLogit.score,
        "msp": lambda z: pood.MaxSoftmax.score(z, t=1.0),
    }[name]
    return [_theirs(score(torch.as_tensor(head.logits(features[s])))) for s in ("id", "ood")]


@pytest.mark.parametrize(
    ("name", "auroc_tol"),
    [
        ("mahalanobis", 1e-4),  # pytorch-ood: float32, scatter + 1e-6 I
        ("knn", 1e-9),
        ("vim", 1e-4),  # pytorch-ood: float32
        ("energy", 1e-9),
        ("maxlogit", 1e-9),
        ("msp", 1e-9),
    ],
)
def test_scorer_agrees_with_pytorch_ood(features, name, auroc_tol, monkeypatch):
    params = {"k": 10} if name == "knn" else {"dim": 16} if name == "vim" else {}
    if name == "vim":
        # ViM's origin is -pinv(W) b. A fitted softmax head's rows sum to ~0 (the logits
        # ignore a shift shared by all rows), so W is nearly rank K-1 and that pseudo-inverse
        # is ill-conditioned: float32 (pytorch-ood) and float64 (embedkit, OpenOOD) origins
        # then differ by far more than rounding. Both get the fitted head with its rows
        # perturbed, which is well-conditioned.
        import embedkit.ood._logits as logits_module

        fit, noise = logits_module.fit_linear, np.random.default_rng(1).normal(size=(4, 32))

        def perturbed(*args, **kwargs):
            head = fit(*args, **kwargs)
            weight = head.weight + 0.2 * np.abs(head.weight).mean() * noise
            return LinearHead(weight, head.bias, head.multi_label)

        monkeypatch.setattr(logits_module, "fit_linear", perturbed)
    scorer = get_scorer(name)(**params).fit(features["train"], features["y_train"][:, None])
    ours = [scorer.score_samples(features[s]) for s in ("id", "ood")]
    theirs = _reference(name, features, scorer)
    both = np.r_[ours[0], ours[1]], np.r_[theirs[0], theirs[1]]
    assert spearmanr(both[0], -both[1]).statistic > 0.99999  # same order, opposite sign
    ours_auroc = ood_metrics(ours[0], ours[1])["auroc"]
    assert 0.6 < ours_auroc < 1.0  # a pair where the ranking matters
    assert abs(ours_auroc - _auroc_pytorch_ood(*theirs)) <= auroc_tol


@pytest.mark.parametrize("tied", [False, True])
def test_metrics_agree_with_pytorch_ood(tied):
    rng = np.random.default_rng(3)
    id_scores, ood_scores = rng.normal(1.0, 1.0, 700), rng.normal(0.0, 1.2, 450)
    if tied:  # coarse scores: many ties across ID and OOD
        id_scores, ood_scores = np.round(id_scores, 1), np.round(ood_scores, 1)
    ours = ood_metrics(id_scores, ood_scores)
    metrics = OODMetrics()
    labels = torch.as_tensor(np.r_[np.zeros(700), -np.ones(450)]).long()
    theirs = metrics.update(torch.as_tensor(-np.r_[id_scores, ood_scores]), labels).compute()
    for key, their_key in [
        ("auroc", "AUROC"),
        ("fpr95", "FPR95TPR"),
        ("aupr_in", "AUPR-IN"),
        ("aupr_out", "AUPR-OUT"),
    ]:
        assert ours[key] == pytest.approx(theirs[their_key], abs=1e-9), key
