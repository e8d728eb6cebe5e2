"""The user's images as MedMNIST-shaped uint8 arrays: decoded once, in parallel, cached.

Images of any size and format Pillow reads are made square (stretched, or a centre square
cropped), resized with Pillow's antialiased bicubic filter (MedMNIST's own resampling) and
converted to grey or RGB. 16-bit and floating-point images (DICOM exports, microscopy TIFFs)
are scaled from their own minimum and maximum to 0-255 first.

Decoded splits are cached under ``$XDG_CACHE_HOME/embedkit/images`` (``~/.cache`` by
default), keyed by the bytes of the files (and the size, channels and resize mode), so
embedding a dataset again decodes nothing and an edited image is decoded anew.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ..errors import InvalidDataError

log = logging.getLogger(__name__)

CACHE_VERSION = 1
_HIGH_DEPTH = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def _workers() -> int:
    return max(1, min(16, os.cpu_count() or 1))


def content_digest(files: Sequence[Path], base: Path) -> str:
    """SHA-256 of the files' names (relative to ``base``) and bytes, in order."""

    def one(path: Path) -> tuple[str, str]:
        digest = hashlib.md5()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        try:
            name = path.relative_to(base).as_posix()
        except ValueError:
            name = path.as_posix()
        return name, digest.hexdigest()

    total = hashlib.sha256()
    with ThreadPoolExecutor(_workers()) as pool:
        for name, digest in pool.map(one, files):
            total.update(f"{name}\0{digest}\n".encode())
    return total.hexdigest()


def prepare(image, size: int, channels: int, resize: str = "stretch") -> np.ndarray:
    """A Pillow image as a ``(size, size, channels)`` uint8 array."""
    from PIL import Image

    if image.format == "JPEG":  # decode at a reduced scale that still covers the target
        image.draft("L" if channels == 1 else "RGB", (size, size))
    if image.mode in _HIGH_DEPTH:
        values = np.asarray(image, dtype=np.float64)
        low, high = float(values.min()), float(values.max())
        scaled = (values - low) * (255.0 / (high - low)) if high > low else values * 0
        image = Image.fromarray(np.round(scaled).astype(np.uint8), "L")
    elif image.mode in ("P", "PA") or (image.mode == "RGBA" and channels == 1):
        image = image.convert("RGBA").convert("RGB")
    image = image.convert("L" if channels == 1 else "RGB")
    if resize == "crop" and image.width != image.height:
        side = min(image.size)
        left, top = (image.width - side) // 2, (image.height - side) // 2
        image = image.crop((left, top, left + side, top + side))
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC)
    array = np.asarray(image, dtype=np.uint8)
    return array[..., None] if channels == 1 else array


def _decode_file(path: Path, size: int, channels: int, resize: str) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return prepare(image, size, channels, resize)


def decode_files(
    files: Sequence[Path],
    size: int,
    channels: int,
    resize: str = "stretch",
    skip_unreadable: bool = False,
    desc: str = "",
    hint: str = "",
) -> tuple[np.ndarray, list[int]]:
    """Decode ``files`` in parallel into ``(N, size, size, channels)`` uint8.

    Returns:
        ``(images, skipped)``: the positions in ``files`` of the images that could not be
        decoded (only with ``skip_unreadable``; otherwise the first one raises
        ``InvalidDataError`` naming the file, and ``hint`` says how to skip it).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    def one(path: Path):
        try:
            return _decode_file(path, size, channels, resize)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            return exc

    images = np.empty((len(files), size, size, channels), np.uint8)
    skipped: list[int] = []
    with ThreadPoolExecutor(_workers()) as pool:
        results = pool.map(one, files)
        bar = tqdm(results, total=len(files), desc=f"decoding {desc}", disable=len(files) < 2000)
        for index, result in enumerate(bar):
            if isinstance(result, BaseException):
                if not skip_unreadable:
                    raise InvalidDataError(
                        f"{files[index]} cannot be decoded ({type(result).__name__}: "
                        f"{str(result).strip() or 'unreadable'}): fix or remove it{hint}"
                    )
                skipped.append(index)
                continue
            images[index] = result
    if skipped:
        log.warning(
            "%s: skipped %d unreadable image(s), the first %s",
            desc,
            len(skipped),
            files[skipped[0]],
        )
        images = np.delete(images, skipped, axis=0)
    return images, skipped


def resize_array(images: np.ndarray, size: int, channels: int, resize: str) -> np.ndarray:
    """``(N, H, W[, C])`` uint8 resized and converted to ``(N, size, size, channels)``."""
    from PIL import Image

    if images.ndim == 3:
        images = images[..., None]
    if images.shape[1:] == (size, size, channels):
        return np.asarray(images)

    def one(image: np.ndarray) -> np.ndarray:
        mode = "L" if image.shape[-1] == 1 else "RGB"
        return prepare(
            Image.fromarray(np.ascontiguousarray(image[..., 0] if mode == "L" else image), mode),
            size,
            channels,
            resize,
        )

    with ThreadPoolExecutor(_workers()) as pool:
        return (
            np.stack(list(pool.map(one, images)))
            if len(images)
            else np.empty((0, size, size, channels), np.uint8)
        )


def cache_folder() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "embedkit" / "images"


def cache_key(**parts) -> str:
    """The cache key of a decoded split: a hash of its content digest and decoding options."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(key: str, make: Callable[[], tuple[np.ndarray, list[int]]]):
    """``(images, skipped)`` from the cache, or made by ``make`` and cached (atomically: a
    cache entry is whole or absent). A cache that cannot be written costs a decode next
    time, nothing else."""
    folder = cache_folder()
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        try:
            skipped = json.loads(meta_path.read_text())["skipped"]
            return np.load(array_path, mmap_mode="r"), skipped
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is made again
    images, skipped = make()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.npy"
        np.save(tmp, images)
        tmp.replace(array_path)
        tmp_meta = folder / f".{key}.{os.getpid()}.json"
        tmp_meta.write_text(json.dumps({"skipped": skipped}))
        tmp_meta.replace(meta_path)
    except OSError as exc:
        log.warning(
            "cannot cache decoded images in %s (%s): they are decoded again next time", folder, exc
        )
    return images, skipped
