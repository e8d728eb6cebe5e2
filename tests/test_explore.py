"""`embedkit explore`: the page's data (exact neighbours, images, scores), and the page itself
in a real browser (Debian's chromium through Playwright; skipped without it)."""

from __future__ import annotations

import base64
import csv
import io
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from embedkit.cli.main import app
from embedkit.configs import ExploreConfig
from embedkit.explore import explore, write_explorer


def _source(layout):
    return layout.select_one({"name": "points0"}).data_source


@pytest.fixture(scope="module")
def scores(demo_store, tmp_path_factory):
    from embedkit.eval import OODConfig, evaluate_ood

    folder = tmp_path_factory.mktemp("scores")
    evaluate_ood(
        [demo_store],
        OODConfig(id_datasets=("demo-med",), scorers=("knn",), save_scores=str(folder)),
    )
    return folder


def test_the_page_data_neighbours_images_and_scores(demo_store, scores):
    config = ExploreConfig(splits=("test",), max_points=250, k=5, scores=str(scores))
    data = _source(explore([demo_store], config)).data
    n = len(data["index"])
    assert n == 250 and set(data["dataset"]) == {"demo-med", "demo-natural", "demo-texture"}
    # neighbours: the exact cosine neighbours among the points shown, self excluded
    x = np.concatenate(
        [
            demo_store.get(d, "test").embeddings[[i]]
            for d, i in zip(data["dataset"], data["index"], strict=True)
        ]
    )
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = x @ x.T
    np.fill_diagonal(similarity, -np.inf)
    for i in range(0, n, 25):
        expected = np.sort(np.argsort(-similarity[i])[:5])
        assert sorted(data["neighbours0"][i]) == expected.tolist()
        assert data["distances0"][i] == pytest.approx(
            np.sort(1 - similarity[i, data["neighbours0"][i]]), abs=2e-3
        )
    # the thumbnail is the dataset's image (WebP, lossy)
    first = data["dataset"].index("demo-med")
    with np.load(demo_store.split_attrs("demo-med", "test")["data_file"]["path"]) as file:
        original = file["test_images"][data["index"][first]].astype(float)
    thumb = data["thumb"][first]
    assert thumb.startswith("data:image/webp;base64,")
    decoded = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1]))))
    assert decoded.shape[:2] == (28, 28)
    grey = decoded.astype(float).reshape(28, 28, -1)[..., 0]
    assert np.abs(grey - original.squeeze()).mean() < 12  # lossy, but the same image
    # the saved kNN scores, matched by dataset, split and index
    import polars as pl

    saved = pl.concat([pl.read_parquet(f) for f in scores.glob("*.parquet")])
    column = data["score: knn (ID demo-med)"]
    for i in range(0, n, 40):
        row = saved.filter(
            (pl.col("dataset") == data["dataset"][i])
            & (pl.col("split") == "test")
            & (pl.col("index") == data["index"][i])
        )
        assert column[i] == pytest.approx(row["score"][0]) if row.height else np.isnan(column[i])


def test_the_subsample_is_seeded_and_the_map_cached(demo_store, monkeypatch):
    import embedkit.explore.points as module

    config = ExploreConfig(splits=("val",), max_points=120, k=3, seed=4)
    first = _source(explore([demo_store], config)).data
    monkeypatch.setattr(module, "_project", lambda *a: pytest.fail("projected again"))
    again = _source(explore([demo_store], config)).data
    assert again["index"] == first["index"] and again["x0"] == first["x0"]
    monkeypatch.undo()
    other = _source(
        explore([demo_store], ExploreConfig(splits=("val",), max_points=120, k=3, seed=5))
    ).data
    assert len(other["index"]) == 120 and other["index"] != first["index"]


def test_two_stores_share_one_source_so_selections_are_linked(demo_store, tmp_path):
    from embedkit.embed import EmbedConfig, embed

    data_root = Path(demo_store.split_attrs("demo-med", "test")["data_file"]["path"]).parent
    other = embed(
        EmbedConfig(dataset="demo-med", splits=("test",), seed=1, data_root=str(data_root)),
        tmp_path / "other.zarr",
        progress=False,
    )
    layout = explore([demo_store, other], ExploreConfig(splits=("test",), k=4))
    first, second = (layout.select_one({"name": f"points{i}"}) for i in (0, 1))
    assert first.data_source is second.data_source  # one source: one selection
    data = first.data_source.data
    assert set(data["dataset"]) == {"demo-med"} and len(data["index"]) == 600
    assert data["x0"] != data["x1"]  # two encoders, two maps


@pytest.mark.parametrize(
    "args, says",
    [
        (["--max-points", "0"], "--max-points and --k must be at least 1"),
        (["--output", "page.txt"], "must end in .html"),
        (["--projection", "tsne"], "unknown projection 'tsne'"),
        (["--dataset", "demo-med", "--split", "nope"], "no points to show"),
    ],
)
def test_bad_options_are_one_line(demo_store, tmp_path, args, says):
    out = tmp_path / "page.html"
    args = [str(tmp_path / a) if a.endswith(".txt") else a for a in args]
    result = CliRunner().invoke(
        app, ["explore", "--store", str(demo_store.path), "--output", str(out), *args]
    )
    assert result.exit_code == 2, result.output
    assert says in result.output and len(result.output.strip().splitlines()) == 1
    assert not out.exists()


# --- in a real browser ---------------------------------------------------------------------


def _chromium() -> str | None:
    for candidate in (os.environ.get("EMBEDKIT_CHROMIUM"), "/usr/lib/chromium/chromium"):
        if candidate and Path(candidate).is_file():
            return candidate
    return shutil.which("chromium")


CHROMIUM = _chromium()
browser_only = pytest.mark.skipif(
    CHROMIUM is None, reason="no chromium (CI installs Debian's chromium with apt)"
)

# the screen position of the point drawn farthest from all others (so one point is under
# the cursor), from the plot's own scales
_ISOLATED = """() => {
  const plot = Bokeh.documents[0].get_model_by_name('map0');
  const renderer = Bokeh.documents[0].get_model_by_name('points0');
  const view = Bokeh.index.find_one(plot), d = renderer.data_source.data;
  const rect = view.el.getBoundingClientRect();
  const sx = d.x0.map(v => view.frame.x_scale.compute(v));
  const sy = d.y0.map(v => view.frame.y_scale.compute(v));
  let best = -1, gap = -1;
  for (let i = 0; i < sx.length; i++) {
    let near = Infinity;
    for (let j = 0; j < sx.length; j++)
      if (j != i) near = Math.min(near, Math.hypot(sx[i] - sx[j], sy[i] - sy[j]));
    if (near > gap) { gap = near; best = i; }
  }
  return {i: best, x: rect.left + sx[best], y: rect.top + sy[best], gap: gap};
}"""

_DRAWN = """() => {
  const renderer = Bokeh.documents[0].get_model_by_name('points0');
  return Bokeh.index.find_one(renderer).all_indices.count;
}"""


@browser_only
@pytest.mark.slow
def test_the_page_works_offline_in_chromium(demo_store, scores, tmp_path):
    from playwright.sync_api import sync_playwright

    page_file = write_explorer(
        [demo_store],
        tmp_path / "explore.html",
        ExploreConfig(splits=("test",), max_points=300, k=6, scores=str(scores)),
    )
    requests = []

    def route(request_route):
        url = request_route.request.url
        if url.startswith(("file:", "data:", "blob:")) or url.startswith(
            ("http://127.0.0.1", "http://localhost")
        ):
            return request_route.continue_()
        requests.append(url)
        return request_route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1300, "height": 1000}, accept_downloads=True)
        page.route("**/*", route)
        page.goto(page_file.as_uri())
        page.wait_for_function("() => window.Bokeh && Bokeh.documents.length > 0", timeout=60_000)
        page.wait_for_timeout(1500)
        shot = np.asarray(Image.open(io.BytesIO(page.screenshot())).convert("L"), float)
        assert shot.std() > 10  # drawn, not blank

        point = page.evaluate(_ISOLATED)
        assert point["gap"] > 6
        page.mouse.move(point["x"], point["y"])
        page.wait_for_timeout(500)
        hovered = page.locator("img[src^='data:image/webp']")
        assert hovered.count() == 1

        page.mouse.click(point["x"], point["y"])
        page.wait_for_timeout(500)
        assert page.locator("img.thumb").count() == 6 + 1

        drawn = page.evaluate(_DRAWN)
        page.evaluate(
            """() => {
              const slider = Bokeh.documents[0].get_model_by_name('score_range');
              slider.value = [slider.start, (slider.start + slider.end) / 2];
            }"""
        )
        page.wait_for_timeout(500)
        assert 0 < page.evaluate(_DRAWN) < drawn == 300

        page.evaluate(
            "() => { Bokeh.documents[0].get_model_by_name('points0').data_source"
            ".selected.indices = [0, 5, 7]; }"
        )
        page.wait_for_timeout(300)
        assert page.locator("img.thumb").count() == 3  # the gallery of the selection
        with page.expect_download() as download:
            page.get_by_text("download the selection as CSV").click()
        rows = list(csv.DictReader(io.StringIO(Path(download.value.path()).read_text())))
        browser.close()
    assert requests == []  # nothing but the file itself was fetched
    config = ExploreConfig(splits=("test",), max_points=300, k=6, scores=str(scores))
    data = _source(explore([demo_store], config)).data
    assert [(r["dataset"], int(r["index"])) for r in rows] == [
        (data["dataset"][i], data["index"][i]) for i in (0, 5, 7)
    ]
    assert set(rows[0]) == {"dataset", "split", "index", "label", "score: knn (ID demo-med)"}
