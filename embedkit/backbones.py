"""The backbone registry over timm, and the ``Encoder`` that every stage runs.

An ``Encoder`` takes float images in [0, 1] of shape ``(B, C, H, W)`` with C = 1 or 3,
repeats grayscale to three channels, normalises with the backbone's ImageNet statistics
and returns pooled features ``(B, D)``. Pretraining, extraction and the supervised baseline
all go through it, so preprocessing cannot differ between stages.

Vision transformers get a patch size that suits the resolution (4 px at 28, 8 at 64, 16 at
128 and 224) and accept other input sizes by interpolating their position embeddings, which
DINO's small local crops need. The ``_cifar`` ResNets replace the ImageNet stem (7x7 stride-2
convolution and max-pool, which leave 1x1 maps at 28 px) by a 3x3 stride-1 convolution, as
solo-learn does for small images.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import timm
import torch
from torch import nn

from .catalog import BACKBONE_SPECS, BackboneSpec
from .errors import ConfigError, WeightsUnavailableError
from .registry import Registry
from .small_map_conv import unfold_pays, use_unfold_weight_grads
from .utils import torch_file_problem

BACKBONES: Registry[BackboneSpec] = Registry("backbone")
for _spec in BACKBONE_SPECS:
    BACKBONES[_spec.name] = _spec

get_backbone = BACKBONES.__getitem__
VIT_PATCH_SIZES = {28: 4, 64: 8, 128: 16, 224: 16}


def patch_size_for(name: str, image_size: int, patch_size: int = 0) -> int:
    """The patch size of backbone ``name`` at ``image_size`` (1 for ResNets).

    Raises:
        ConfigError: ``patch_size`` does not divide the image side.
    """
    if not get_backbone(name).vit:
        return 1
    patch = patch_size or VIT_PATCH_SIZES.get(image_size, 16)
    if image_size % patch:
        raise ConfigError(
            f"{image_size} px images do not split into {patch} px patches for {name}: "
            f"use a patch size that divides {image_size} (default "
            f"{VIT_PATCH_SIZES.get(image_size, 16)})"
        )
    return patch


class Encoder(nn.Module):
    """A timm backbone with embedkit's input convention (see module docstring).

    Args:
        backbone: a timm model created with ``num_classes=0`` (pooled features).
        name: the registry name of the backbone.
        patch_size: the ViT patch size (1 for ResNets); crops must be multiples of it.
    """

    def __init__(self, backbone: nn.Module, name: str, patch_size: int = 1) -> None:
        super().__init__()
        self.backbone = backbone
        self.name = name
        self.patch_size = patch_size
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

    def standardise(self, images: torch.Tensor) -> torch.Tensor:
        """What the backbone sees of ``images``: three channels, ImageNet-normalised (for
        methods that run the backbone's parts themselves, like MAE's masked encoder)."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        return (images - self.mean) / self.std

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone(self.standardise(images))


def _hf_cache_dir() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _network_reachable(host: str = "huggingface.co") -> bool:
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _timm_weights_file(tagged: str) -> str | None:
    """The cached weights file of a timm ``arch.tag``, or None when it must be downloaded.

    Raises:
        WeightsUnavailableError: not cached and the hub cannot be reached.
    """
    from huggingface_hub import try_to_load_from_cache

    try:
        repo = timm.models.get_pretrained_cfg(tagged).hf_hub_id
    except (RuntimeError, AttributeError, KeyError) as exc:
        raise WeightsUnavailableError(f"timm has no pretrained weights '{tagged}'") from exc
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename, cache_dir=_hf_cache_dir())
        if isinstance(found, str):
            return found
    if not _network_reachable():
        raise WeightsUnavailableError(
            f"weights {tagged} are missing: {repo}/model.safetensors is not in the Hugging "
            f"Face cache ({_hf_cache_dir()}) and huggingface.co cannot be reached; run once with "
            f"network access, copy that cache folder here, or pass --init PATH to a state dict"
        )
    return None


def _create(spec: BackboneSpec, image_size: int, patch_size: int, tag: str | None) -> nn.Module:
    kwargs: dict = {"num_classes": 0}
    if spec.vit:
        kwargs.update(img_size=image_size, patch_size=patch_size, dynamic_img_size=True)
    if tag is None:
        model = timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    else:
        tagged = f"{spec.timm_name}.{tag}"
        weights_file = _timm_weights_file(tagged)
        overlay = {"file": weights_file} if weights_file else None
        try:
            model = timm.create_model(
                tagged, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs
            )
        except Exception as exc:  # hub errors differ by version: all mean "not available"
            raise WeightsUnavailableError(
                f"weights {tagged} could not be loaded ({type(exc).__name__}): run once with "
                f"network access or pass --init PATH to a state dict of {spec.name}"
            ) from exc
    if spec.small_stem:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    if unfold_pays():
        use_unfold_weight_grads(model)
    return model


def check_init(name: str, init: str) -> None:
    """Refuse an init that ``create_encoder`` cannot give backbone ``name``, before anything
    is built (``grid plan`` checks every cell's this way).

    Raises:
        ConfigError: timm's pretrained weights for a small-stem ResNet.
        WeightsUnavailableError: neither ``random``, ``imagenet``, ``timm:TAG`` nor a file.
    """
    spec = get_backbone(name)
    pretrained = init == "imagenet" or init.startswith("timm:")
    if pretrained and spec.small_stem:
        raise ConfigError(
            f"{name} has a 3x3 stem that timm's {init} weights do not fit: use "
            f"{spec.timm_name} for pretrained initialisation"
        )
    if not pretrained and init != "random" and not Path(init).expanduser().is_file():
        raise WeightsUnavailableError(
            f"--init '{init}' is neither 'random', 'imagenet', 'timm:TAG' nor an existing "
            f"weights file"
        )


def create_encoder(
    name: str, init: str = "random", image_size: int = 224, patch_size: int = 0
) -> Encoder:
    """Build an encoder from the registry.

    Args:
        name: a registered backbone.
        init: ``random``; ``imagenet`` (timm's supervised weights of the registry entry);
            ``timm:TAG`` for any timm pretrained tag of the architecture (``timm:dino`` for
            the self-supervised DINO ViTs); or the path of a ``.safetensors`` / ``.pt`` state
            dict of the backbone (an embedkit run's ``encoder.safetensors``, a lightly
            checkpoint). timm weights come from the Hugging Face cache, downloaded if a
            network is reachable.
        image_size: input side in pixels (sets the ViT grid).
        patch_size: ViT patch size; 0 picks one for ``image_size``.

    Raises:
        WeightsUnavailableError: weights missing or of another backbone.
        ConfigError: a patch size that does not divide the image, ImageNet weights on a
            small-stem ResNet.
    """
    spec = get_backbone(name)
    patch = patch_size_for(name, image_size, patch_size)
    check_init(name, init)
    tag = {"random": None, "imagenet": spec.imagenet_tag}.get(init)
    if init.startswith("timm:"):
        tag = init.removeprefix("timm:")
    if init in ("random", "imagenet") or init.startswith("timm:"):
        return Encoder(_create(spec, image_size, patch, tag), name, patch)
    path = Path(init).expanduser()
    encoder = Encoder(_create(spec, image_size, patch, None), name, patch)
    state = backbone_keys(load_state_dict(path))
    missing, _ = encoder.backbone.load_state_dict(state, strict=False)
    if missing:
        raise WeightsUnavailableError(
            f"{path} does not hold {name} weights ({len(missing)} tensors missing, e.g. "
            f"{missing[0]}): pass a state dict of the same backbone"
        )
    return encoder


# torchvision's ResNet children as nn.Sequential(*list(resnet.children())[:-1]), the way
# lightly's examples build a backbone: position -> timm / torchvision module name.
_SEQUENTIAL_RESNET = {
    "0": "conv1",
    "1": "bn1",
    "4": "layer1",
    "5": "layer2",
    "6": "layer3",
    "7": "layer4",
}


def backbone_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The backbone's tensors of a checkpoint under timm's names.

    Keeps the keys under ``backbone.`` when there are any (an embedkit run, a lightly
    LightningModule checkpoint, whose heads and momentum copies are dropped), and renames
    the positions of a torchvision ResNet wrapped in ``nn.Sequential`` (lightly's examples).
    """
    if any(k.startswith("backbone.") for k in state):
        state = {k[9:]: v for k, v in state.items() if k.startswith("backbone.")}
    renamed = {}
    for key, value in state.items():
        head, _, rest = key.partition(".")
        renamed[f"{_SEQUENTIAL_RESNET.get(head, head)}.{rest}" if rest else key] = value
    return renamed


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read tensors from a safetensors file or a ``torch.save``d state dict (no pickled code)."""
    import pickle

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except SafetensorError as exc:
            raise WeightsUnavailableError(
                f"weights file {path} is not a readable safetensors file ({exc}): "
                f"write it again, or pass another --init"
            ) from exc
    problem = torch_file_problem(path)
    if problem:
        raise WeightsUnavailableError(
            f"weights file {path} cannot be read: {problem}; pass a .safetensors file or a "
            f"torch.save'd state dict"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsUnavailableError(
            f"{path} holds pickled Python objects besides tensors, which embedkit does not "
            f"execute: save its state_dict alone (torch.save(ckpt['state_dict'], 'weights.pt'), "
            f"if you trust the file)"
        ) from exc
    except (RuntimeError, EOFError, ValueError) as exc:
        raise WeightsUnavailableError(
            f"weights file {path} is damaged ({type(exc).__name__}): write it again, or pass "
            f"another --init"
        ) from exc
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
