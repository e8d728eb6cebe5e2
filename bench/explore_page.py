"""The explorer page on a MedMNIST-sized store (issue 34): build time, size, load time.

Builds a store of ``--n`` real 28 px images (PneumoniaMNIST, BreastMNIST and RetinaMNIST
from ``--data-root``, made grey and repeated with random flips up to ``--n``, as one user's
npz dataset: 80 % train, 20 % test) embedded by a random-init resnet18, then times
``write_explorer`` (rows, projection, exact neighbours, thumbnails, the page) with every
point shown, the page's size, and how long Debian's chromium takes to open it (Playwright:
until the document is idle, then a hover and a click answered).

Run: python bench/explore_page.py --data-root ../shared/data/medmnist [--n 100000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--n", type=int, default=100_000)
    parser.add_argument("--chromium", default="/usr/lib/chromium/chromium")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["XDG_CACHE_HOME"] = str(Path(tmp) / "cache")
        from embedkit.configs import ExploreConfig
        from embedkit.embed import EmbedConfig, embed
        from embedkit.explore import write_explorer

        images, labels = [], []
        for name in ("pneumoniamnist", "breastmnist", "retinamnist"):
            with np.load(Path(args.data_root) / f"{name}.npz") as data:
                for split in ("train", "val", "test"):
                    part = data[f"{split}_images"]
                    if part.ndim == 4:
                        part = part.mean(axis=3).astype(np.uint8)
                    images.append(part)
                    labels.append(np.full(len(part), len(labels) // 3))
        images, labels = np.concatenate(images), np.concatenate(labels)
        rng = np.random.default_rng(0)
        pick = rng.integers(0, len(images), args.n)
        big = images[pick]
        flip = rng.random(args.n) < 0.5
        big[flip] = big[flip, :, ::-1]
        cut = int(args.n * 0.8)
        root = Path(tmp) / "root"
        root.mkdir()
        np.savez(
            root / "big.npz",
            train_images=big[:cut],
            train_labels=labels[pick][:cut, None],
            test_images=big[cut:],
            test_labels=labels[pick][cut:, None],
        )
        start = time.perf_counter()
        store = embed(
            EmbedConfig(dataset="big", data_root=str(root), splits=("train", "test")),
            Path(tmp) / "big.zarr",
            progress=False,
        )
        print(f"embedded {args.n} images in {time.perf_counter() - start:.1f} s")
        config = ExploreConfig(max_points=args.n, k=8)
        start = time.perf_counter()
        page = write_explorer([store], Path(tmp) / "explore.html", config)
        build = time.perf_counter() - start
        size = page.stat().st_size / 2**20
        print(
            f"write_explorer, {args.n} points: {build:.1f} s, page {size:.1f} MiB "
            f"({page.stat().st_size / args.n:.0f} bytes a point)"
        )
        start = time.perf_counter()
        write_explorer([store], Path(tmp) / "again.html", config)
        print(f"again (map cached): {time.perf_counter() - start:.1f} s")
        from playwright.sync_api import sync_playwright

        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=args.chromium, args=["--no-sandbox"]
            )
            tab = browser.new_page(viewport={"width": 1300, "height": 1000})
            idle = []
            tab.on("console", lambda m: idle.append(time.perf_counter()) if "idle" in m.text else 0)
            start = time.perf_counter()
            tab.goto(page.as_uri(), timeout=600_000)
            tab.wait_for_function(
                "() => window.Bokeh && Bokeh.documents.length > 0", timeout=600_000
            )
            while not idle and time.perf_counter() - start < 600:
                tab.wait_for_timeout(100)
            loaded = (idle[0] if idle else time.perf_counter()) - start
            print(f"chromium: document idle {loaded:.1f} s after opening the file")
            box = tab.evaluate(  # the screen position of the first point
                "() => { const d = Bokeh.documents[0];"
                " const v = Bokeh.index.find_one(d.get_model_by_name('map0'));"
                " const s = d.get_model_by_name('points0').data_source.data;"
                " const r = v.el.getBoundingClientRect();"
                " return [r.left + v.frame.x_scale.compute(s.x0[0]),"
                " r.top + v.frame.y_scale.compute(s.y0[0])]; }"
            )
            start = time.perf_counter()
            tab.mouse.click(*box)
            tab.wait_for_function(
                "() => Bokeh.documents[0].get_model_by_name('points0')"
                ".data_source.selected.indices.length > 0",
                timeout=60_000,
            )
            print(f"chromium: a click's neighbours shown in {time.perf_counter() - start:.2f} s")
            browser.close()


if __name__ == "__main__":
    main()
