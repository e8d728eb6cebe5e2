"""SimCLR-style augmentations that run on whole batches of tensors on the training device.

The parameters follow lightly's ``SimCLRTransform`` (random resized crop with scale
(0.08, 1), horizontal flip 0.5, colour jitter 0.8 of strength 0.8/0.8/0.8/0.2, random
grayscale 0.2, Gaussian blur 0.5 with sigma in (0.1, 2) at 224 px; solarisation, off by
default, for BYOL-style asymmetric views), but nothing is done
per image in Python: crops and flips are one ``grid_sample`` with per-sample affine grids,
jitter and blur are per-sample tensor arithmetic. Blur sigmas scale with image size, so a
28 px image is blurred as its 224 px original would be.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


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


def _uniform(n: int, low: float, high: float, g: torch.Generator, device) -> torch.Tensor:
    return low + (high - low) * torch.rand(n, generator=g, device=device)


def _bernoulli(n: int, p: float, g: torch.Generator, device) -> torch.Tensor:
    return torch.rand(n, generator=g, device=device) < p


def random_resized_crop(x: torch.Tensor, size: int, cfg: AugmentConfig, g) -> torch.Tensor:
    """Crop a random area (scale, aspect ratio) of each image, flip it, resize to ``size``."""
    n, device = x.shape[0], x.device
    area = _uniform(n, cfg.min_scale, cfg.max_scale, g, device)
    log_ratio = _uniform(n, math.log(cfg.ratio[0]), math.log(cfg.ratio[1]), g, device)
    ratio = torch.exp(log_ratio)
    width = torch.sqrt(area * ratio).clamp(max=1.0)  # fractions of the image side
    height = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - width) * (2 * torch.rand(n, generator=g, device=device) - 1)
    cy = (1 - height) * (2 * torch.rand(n, generator=g, device=device) - 1)
    flip = torch.where(_bernoulli(n, cfg.hflip_prob, g, device), -1.0, 1.0)
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0] = width * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = height
    theta[:, 1, 2] = cy
    grid = F.affine_grid(theta, [n, x.shape[1], size, size], align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


# Constants of the colour operations, built once per device and dtype: a tensor made from
# Python numbers on a GPU is a host-to-device copy that waits for the GPU to catch up.
_LUMA = (0.299, 0.587, 0.114)
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=np.float64
)
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


@functools.lru_cache(maxsize=32)
def _constant(name: str, device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    values = {"luma": np.array(_LUMA).reshape(1, 3, 1, 1), "hue": _HUE_BASIS}[name]
    return torch.as_tensor(values, dtype=dtype).to(device)


def _gray(x: torch.Tensor) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    return (x * _constant("luma", x.device, x.dtype)).sum(1, keepdim=True)


def _rotate_hue(x: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rotate hue by ``angle`` (radians, per sample) in YIQ space, as one 3 x 3 RGB matrix
    per sample."""
    basis = _constant("hue", x.device, x.dtype)
    coefficients = torch.stack([torch.ones_like(angle), torch.cos(angle), torch.sin(angle)], 1)
    matrices = (coefficients.to(x.dtype) @ basis.flatten(1)).view(-1, 3, 3)
    return torch.einsum("bij,bjhw->bihw", matrices, x)


def color_jitter(x: torch.Tensor, cfg: AugmentConfig, g) -> torch.Tensor:
    """Brightness, contrast, saturation and hue jitter, applied to a random subset."""
    n, device = x.shape[0], x.device
    apply = _bernoulli(n, cfg.jitter_prob, g, device).view(-1, 1, 1, 1)

    def factor(strength: float) -> torch.Tensor:
        return _uniform(n, max(0.0, 1 - strength), 1 + strength, g, device).view(-1, 1, 1, 1)

    out = x * factor(cfg.brightness)
    mean = _gray(out).mean(dim=(1, 2, 3), keepdim=True)
    out = (out - mean) * factor(cfg.contrast) + mean
    if x.shape[1] == 3:
        gray = _gray(out)
        out = (out - gray) * factor(cfg.saturation) + gray
        angle = _uniform(n, -cfg.hue, cfg.hue, g, device) * 2 * math.pi
        out = _rotate_hue(out.clamp(0, 1), angle)
    return torch.where(apply, out.clamp(0, 1), x)


def random_grayscale(x: torch.Tensor, cfg: AugmentConfig, g) -> torch.Tensor:
    if x.shape[1] == 1:
        return x
    apply = _bernoulli(x.shape[0], cfg.grayscale_prob, g, x.device).view(-1, 1, 1, 1)
    return torch.where(apply, _gray(x).expand_as(x), x)


def random_solarize(x: torch.Tensor, cfg: AugmentConfig, g) -> torch.Tensor:
    """Invert the pixels above 0.5 of a random subset (BYOL's solarisation)."""
    if cfg.solarize_prob == 0:
        return x
    apply = _bernoulli(x.shape[0], cfg.solarize_prob, g, x.device).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= 0.5), 1.0 - x, x)


def gaussian_blur(x: torch.Tensor, cfg: AugmentConfig, g) -> torch.Tensor:
    """Blur a random subset with per-sample sigma (separable, one grouped convolution)."""
    n, c, h, w = x.shape
    scale = h / 224
    low, high = cfg.blur_sigma[0] * scale, cfg.blur_sigma[1] * scale
    sigma = _uniform(n, low, high, g, x.device)
    apply = _bernoulli(n, cfg.blur_prob, g, x.device)
    radius = max(1, math.ceil(3 * high))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets.view(1, -1) / sigma.view(-1, 1)) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)
    identity = (offsets == 0).to(x.dtype).expand_as(kernel)
    kernel = torch.where(apply.view(-1, 1), kernel, identity).repeat_interleave(c, dim=0)
    flat = F.pad(x.reshape(1, n * c, h, w), [radius] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(n * c, 1, 1, -1), groups=n * c)
    flat = F.conv2d(flat, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return flat.view(n, c, h, w)


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
        """Augment float images in [0, 1] of shape ``(B, C, H, W)``."""
        cfg = self.config
        with torch.autocast(images.device.type, enabled=False):  # pixels stay in full precision
            x = random_resized_crop(images, self.size, cfg, generator)
            x = color_jitter(x, cfg, generator)
            x = random_grayscale(x, cfg, generator)
            x = gaussian_blur(x, cfg, generator).clamp_(0.0, 1.0)  # rounding can step past 1
            return random_solarize(x, cfg, generator)


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """``(B, H, W, C)`` uint8 to ``(B, C, H, W)`` float in [0, 1], on the input's device."""
    return images_uint8.permute(0, 3, 1, 2).float().div_(255.0)
