import numpy as np
import pytest
from sklearn import metrics as skm

from embedkit.errors import ConfigError
from embedkit.primitives.metrics import classification_metrics, ood_metrics


def _openood_reference(id_scores, ood_scores):
    """OpenOOD's compute_all_metrics, written with scikit-learn (OOD positive)."""
    conf = np.concatenate([id_scores, ood_scores])
    ood = np.r_[np.zeros(len(id_scores)), np.ones(len(ood_scores))]
    fpr, tpr, _ = skm.roc_curve(ood, -conf)
    p_in, r_in, _ = skm.precision_recall_curve(1 - ood, conf)
    p_out, r_out, _ = skm.precision_recall_curve(ood, -conf)
    return {
        "auroc": skm.auc(fpr, tpr),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "aupr_in": skm.auc(r_in, p_in),
        "aupr_out": skm.auc(r_out, p_out),
    }


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("tied", [False, True])
def test_ood_metrics_match_openood_definition(seed, tied):
    rng = np.random.default_rng(seed)
    id_scores = rng.normal(1.0, 1.0, 300 + seed * 37)
    ood_scores = rng.normal(0.0, 1.0, 200)
    if tied:  # few distinct values: many ties across ID and OOD
        id_scores, ood_scores = np.round(id_scores), np.round(ood_scores)
    ours, reference = ood_metrics(id_scores, ood_scores), _openood_reference(id_scores, ood_scores)
    for key in reference:
        assert ours[key] == pytest.approx(reference[key], abs=1e-12), key


def test_ood_metrics_extremes():
    perfect = ood_metrics(np.array([2.0, 3.0, 4.0]), np.array([-1.0, 0.0]))
    assert perfect == {"auroc": 1.0, "fpr95": 0.0, "aupr_in": 1.0, "aupr_out": 1.0}
    inverted = ood_metrics(np.array([-1.0, 0.0]), np.array([2.0, 3.0, 4.0]))
    assert inverted["auroc"] == 0.0 and inverted["fpr95"] == 1.0


def test_ood_metrics_reject_empty_and_nan():
    with pytest.raises(ConfigError, match="at least one"):
        ood_metrics(np.array([1.0]), np.array([]))
    with pytest.raises(ConfigError, match="NaN"):
        ood_metrics(np.array([1.0, np.nan]), np.array([0.0]))


def test_classification_metrics_multiclass():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 200).reshape(-1, 1)
    proba = rng.dirichlet(np.ones(4), 200)
    result = classification_metrics(labels, proba, "multi-class")
    assert result["accuracy"] == pytest.approx((proba.argmax(1) == labels.ravel()).mean())
    assert result["auc"] == pytest.approx(
        skm.roc_auc_score(labels.ravel(), proba, multi_class="ovr")
    )
    assert result["balanced_accuracy"] == pytest.approx(
        skm.balanced_accuracy_score(labels.ravel(), proba.argmax(1))
    )


def test_classification_metrics_binary_and_multilabel():
    labels = np.array([0, 0, 1, 1]).reshape(-1, 1)
    proba = np.array([[0.9, 0.1], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8]])
    binary = classification_metrics(labels, proba, "binary")
    assert binary["accuracy"] == 0.75 and binary["auc"] == 1.0
    multi = np.array([[1, 0], [0, 1], [1, 1], [0, 0]])
    scores = np.array([[0.8, 0.2], [0.3, 0.4], [0.7, 0.9], [0.6, 0.1]])
    result = classification_metrics(multi, scores, "multi-label")
    assert result["accuracy"] == pytest.approx((3 / 4 + 3 / 4) / 2)  # MedMNIST's per-label mean
    assert result["auc"] == pytest.approx((1.0 + 1.0) / 2)
