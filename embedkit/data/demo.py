"""The built-in demo family: MedMNIST-format datasets cut from scikit-image's sample images.

No network is needed: the source images ship inside scikit-image. Each dataset's class is
its source image. Train, val and test patches come from disjoint regions of each source
(train: the left 60 % of the image; val: the top half of the rest; test: the bottom half),
so no test patch overlaps a training patch. Patch side and position are random (seeded),
so scale is not a class cue, and every patch is resized to the requested size.

- ``demo-med``: immunohistochemistry, retina and cell microscopy (in-distribution).
- ``demo-natural``: photographs (far out-of-distribution).
- ``demo-texture``: brick, grass and gravel textures (near out-of-distribution).

All three are grayscale, like most MedMNIST datasets, so colour alone does not separate them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import MappingProxyType

import numpy as np

from .registry import GROUPS, DatasetInfo, check_size, register_dataset

log = logging.getLogger(__name__)

GENERATOR_VERSION = 1
PER_CLASS = {"train": 400, "val": 100, "test": 200}

# source image name in skimage.data -> crop box (top, bottom, left, right) as fractions.
_SOURCES: dict[str, dict[str, tuple[float, float, float, float]]] = {
    "demo-med": {
        "immunohistochemistry": (0.0, 1.0, 0.0, 1.0),
        "retina": (0.18, 0.82, 0.18, 0.82),  # inside the fundus circle: no black border
        "cell": (0.0, 1.0, 0.0, 1.0),
    },
    "demo-natural": {
        "astronaut": (0.0, 1.0, 0.0, 1.0),
        "coffee": (0.0, 1.0, 0.0, 1.0),
        "chelsea": (0.0, 1.0, 0.0, 1.0),
        "camera": (0.0, 1.0, 0.0, 1.0),
        "rocket": (0.0, 1.0, 0.0, 1.0),
    },
    "demo-texture": {
        "brick": (0.0, 1.0, 0.0, 1.0),
        "grass": (0.0, 1.0, 0.0, 1.0),
        "gravel": (0.0, 1.0, 0.0, 1.0),
    },
}
_DESCRIPTIONS = {
    "demo-med": "Patches of scikit-image's medical sample images; class = source image.",
    "demo-natural": "Patches of natural photographs: far out-of-distribution for demo-med.",
    "demo-texture": "Patches of brick, grass and gravel textures: near out-of-distribution.",
}

_MODALITIES = {
    "demo-med": "microscopy and fundus",
    "demo-natural": "natural photograph",
    "demo-texture": "texture photograph",
}


def _info(name: str) -> DatasetInfo:
    classes = tuple(_SOURCES[name])
    n_samples = {split: n * len(classes) for split, n in PER_CLASS.items()}
    return DatasetInfo(
        name=name,
        task="multi-class",
        n_channels=1,
        class_names=classes,
        n_samples=MappingProxyType(n_samples),
        family="demo",
        description=_DESCRIPTIONS[name],
        modality=_MODALITIES[name],
    )


for _name in _SOURCES:
    register_dataset(_info(_name))
GROUPS["demo"] = tuple(_SOURCES)


def _source_image(source: str, box: tuple[float, float, float, float]) -> np.ndarray:
    import skimage.color
    import skimage.data

    image = getattr(skimage.data, source)()
    if image.ndim == 3:
        image = skimage.color.rgb2gray(image[..., :3])
    image = image.astype(np.float64)
    if image.max() > 1.0:
        image = image / 255.0
    top, bottom, left, right = box
    h, w = image.shape
    return image[int(top * h) : int(bottom * h), int(left * w) : int(right * w)]


def regions(h: int, w: int) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint (top, bottom, left, right) regions per split."""
    cut = int(0.6 * w)
    return {"train": (0, h, 0, cut), "val": (0, h // 2, cut, w), "test": (h // 2, h, cut, w)}


def patch_boxes(image_shape: tuple[int, int], region, n: int, rng) -> np.ndarray:
    """``n`` random square boxes (top, left, side) inside ``region`` of an image."""
    top, bottom, left, right = region
    max_side = min(bottom - top, right - left, min(image_shape) // 4)
    min_side = max(8, min(image_shape) // 10)
    boxes = np.empty((n, 3), dtype=np.int64)
    for i in range(n):
        side = int(rng.integers(min_side, max_side + 1))
        boxes[i] = (
            rng.integers(top, bottom - side + 1),
            rng.integers(left, right - side + 1),
            side,
        )
    return boxes


def _patches(image: np.ndarray, boxes: np.ndarray, size: int) -> np.ndarray:
    from skimage.transform import resize

    out = np.empty((len(boxes), size, size), dtype=np.uint8)
    for i, (y, x, side) in enumerate(boxes):
        patch = resize(image[y : y + side, x : x + side], (size, size), anti_aliasing=True)
        out[i] = np.clip(np.rint(patch * 255.0), 0, 255).astype(np.uint8)
    return out


def make_demo(name: str, size: int) -> dict[str, np.ndarray]:
    """Build a demo dataset's arrays, MedMNIST's npz layout (deterministic for name and size)."""
    check_size(size)
    arrays: dict[str, np.ndarray] = {}
    seed = [GENERATOR_VERSION, sorted(_SOURCES).index(name), size]
    rng = np.random.default_rng(seed)
    sources = [_source_image(source, box) for source, box in _SOURCES[name].items()]
    for split, per_class in PER_CLASS.items():
        images, labels = [], []
        for label, image in enumerate(sources):
            boxes = patch_boxes(image.shape, regions(*image.shape)[split], per_class, rng)
            images.append(_patches(image, boxes, size))
            labels.append(np.full((per_class, 1), label, dtype=np.uint8))
        arrays[f"{split}_images"] = np.concatenate(images)
        arrays[f"{split}_labels"] = np.concatenate(labels)
    return arrays


def write_demo(name: str, size: int, root: Path) -> Path:
    """Write a demo dataset to ``root/{name}_{size}.npz`` (atomically) and return its path."""
    log.info("generating %s at %d px in %s", name, size, root)
    arrays = make_demo(name, size)
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{name}_{size}.npz"
    tmp = root / f".{name}_{size}.{os.getpid()}.tmp.npz"
    np.savez(tmp, **arrays)  # uncompressed: the loader memory-maps it
    tmp.replace(path)
    return path
