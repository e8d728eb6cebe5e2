"""embedkit: self-supervised learning benchmarks on MedMNIST over cached embedding stores.

Three stages share one embedding store; the package tree follows them:

- ``embedkit.pretrain``: stage 1, SSL pretraining into run folders (the methods are the
  ``embedkit.methods`` family).
- ``embedkit.embed``: stage 2, one pass of an encoder over every dataset split.
- ``embedkit.store``: the zarr embedding store between the stages (reader, writer, checks).
- ``embedkit.eval``: stage 3, probes, kNN classification, OOD detection and transfer over
  stores only (the OOD scorers are the ``embedkit.ood`` family).
- ``embedkit.report``, ``embedkit.plots``: tables and figures from results.
- ``embedkit.quickstart``: the whole chain on the demo data.

Shared pieces: ``data`` (the dataset registry and loading), ``backbones`` (timm encoders and
their weights), ``augment`` (batched tensor augmentations), ``lock`` (one writer per
folder), ``registry``, ``catalog`` (the names ``--help`` lists, without importing torch),
``distributed``, ``errors``, ``utils``.
"""

__version__ = "0.1.0"
