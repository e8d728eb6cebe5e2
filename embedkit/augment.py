"""SimCLR-style augmentations of whole batches on the training device, launched as a few
image-sized kernels.

The parameters follow lightly's ``SimCLRTransform`` (random resized crop with scale
(0.08, 1), horizontal flip 0.5, colour jitter 0.8 of strength 0.8/0.8/0.8/0.2, random
grayscale 0.2, Gaussian blur 0.5 with sigma in (0.1, 2) at 224 px; solarisation, off by
default, for BYOL-style asymmetric views). Nothing is done per image in Python, and nothing
per sample on the device: every random choice of a call (crop box, flip, jitter factors, hue
angle, grey, blur sigma, solarisation) is drawn on the host from a CPU generator in one draw
and turned there into per-sample matrices and kernels, which reach the device in one
non-blocking copy. The device then runs the image work only: one ``grid_sample`` for crops
and flips, brightness, contrast and saturation as one 3 x 3 matrix and offset per sample, hue
as another (YIQ rotation), grey as a third, the blur as one grouped separable convolution,
solarisation as ``min(x, 1 - x)``; a step none of the samples needs is not launched. Views of
the same size, each with its own strengths (SimCLR's two views, BYOL-style asymmetric pairs,
DINO's local crops), go through one call (``augment_views``). Blur sigmas scale with image
size, so a 28 px image is blurred as its 224 px original would be. The same seed gives the
same views on any device.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .host_syncs import upload


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation strengths; defaults are lightly's SimCLRTransform defaults."""

    min_scale: float = 0.08
    max_scale: float = 1.0
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip_prob: float = 0.5
    jitter_prob: float = 0.8
    brightness: float = 0.8
    contrast: float = 0.8
    saturation: float = 0.8
    hue: float = 0.2
    grayscale_prob: float = 0.2
    blur_prob: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_prob: float = 0.0


def local_crop_size(image_size: int, patch_size: int) -> int:
    """The side of multi-crop's small views (SwAV's and DINO's 96 px at 224), a multiple of
    the ViT patch size (1 for ResNets)."""
    return max(patch_size, round(image_size * 96 / 224 / patch_size) * patch_size)


def small_views(
    augment: AugmentConfig,
    scale: tuple[float, float],
    image_size: int,
    patch_size: int,
    **changes: float,
) -> BatchAugment:
    """Multi-crop's small views (DINO's local crops, SwAV's, MSN's focal ones): ``augment``
    with crops of ``scale`` of the area, at ``local_crop_size``."""
    low, high = scale
    small = dataclasses.replace(augment, min_scale=low, max_scale=high, **changes)
    return BatchAugment(local_crop_size(image_size, patch_size), small)


def byol_views() -> tuple[AugmentConfig, AugmentConfig]:
    """BYOL's asymmetric views [0] (also MoCo v3's, NNCLR's and TiCo's): crops of 8-100 %,
    jitter 0.4/0.4/0.2/0.1, blur always on the first view and on 10 % of the second,
    solarisation on 20 % of the second.

    [0] Grill et al. 2020, Bootstrap your own latent, arXiv:2006.07733, table 6.
    """
    jitter = dict(min_scale=0.08, brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)
    return (
        AugmentConfig(**jitter, blur_prob=1.0),
        AugmentConfig(**jitter, blur_prob=0.1, solarize_prob=0.2),
    )


# Named presets: overrides applied on top of a method's own augmentations (its crops, blur and
# solarisation stay the method's), chosen with ``--param augment=NAME``.
AUGMENT_PRESETS: dict[str, dict[str, float]] = {
    # the method's defaults, tuned on natural colour images
    "natural": {},
    # grey modalities (X-ray, CT, ultrasound, OCT): no colour jitter, which only rescales
    # a grey image, and no grey conversion; milder brightness and contrast; crops of at
    # least a fifth of the image so that small findings are not cropped away as often
    "grayscale-medical": {
        "saturation": 0.0,
        "hue": 0.0,
        "grayscale_prob": 0.0,
        "brightness": 0.4,
        "contrast": 0.4,
        "min_scale": 0.2,
    },
    # colour modalities (dermoscopy, histology, fundus): stain and lighting vary, but a hue
    # shift changes the finding; keep saturation, drop hue and grey conversion
    "color-medical": {"hue": 0.0, "grayscale_prob": 0.0, "min_scale": 0.2},
}


# The per-sample parameters are worked out on the host in numpy (float64): a few small
# arrays per call, no device kernels and no torch dispatch for them.
_LUMA = np.array([0.299, 0.587, 0.114])
_RGB_TO_YIQ = np.array([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
# Rotating the (I, Q) plane by a in YIQ space is, in RGB, the matrix
# inv(YIQ) @ (E_y + cos(a) E_iq + sin(a) J) @ YIQ = HUE[0] + cos(a) HUE[1] + sin(a) HUE[2].
_HUE_BASIS = np.stack(
    [
        np.linalg.inv(_RGB_TO_YIQ) @ rotation @ _RGB_TO_YIQ
        for rotation in (
            np.diag([1.0, 0.0, 0.0]),
            np.diag([0.0, 1.0, 1.0]),
            np.array([[0.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]),
        )
    ]
)
_N_DRAWS = 14  # uniform numbers drawn per sample (see ``_draw``)
# the steps a call may skip when none of its samples takes them, and their parameters
_STEPS = {
    "jitter": ("jitter_matrix", "jitter_mean"),
    "hue": ("hue",),
    "gray": ("gray",),
    "blur": ("blur",),
    "solarize": ("solarize",),
}


def hue_matrices(angle: np.ndarray) -> np.ndarray:
    """RGB matrices ``(N, 3, 3)`` rotating hue by ``angle`` (radians) in YIQ space."""
    coefficients = np.stack([np.ones_like(angle), np.cos(angle), np.sin(angle)], 1)
    return (coefficients @ _HUE_BASIS.reshape(3, 9)).reshape(-1, 3, 3)


def _blur_radius(cfg: AugmentConfig, size: int) -> int:
    return max(1, math.ceil(3 * cfg.blur_sigma[1] * size / 224))


def _draw(n: int, channels: int, size: int, radius: int, cfg: AugmentConfig, generator):
    """The per-sample parameters of ``n`` views, and for each skippable step the mask of the
    samples that take it (host arrays)."""
    u = torch.rand(n, _N_DRAWS, generator=generator, dtype=torch.float64).numpy()

    def between(column: int, low: float, high: float) -> np.ndarray:
        return low + (high - low) * u[:, column]

    def factor(column: int, strength: float) -> np.ndarray:
        return between(column, max(0.0, 1 - strength), 1 + strength)

    # random resized crop and flip, as affine grids over the image in [-1, 1]
    area = between(0, cfg.min_scale, cfg.max_scale)
    ratio = np.exp(between(1, math.log(cfg.ratio[0]), math.log(cfg.ratio[1])))
    width = np.minimum(np.sqrt(area * ratio), 1.0)  # fractions of the image side
    height = np.minimum(np.sqrt(area / ratio), 1.0)
    theta = np.zeros((n, 2, 3))
    theta[:, 0, 0] = width * np.where(u[:, 4] < cfg.hflip_prob, -1.0, 1.0)
    theta[:, 0, 2] = (1 - width) * (2 * u[:, 2] - 1)
    theta[:, 1, 1] = height
    theta[:, 1, 2] = (1 - height) * (2 * u[:, 3] - 1)

    # colour jitter: brightness b, contrast c around the mean luma m, saturation s, in order:
    # x -> S (c b x + (1 - c) m) = c b S x + (1 - c) b (luma . channel means of x)   (S 1 = 1)
    jitter = u[:, 5] < cfg.jitter_prob
    brightness, contrast = factor(6, cfg.brightness), factor(7, cfg.contrast)
    eye = np.broadcast_to(np.eye(channels), (n, channels, channels))
    luma = _LUMA if channels == 3 else np.ones(1)
    desaturate = np.ones((channels, 1)) @ luma.reshape(1, -1)
    s = (factor(8, cfg.saturation) if channels == 3 else np.ones(n)).reshape(-1, 1, 1)
    linear = (contrast * brightness).reshape(-1, 1, 1) * (s * eye + (1 - s) * desaturate)
    offset = ((1 - contrast) * brightness).reshape(-1, 1) * luma.reshape(1, -1)
    out = {
        "theta": theta,
        "jitter_matrix": np.where(jitter.reshape(-1, 1, 1), linear, eye),
        "jitter_mean": np.where(jitter.reshape(-1, 1), offset, 0.0),
        "jitter_mask": jitter,
    }
    if channels == 3:
        rotate = jitter & (cfg.hue > 0)
        angle = between(9, -cfg.hue, cfg.hue) * 2 * math.pi
        gray = u[:, 10] < cfg.grayscale_prob
        out["hue"] = np.where(rotate.reshape(-1, 1, 1), hue_matrices(angle), eye)
        out["gray"] = np.where(gray.reshape(-1, 1, 1), desaturate, eye)
        out.update({"hue_mask": rotate, "gray_mask": gray})

    # Gaussian blur: one normalised 1-d kernel per sample, the identity where not blurred
    scale = size / 224
    sigma = between(11, cfg.blur_sigma[0] * scale, cfg.blur_sigma[1] * scale)
    blurred = u[:, 12] < cfg.blur_prob
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets.reshape(1, -1) / sigma.reshape(-1, 1)) ** 2)
    kernel /= kernel.sum(axis=1, keepdims=True)
    out["blur"] = np.where(blurred.reshape(-1, 1), kernel, (offsets == 0).astype(np.float64))

    # solarisation: pixels at or above 0.5 become 1 - x, that is min(x, 1 - x); with inf for
    # 1 a sample keeps min(x, inf) = x
    solarize = u[:, 13] < cfg.solarize_prob
    out["solarize"] = np.where(solarize, 1.0, np.inf)
    out.update({"blur_mask": blurred, "solarize_mask": solarize})
    return out


def _to_device(parts: dict[str, np.ndarray], device: torch.device, dtype) -> dict:
    """The host arrays in one copy (pinned and non-blocking on a GPU), laid end to end so
    that each one on the device is a contiguous view of the copy (no reshaping copies)."""
    flat = np.concatenate([array.ravel() for array in parts.values()])
    pieces = upload(flat, device, dtype).split([array.size for array in parts.values()])
    return {
        name: piece.view(array.shape)
        for (name, array), piece in zip(parts.items(), pieces, strict=True)
    }


def _matrix(
    x: torch.Tensor, matrices: torch.Tensor, offset: torch.Tensor | None = None
) -> torch.Tensor:
    """Apply a per-sample ``(N, C, C)`` colour matrix to ``(N, C, H, W)`` images, plus a
    per-sample ``(N, 1, 1)`` ``offset`` in the same operation when given."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w)
    out = torch.bmm(matrices, flat) if offset is None else torch.baddbmm(offset, matrices, flat)
    return out.view(n, c, h, w)


def augment_views(
    images: torch.Tensor, augments: list[BatchAugment], generator: torch.Generator
) -> torch.Tensor:
    """One view of every image per entry of ``augments`` (all of one output size), stacked
    in order: ``(len(augments) * B, C, size, size)``, in one pass of image kernels.

    Args:
        images: float images in [0, 1], ``(B, C, H, W)``, on the training device.
        augments: the views' augmentations (their sizes must agree).
        generator: a CPU generator; every random choice is drawn from it, view by view.
    """
    sizes = {augment.size for augment in augments}
    if len(sizes) != 1:
        raise ValueError(f"views of one call must share their size, got {sorted(sizes)}")
    size, (n, channels) = sizes.pop(), images.shape[:2]
    radius = max(_blur_radius(augment.config, size) for augment in augments)
    # a run of views with one config (DINO's local crops) is drawn at once: the generator
    # gives k * n rows in the order k draws of n would, and parameters are per row
    drawn = [
        _draw(len(list(run)) * n, channels, size, radius, config, generator)
        for config, run in itertools.groupby(augments, key=lambda augment: augment.config)
    ]
    params = {key: np.concatenate([d[key] for d in drawn]) for key in drawn[0]}
    steps = [step for step in _STEPS if params.get(f"{step}_mask", np.zeros(1)).any()]
    parts = {"theta": params["theta"]}
    parts.update({name: params[name] for step in steps for name in _STEPS[step]})
    if "blur" in parts:  # one kernel per sample and channel, for the grouped convolution
        parts["blur"] = np.repeat(parts["blur"], channels, axis=0)
    with torch.autocast(images.device.type, enabled=False):  # pixels stay in full precision
        p = _to_device(parts, images.device, images.dtype)
        k = len(augments)
        source = images.repeat(k, 1, 1, 1) if k > 1 else images
        grid = F.affine_grid(p["theta"], [k * n, channels, size, size], align_corners=False)
        x = F.grid_sample(
            source, grid, mode="bilinear", padding_mode="reflection", align_corners=False
        )
        if "jitter_matrix" in p:
            # the offset is the channel means' luma-weighted sum, per sample: (N, 1, 1)
            offset = torch.bmm(p["jitter_mean"].unsqueeze(1), x.mean((-2, -1)).unsqueeze(2))
            x = _matrix(x, p["jitter_matrix"], offset).clamp_(0.0, 1.0)
            if "hue" in p:
                x = _matrix(x, p["hue"]).clamp_(0.0, 1.0)
        if "gray" in p:
            x = _matrix(x, p["gray"])
        if "blur" in p:
            kernel = p["blur"]  # (N * C, 2 radius + 1)
            flat = F.pad(x.reshape(1, -1, size, size), [radius] * 4, mode="reflect")
            flat = F.conv2d(flat, kernel.view(-1, 1, 1, 2 * radius + 1), groups=kernel.shape[0])
            flat = F.conv2d(flat, kernel.view(-1, 1, 2 * radius + 1, 1), groups=kernel.shape[0])
            x = flat.view_as(x)
        if "gray" in p or "blur" in p:
            x = x.clamp_(0.0, 1.0)  # rounding can step past 1
        if "solarize" in p:  # exactly ``where(x >= 0.5, 1 - x, x)``, in two kernels, not three
            x = torch.minimum(x, p["solarize"].view(-1, 1, 1, 1) - x)
        return x


class BatchAugment(torch.nn.Module):
    """One random view of every image in a batch.

    Args:
        size: output side in pixels.
        config: augmentation strengths.
    """

    def __init__(self, size: int, config: AugmentConfig | None = None) -> None:
        super().__init__()
        self.size = size
        self.config = config or AugmentConfig()

    def forward(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Augment float images in [0, 1] of shape ``(B, C, H, W)``; ``generator`` is a CPU
        generator."""
        return augment_views(images, [self], generator)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` uint8 to ``(B, C, H, W)`` float in [0, 1], on the input's device."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
