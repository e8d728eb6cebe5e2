"""Decoding the user's images (issue 32), as ratios measured in one process.

Writes ``--n`` images of ``--side`` px (PNG and JPEG, RGB, random smooth content) as an
ImageFolder dataset in a temporary data root, then times, at ``--size`` px:

1. serial: one Pillow loop (open, convert, resize), the way a per-sample Dataset decodes;
2. load_split: embedkit's first load (content digest + parallel decode into the cache);
3. again: the second load of the same split (digest of the bytes, the cache memory-mapped).

Run: python bench/decode_speed.py [--n 2000] [--side 256] [--size 64]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def write_folder(root: Path, n: int, side: int) -> list[Path]:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, (side // 8, side // 8, 3), np.uint8)
    files = []
    for i in range(n):
        noisy = np.clip(base.astype(int) + rng.integers(-20, 20, base.shape), 0, 255)
        image = Image.fromarray(noisy.astype(np.uint8)).resize((side, side))
        suffix = "png" if i % 2 else "jpg"
        path = root / "mine" / "test" / f"class{i % 3}" / f"{i:05d}.{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path)
        files.append(path)
    return files


def serial(files: list[Path], size: int) -> np.ndarray:
    out = np.empty((len(files), size, size, 3), np.uint8)
    for i, path in enumerate(files):
        with Image.open(path) as image:
            out[i] = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--side", type=int, default=256)
    parser.add_argument("--size", type=int, default=64)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        from embedkit.data import load_split

        root = Path(tmp) / "root"
        files = write_folder(root, args.n, args.side)
        start = time.perf_counter()
        reference = serial(sorted(files), args.size)
        t_serial = time.perf_counter() - start
        start = time.perf_counter()
        first = load_split("mine", "test", args.size, root)
        t_first = time.perf_counter() - start
        start = time.perf_counter()
        again = load_split("mine", "test", args.size, root)
        np.asarray(again.images).sum()
        t_again = time.perf_counter() - start
        diff = np.abs(first.images.astype(int) - reference.astype(int))
        is_png = np.array([f.suffix == ".png" for f in sorted(files)])
        png, jpeg = diff[is_png], diff[~is_png]  # PNG: decoded in full by both
        print(f"{args.n} images of {args.side} px -> {args.size} px, {os.cpu_count()} cores")
        print(f"serial Pillow loop   {t_serial:7.2f} s  {args.n / t_serial:8.0f} img/s")
        print(
            f"load_split, decode   {t_first:7.2f} s  {args.n / t_first:8.0f} img/s "
            f"({t_serial / t_first:.2f}x the serial loop)"
        )
        print(
            f"load_split, cached   {t_again:7.2f} s  {args.n / t_again:8.0f} img/s "
            f"({t_serial / t_again:.1f}x)"
        )
        print(
            f"against the serial loop's pixels: PNG max difference {png.max()}, JPEG mean "
            f"{jpeg.mean():.2f} and max {jpeg.max()} (reduced-scale decoding)"
        )


if __name__ == "__main__":
    main()
