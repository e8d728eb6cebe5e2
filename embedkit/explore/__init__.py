"""An interactive map of a store, in one HTML file that opens offline.

``write_explorer`` builds a Bokeh page with its resources inlined (no server, no network):

- a 2-D map of the embeddings (UMAP when umap-learn is installed, else PCA; cached), drawn
  with WebGL, up to ``max_points`` (a seeded subsample beyond it);
- colour by class, dataset or split, or by an OOD score saved by ``ood --save-scores``, and
  a range filter on a score;
- hover: the image's thumbnail (read back from the dataset file through the store's
  indices), class, dataset, split and row;
- click: the point and its ``k`` nearest neighbours in embedding space (exact cosine search,
  ``embedkit.primitives.neighbors``, precomputed), with distances; a lasso or box selection:
  a gallery, and the selected rows as CSV (dataset, split, index, label, scores);
- two stores: two maps side by side over the same images, selections linked.

``explore`` returns the same layout for a notebook (``bokeh.io.show`` after
``bokeh.io.output_notebook()``). The callbacks are a few lines of JavaScript each.
"""

from .page import explore, write_explorer

__all__ = ["explore", "write_explorer"]
