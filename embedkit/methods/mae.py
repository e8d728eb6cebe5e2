"""MAE [0]: mask most patches of an image and reconstruct their pixels from the rest (ViT).

The encoder's ViT sees only the ``1 - mask_ratio`` kept patches (``_masking``); a light
transformer decoder (lightly's ``MaskedVisionTransformerDecoderTIMM``) fills the masked
positions with a learned mask token and predicts their pixels, normalised per patch
(``norm_pix_loss``, the paper's better setting). The loss is the mean squared error over
the masked patches only. Augmentation is the paper's: crops of 20-100 % and flips, no colour.
At embed time the encoder runs unmasked and its pooled output (the class token) is the
embedding, as for every other method; there is no projection head.

[0] He et al. 2022, Masked Autoencoders Are Scalable Vision Learners, arXiv:2111.06377.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from lightly.models import utils
from lightly.models.modules import MaskedVisionTransformerDecoderTIMM
from torch import nn

from ..augment import AugmentConfig
from ..backbones import Encoder
from . import register_method
from ._masking import masked_vit, token_mask
from .base import MethodConfig, PretrainMethod


@dataclass(frozen=True)
class MAEConfig(MethodConfig):
    """MAE's hyperparameters (the paper's defaults).

    Attributes:
        mask_ratio: share of the patches masked (0.75).
        decoder_dim: width of the decoder (512).
        decoder_depth: transformer blocks of the decoder (8).
        decoder_heads: attention heads of the decoder (16).
        norm_pix_loss: reconstruct each patch's pixels normalised by its own mean and
            variance (the paper's better setting).
        augment: crops of 20-100 % and horizontal flips only.
    """

    mask_ratio: float = 0.75
    decoder_dim: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    norm_pix_loss: bool = True
    augment: AugmentConfig = field(
        default_factory=lambda: AugmentConfig(
            min_scale=0.2, jitter_prob=0.0, grayscale_prob=0.0, blur_prob=0.0
        )
    )


@register_method("mae")
class MAE(PretrainMethod):
    """MAE (see module docstring)."""

    Config = MAEConfig
    min_batch_size = 1
    vit_only = True

    def __init__(self, encoder: Encoder, config: MAEConfig, image_size: int, n_classes: int):
        super().__init__(encoder, config, image_size, n_classes)
        vit = encoder.backbone
        self.__dict__["masked"] = masked_vit(encoder)  # shares the encoder's parameters
        self.n_patches = (image_size // encoder.patch_size) ** 2
        self.n_prefix = vit.num_prefix_tokens
        self.decoder_embed = nn.Linear(vit.embed_dim, config.decoder_dim)
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=self.n_patches,
            embed_dim=config.decoder_dim,
            depth=config.decoder_depth,
            num_heads=config.decoder_heads,
            num_prefix_tokens=self.n_prefix,
        )
        self.prediction = nn.Linear(config.decoder_dim, encoder.patch_size**2 * 3)

    def training_step(self, images, labels, generator) -> torch.Tensor:
        pixels = self.encoder.standardise(self.augment(images, generator))
        n = len(pixels)
        keep, masked = token_mask(
            n, self.n_patches, self.n_prefix, self.config.mask_ratio, generator, pixels.device
        )
        encoded = self.decoder_embed(self.masked.encode(pixels, idx_keep=keep))
        tokens = utils.repeat_token(self.decoder.mask_token, (n, self.n_patches + self.n_prefix))
        tokens = utils.set_at_index(tokens, keep, encoded.type_as(tokens))
        decoded = self.decoder(tokens)
        predicted = self.prediction(utils.get_at_index(decoded, masked))
        target = utils.get_at_index(
            utils.patchify(pixels, self.encoder.patch_size), masked - self.n_prefix
        )
        if self.config.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return nn.functional.mse_loss(predicted, target)
