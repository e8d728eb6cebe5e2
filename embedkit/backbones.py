"""The backbone registry over timm, and the ``Encoder`` that every stage runs.

An ``Encoder`` takes float images in [0, 1] of shape ``(B, C, H, W)`` with C = 1 or 3,
repeats grayscale to three channels, normalises with the backbone's ImageNet statistics
and returns pooled features ``(B, D)``. Pretraining, extraction and the supervised baseline
all go through it, so preprocessing cannot differ between stages.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import timm
import torch
from torch import nn

from .errors import WeightsUnavailableError
from .registry import Registry


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry key and CLI value.
        timm_name: the timm architecture.
        imagenet_tag: the timm pretrained tag that ``--init imagenet`` loads.
        description: one line for ``--help`` and the README.
    """

    name: str
    timm_name: str
    imagenet_tag: str
    description: str


BACKBONES: Registry[BackboneSpec] = Registry("backbone")
for _spec in (
    BackboneSpec("resnet18", "resnet18", "a1_in1k", "ResNet-18, 512-d features; CPU-friendly"),
    BackboneSpec("resnet50", "resnet50", "a1_in1k", "ResNet-50, 2048-d features"),
):
    BACKBONES[_spec.name] = _spec

INITS = ("random", "imagenet")


get_backbone = BACKBONES.__getitem__


class Encoder(nn.Module):
    """A timm backbone with embedkit's input convention (see module docstring).

    Args:
        backbone: a timm model created with ``num_classes=0`` (pooled features).
        name: the registry name of the backbone.
    """

    def __init__(self, backbone: nn.Module, name: str) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.feature_dim: int = backbone.num_features
        cfg = backbone.pretrained_cfg
        self.register_buffer("mean", torch.tensor(cfg["mean"]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg["std"]).view(1, 3, 1, 1), persistent=False)

    @property
    def normalisation(self) -> dict[str, list[float]]:
        return {
            key: [round(v, 6) for v in getattr(self, key).flatten().tolist()]
            for key in ("mean", "std")
        }

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return self.backbone((images - self.mean) / self.std)


def create_encoder(name: str, init: str = "random") -> Encoder:
    """Build an encoder from the registry.

    Args:
        name: a registered backbone.
        init: ``random``, ``imagenet`` (timm's weights from the local cache, downloaded if a
            network is reachable) or the path of a ``.safetensors`` or ``.pt`` state dict of
            the backbone (an embedkit run's ``encoder.safetensors``, for instance).
    """
    spec = get_backbone(name)
    if init == "random":
        return Encoder(timm.create_model(spec.timm_name, pretrained=False, num_classes=0), name)
    if init == "imagenet":
        tagged = f"{spec.timm_name}.{spec.imagenet_tag}"
        try:
            model = timm.create_model(tagged, pretrained=True, num_classes=0)
        except Exception as exc:  # hub errors differ by version: all mean "not available"
            raise WeightsUnavailableError(
                f"ImageNet weights {tagged} are not in the local cache and could not be "
                f"downloaded ({type(exc).__name__}): run once with network access, or pass "
                f"--init PATH to a saved state dict of {name}"
            ) from exc
        return Encoder(model, name)
    path = Path(init).expanduser()
    if not path.is_file():
        raise WeightsUnavailableError(
            f"--init '{init}' is neither 'random', 'imagenet' nor an existing weights file"
        )
    encoder = Encoder(timm.create_model(spec.timm_name, pretrained=False, num_classes=0), name)
    state = load_state_dict(path)
    state = {k.removeprefix("backbone."): v for k, v in state.items()}
    missing, unexpected = encoder.backbone.load_state_dict(state, strict=False)
    if missing:
        raise WeightsUnavailableError(
            f"{path} does not hold {name} weights ({len(missing)} tensors missing, e.g. "
            f"{missing[0]}): pass a state dict of the same backbone"
        )
    return encoder


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``torch.save``d state dict (no pickled code)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "backbone"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    return state


def state_sha256(module: nn.Module) -> str:
    """A checksum of a module's weights, independent of how they are stored on disk."""
    digest = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
