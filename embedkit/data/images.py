"""The user's images as MedMNIST-shaped uint8 arrays: decoded once, in parallel, cached.

Images of any size and format Pillow reads are made square (stretched, or a centre square
cropped), resized with Pillow's antialiased bicubic filter (MedMNIST's own resampling) and
converted to grey or RGB. 16-bit and floating-point images (DICOM exports, microscopy TIFFs)
are scaled from their own minimum and maximum to 0-255 first. A JPEG at least four times
the target size is decoded at a reduced scale first (``prepare``): its pixels then differ
from a full decode's by a few levels (``bench/decode_speed.py`` measures it).

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

from .. import utils
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

    if image.format == "JPEG":  # a large JPEG is decoded at a reduced scale (libjpeg's
        # DCT scaling, by 2, 4 or 8) that keeps at least twice the target for the resize
        image.draft("L" if channels == 1 else "RGB", (2 * size, 2 * size))
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
    out: np.ndarray | None = None,
) -> tuple[np.ndarray, list[int]]:
    """Decode ``files`` in parallel into ``(N, size, size, channels)`` uint8, written into
    ``out`` when given (a memory-mapped cache file: a large dataset never sits in memory).

    Returns:
        ``(images, skipped)``: the positions in ``files`` of the images that could not be
        decoded (only with ``skip_unreadable``; otherwise the first one raises
        ``InvalidDataError`` naming the file, and ``hint`` says how to skip it). Their rows
        of ``images`` are left as they were; ``without`` drops them.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    def one(path: Path):
        try:
            return _decode_file(path, size, channels, resize)
        except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as exc:
            return exc

    images = np.zeros((len(files), size, size, channels), np.uint8) if out is None else out
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
    return images, skipped


def resize_array(
    images: np.ndarray, size: int, channels: int, resize: str, out: np.ndarray | None = None
) -> np.ndarray:
    """``(N, H, W[, C])`` uint8 resized and converted to ``(N, size, size, channels)``."""
    from PIL import Image

    if images.ndim == 3:
        images = images[..., None]
    if out is None:
        out = np.empty((len(images), size, size, channels), np.uint8)

    def one(image: np.ndarray) -> np.ndarray:
        grey = image.shape[-1] == 1
        pixels = np.ascontiguousarray(image[..., 0] if grey else image)
        return prepare(Image.fromarray(pixels, "L" if grey else "RGB"), size, channels, resize)

    with ThreadPoolExecutor(_workers()) as pool:
        for index, result in enumerate(pool.map(one, images)):
            out[index] = result
    return out


def cache_folder() -> Path:
    return utils.cache_folder("images")


def cache_key(**parts) -> str:
    """The cache key of a decoded split: a hash of its content digest and decoding options."""
    text = json.dumps({"version": CACHE_VERSION, **parts}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cached(
    key: str, shape: tuple[int, ...], fill: Callable[[np.ndarray], list[int]]
) -> tuple[np.ndarray, list[int]]:
    """``(images, skipped)`` of a decoded split: from the cache, or filled by ``fill`` into a
    memory-mapped ``shape`` uint8 array (``fill`` returns the rows it could not fill, which
    are dropped) and cached. An entry is written under a temporary name and renamed, so it
    is whole or absent; a cache that cannot be written costs a decode next time (in memory
    meanwhile), nothing else."""
    folder = cache_folder()
    array_path, meta_path = folder / f"{key}.npy", folder / f"{key}.json"
    if array_path.is_file() and meta_path.is_file():
        try:
            skipped = json.loads(meta_path.read_text())["skipped"]
            return np.load(array_path, mmap_mode="r"), skipped
        except (OSError, ValueError, KeyError):
            pass  # a damaged entry is made again
    tmp = folder / f".{key}.{os.getpid()}.npy"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
    except OSError as exc:
        log.warning("cannot cache decoded images in %s (%s): decoding in memory", folder, exc)
        out = np.empty(shape, np.uint8)
        skipped = fill(out)
        return np.delete(out, skipped, axis=0), skipped
    try:
        skipped = fill(out)
        if skipped:
            kept = np.setdiff1d(np.arange(shape[0]), skipped)
            compact_tmp = folder / f".{key}.{os.getpid()}.kept.npy"
            compact = np.lib.format.open_memmap(
                compact_tmp, mode="w+", dtype=np.uint8, shape=(len(kept), *shape[1:])
            )
            for start in range(0, len(kept), 4096):
                compact[start : start + 4096] = out[kept[start : start + 4096]]
            compact.flush()
            del out, compact
            compact_tmp.replace(tmp)
        else:
            out.flush()
            del out
        tmp.replace(array_path)
        meta_tmp = folder / f".{key}.{os.getpid()}.json"
        meta_tmp.write_text(json.dumps({"skipped": skipped}))
        meta_tmp.replace(meta_path)
    finally:
        for leftover in folder.glob(f".{key}.{os.getpid()}*"):
            leftover.unlink(missing_ok=True)
    return np.load(array_path, mmap_mode="r"), skipped
