"""Figures for reports and notebooks (matplotlib, no global pyplot state).

Every function returns a ``matplotlib.figure.Figure``; ``embedkit report`` and the
notebooks use the same functions. Result tables: ``ood_heatmap`` (one encoder and
scorer), ``ood_heatmap_grid`` (all, faceted), ``probe_curves``, ``ood_bars``. Stores:
``embedding_map`` (PCA or UMAP), ``retrieval_grid``. Per-sample OOD scores
(``embedkit.eval.sample_scores``): ``score_histograms``, ``roc_curves``. Pretraining runs:
``training_curves`` (one run), ``compare_runs`` (several).
"""

from .maps import embedding_map, retrieval_grid
from .runs import compare_runs, training_curves
from .scores import roc_curves, score_histograms
from .tables import ood_bars, ood_heatmap, ood_heatmap_grid, probe_curves

__all__ = [
    "compare_runs",
    "embedding_map",
    "ood_bars",
    "ood_heatmap",
    "ood_heatmap_grid",
    "probe_curves",
    "retrieval_grid",
    "roc_curves",
    "score_histograms",
    "training_curves",
]
