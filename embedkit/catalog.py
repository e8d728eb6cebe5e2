"""The names the CLI offers (image sizes, backbones, methods, scorers), readable without
importing torch, timm or lightly, so that ``embedkit --help`` answers at once.

Methods and scorers follow the registry rule "one file per entry, the file name is the key"
(``embedkit.registry``), so their names are the files of ``methods/`` and ``ood/``; the
backbone table lives here and ``embedkit.backbones`` builds its registry from it.
``tests/test_layout.py`` checks that these names equal the registries'.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SIZES: tuple[int, ...] = (28, 64, 128, 224)

# a dataset's task, as the registry, the user's sidecars and every store record it
TASKS: tuple[str, ...] = ("multi-class", "binary", "multi-label", "ordinal")

_PACKAGE = Path(__file__).resolve().parent
_NOT_ENTRIES = {"__init__", "base", "cache", "plugins"}


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    Attributes:
        name: registry key and CLI value.
        timm_name: the timm architecture.
        imagenet_tag: the timm pretrained tag that ``--init imagenet`` loads.
        description: one line for ``--help`` and the README.
        vit: a vision transformer (patch size chosen per resolution).
        small_stem: a ResNet with a 3x3 stride-1 stem and no max-pool.
    """

    name: str
    timm_name: str
    imagenet_tag: str
    description: str
    vit: bool = False
    small_stem: bool = False


BACKBONE_SPECS: tuple[BackboneSpec, ...] = (
    BackboneSpec("resnet18", "resnet18", "a1_in1k", "ResNet-18, 512-d; CPU-friendly"),
    BackboneSpec("resnet50", "resnet50", "a1_in1k", "ResNet-50, 2048-d"),
    BackboneSpec(
        "resnet18_cifar", "resnet18", "a1_in1k", "ResNet-18, 3x3 stride-1 stem", small_stem=True
    ),
    BackboneSpec(
        "resnet50_cifar", "resnet50", "a1_in1k", "ResNet-50, 3x3 stride-1 stem", small_stem=True
    ),
    BackboneSpec(
        "vit_tiny", "vit_tiny_patch16_224", "augreg_in21k_ft_in1k", "ViT-Tiny, 192-d", True
    ),
    BackboneSpec(
        "vit_small", "vit_small_patch16_224", "augreg_in21k_ft_in1k", "ViT-Small, 384-d", True
    ),
)


def _entries(folder: str) -> tuple[str, ...]:
    return tuple(
        sorted(
            p.stem
            for p in (_PACKAGE / folder).glob("*.py")
            if not p.stem.startswith("_") and p.stem not in _NOT_ENTRIES
        )
    )


BACKBONE_NAMES: tuple[str, ...] = tuple(spec.name for spec in BACKBONE_SPECS)
METHOD_NAMES: tuple[str, ...] = _entries("methods")
SCORER_NAMES: tuple[str, ...] = _entries("ood")

__all__ = [
    "BACKBONE_NAMES",
    "BACKBONE_SPECS",
    "METHOD_NAMES",
    "SCORER_NAMES",
    "SIZES",
    "BackboneSpec",
]
