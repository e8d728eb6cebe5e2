"""Metrics for OOD detection and classification.

OOD metrics follow OpenOOD's definitions: OOD is the positive class, scores are "higher =
more in-distribution" and this module owns the sign flip. AUROC, FPR at 95 % TPR and the
areas under both precision-recall curves are computed from one sort of the scores.

FPR@95 is the share of ID samples flagged as OOD at the threshold that detects 95 % of the
OOD samples (OOD positive, as OpenOOD v1.5 and pytorch-ood compute it; not OpenOOD v1.0's
variant at 95 % of the ID samples).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import balanced_accuracy_score, roc_auc_score

from ..errors import ConfigError


def _curve(positive_scores: np.ndarray, negative_scores: np.ndarray):
    """True and false positive counts at each distinct threshold, highest score first."""
    scores = np.concatenate([positive_scores, negative_scores])
    is_positive = np.concatenate([np.ones(len(positive_scores)), np.zeros(len(negative_scores))])
    order = np.argsort(-scores)  # any order within a tie: counts are read at its end
    scores, is_positive = scores[order], is_positive[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]
    tps = np.cumsum(is_positive)[last_of_tie]
    fps = (last_of_tie + 1) - tps
    return tps, fps


def _auroc(tps: np.ndarray, fps: np.ndarray) -> float:
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return float(np.trapezoid(tpr, fpr))


def _aupr(tps: np.ndarray, fps: np.ndarray) -> float:
    """Area under precision-recall (trapezoid), as sklearn's curve + auc compute it."""
    stop = int(np.searchsorted(tps, tps[-1])) + 1  # the curve ends at full recall
    precision = tps[:stop] / (tps[:stop] + fps[:stop])
    recall = tps[:stop] / tps[-1]
    precision = np.r_[precision[::-1], 1.0]
    recall = np.r_[recall[::-1], 0.0]
    return float(-np.trapezoid(precision, recall))


def ood_metrics(id_scores: np.ndarray, ood_scores: np.ndarray, tpr: float = 0.95) -> dict:
    """AUROC, FPR at ``tpr`` TPR, AUPR-In and AUPR-Out of one ID/OOD pair.

    Args:
        id_scores: scores of in-distribution samples (higher = more in-distribution).
        ood_scores: scores of out-of-distribution samples.
        tpr: the share of OOD samples that must be detected for the FPR.

    Returns:
        ``auroc``, ``fpr95``, ``aupr_in``, ``aupr_out`` as fractions in [0, 1].
    """
    id_scores = np.asarray(id_scores, dtype=np.float64).ravel()
    ood_scores = np.asarray(ood_scores, dtype=np.float64).ravel()
    if len(id_scores) == 0 or len(ood_scores) == 0:
        raise ConfigError("an OOD evaluation needs at least one ID and one OOD sample")
    if not (np.isfinite(id_scores).all() and np.isfinite(ood_scores).all()):
        raise ConfigError("OOD scores contain NaN or inf: check the embeddings and the scorer")
    tps, fps = _curve(-ood_scores, -id_scores)  # OOD positive: flip "more ID" to "more OOD"
    tpr_curve = np.r_[0.0, tps / tps[-1]]
    fpr_curve = np.r_[0.0, fps / fps[-1]]
    # ID positive is the same sort read from the other end: at each distinct score s (now
    # highest first), ID at or above s = all ID minus the ID below s, likewise for OOD
    tps_in = (len(id_scores) - np.r_[0.0, fps[:-1]])[::-1]
    fps_in = (len(ood_scores) - np.r_[0.0, tps[:-1]])[::-1]
    return {
        "auroc": _auroc(tps, fps),
        "fpr95": float(fpr_curve[np.argmax(tpr_curve >= tpr)]),
        "aupr_in": _aupr(tps_in, fps_in),
        "aupr_out": _aupr(tps, fps),
    }


def accuracy(labels: np.ndarray, probabilities: np.ndarray, task: str) -> float:
    """The accuracy of ``classification_metrics`` alone (what the probe's L2 is chosen by)."""
    if task == "multi-label":
        return float(((probabilities > 0.5) == labels.astype(bool)).mean())
    return float((probabilities.argmax(axis=1) == labels.reshape(-1)).mean())


def classification_metrics(labels: np.ndarray, probabilities: np.ndarray, task: str) -> dict:
    """Accuracy, AUC and balanced accuracy as MedMNIST reports them.

    Args:
        labels: ``(N, 1)`` class indices, or ``(N, L)`` 0/1 for multi-label.
        probabilities: ``(N, C)`` class probabilities, or ``(N, L)`` label probabilities.
        task: the dataset's task; ``multi-label`` averages per-label accuracy (threshold
            0.5) and AUC, the others use argmax accuracy and one-vs-rest macro AUC.
    """
    if task == "multi-label":
        predicted = probabilities > 0.5
        aucs = [
            roc_auc_score(labels[:, j], probabilities[:, j])
            for j in range(labels.shape[1])
            if 0 < labels[:, j].sum() < len(labels)
        ]
        balanced = float(
            np.mean(
                [
                    balanced_accuracy_score(labels[:, j], predicted[:, j])
                    for j in range(labels.shape[1])
                ]
            )
        )
        return {
            "accuracy": accuracy(labels, probabilities, task),
            "auc": float(np.mean(aucs)) if aucs else float("nan"),
            "balanced_accuracy": balanced,
        }
    y = labels.reshape(-1)
    predicted = probabilities.argmax(axis=1)
    present = np.unique(y)
    if len(present) < 2:
        auc = float("nan")
    elif probabilities.shape[1] == 2:
        auc = roc_auc_score(y, probabilities[:, 1])
    else:
        # Renormalise over the classes present, so a test split missing a class still scores.
        p = probabilities[:, present] / probabilities[:, present].sum(axis=1, keepdims=True)
        auc = roc_auc_score(y, p, multi_class="ovr", average="macro", labels=present)
    return {
        "accuracy": accuracy(labels, probabilities, task),
        "auc": float(auc),
        "balanced_accuracy": float(balanced_accuracy_score(y, predicted)),
    }
