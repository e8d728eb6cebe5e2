"""Evaluations that read only embedding stores: probes, kNN classification, OOD detection."""

from ..primitives.metrics import classification_metrics, ood_metrics
from .knn import KNNConfig, knn_classify
from .ood import OODConfig, evaluate_ood, sample_scores, summarise_ood_groups
from .probe import ProbeConfig, probe, summarise_probe
from .results import write_table

__all__ = [
    "KNNConfig",
    "OODConfig",
    "ProbeConfig",
    "classification_metrics",
    "evaluate_ood",
    "knn_classify",
    "ood_metrics",
    "probe",
    "sample_scores",
    "summarise_ood_groups",
    "summarise_probe",
    "write_table",
]
