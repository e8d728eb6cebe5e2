"""What the masked-image methods share (not a method itself): MAE and MSN.

Both run the encoder's ViT on a random subset of its patch tokens, through lightly's
``MaskedVisionTransformerTIMM`` wrapped around the encoder's own timm ViT (the same
parameters: what is trained is what ``embed`` runs, unmasked). The wrapper keeps the
encoder's weights and position embeddings as created (``random``: timm's initialisation,
``imagenet``: its weights), so the methods are compared from the same start as the others.
Masks are drawn from the step's CPU generator, so a resumed run draws the same masks.
"""

from __future__ import annotations

import torch
from lightly.models.modules import MaskedVisionTransformerTIMM

from ..backbones import Encoder
from ..host_syncs import upload


def masked_vit(encoder: Encoder) -> MaskedVisionTransformerTIMM:
    """lightly's masked ViT around ``encoder.backbone``, its weights left as they are."""
    return MaskedVisionTransformerTIMM(
        vit=encoder.backbone, weight_initialization="skip", pos_embed_initialization="skip"
    )


def token_mask(
    n: int, n_patches: int, n_prefix: int, ratio: float, generator: torch.Generator, device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image, the token indices kept and those masked (lightly's ``random_token_mask``
    with the noise drawn on the host from ``generator``): the prefix (class) tokens are
    always kept, ``int(n_patches * (1 - ratio))`` patch tokens (at least one) besides."""
    keep = max(1, int(n_patches * (1 - ratio))) + n_prefix
    noise = torch.rand(n, n_patches + n_prefix, generator=generator).numpy()
    noise[:, :n_prefix] = -1.0  # on the host: the prefix sorts first
    order = upload(noise, device, torch.float32).argsort(dim=1)
    return order[:, :keep], order[:, keep:]
