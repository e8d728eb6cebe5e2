"""Stage 2, extraction: run an encoder once over every dataset split into an embedding store.

``extract``: ``EmbedConfig`` and ``embed`` (encoder loading, rank-sharded extraction,
resume), reading run folders through ``embedkit.runs``, batched inference through
``embedkit.primitives.inference`` and writing through ``embedkit.store``.
"""

from ..primitives.inference import EncoderWithHead, encode
from .extract import EmbedConfig, embed, load_encoder

__all__ = ["EmbedConfig", "EncoderWithHead", "embed", "encode", "load_encoder"]
