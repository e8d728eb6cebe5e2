"""Stage 2, extraction: run an encoder once over every dataset split into an embedding store.

- ``extract``: ``EmbedConfig`` and ``embed`` (encoder loading, rank-sharded extraction,
  resume), writing through ``embedkit.store``.
- ``inference``: batched encoding (prefetched uint8 batches, pinned copies, autocast),
  shared with the pretraining stage's kNN monitor.
"""

# ``inference`` first: ``embedkit.pretrain``'s monitor uses it while ``extract`` reads runs.
from .inference import EncoderWithHead, encode

# isort: split
from .extract import EmbedConfig, embed, load_encoder

__all__ = ["EmbedConfig", "EncoderWithHead", "embed", "encode", "load_encoder"]
