"""embedkit: self-supervised learning benchmarks on MedMNIST over cached embedding stores.

Three stages share one embedding store: ``pretrain`` trains an encoder, ``embed`` writes
every dataset split's embeddings to a zarr store once, and the evaluations (``probe``,
``knn``, ``ood``) read only the store.
"""

__version__ = "0.1.0"
