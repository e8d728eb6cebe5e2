"""An interactive map of a store, in one HTML file that opens offline.

``write_explorer`` builds a Bokeh page with its resources inlined (no server, no network):

- a 2-D map of the embeddings (UMAP when umap-learn is installed, else PCA; cached), drawn
  with WebGL, up to ``max_points`` (a seeded subsample beyond it);
- colour by class, dataset or split, or by an OOD score saved by ``ood --save-scores``, and
  a range filter on a score;
- hover: the image's thumbnail (read back from the dataset file through the store's
  indices), class, dataset, split and row;
- click: the point and its ``k`` nearest neighbours in embedding space (exact cosine search,
  ``embedkit.primitives.neighbors``, precomputed), with distances; a lasso or box selection:
  a gallery, and the selected rows as CSV (dataset, split, index, label, scores);
- two stores: two maps side by side over the same images, selections linked.

``explore`` returns the same layout for a notebook (``bokeh.io.show`` after
``bokeh.io.output_notebook()``). The callbacks are a few lines of JavaScript each.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import os
from pathlib import Path

import numpy as np
import polars as pl

from .configs import ExploreConfig
from .errors import ConfigError
from .eval.results import store_datasets
from .plots.maps import PROJECTIONS, _project, split_images
from .primitives.neighbors import NeighborIndex, l2_normalise
from .store import EmbeddingStore

log = logging.getLogger(__name__)

KEYS = ("dataset", "split", "index")


def _check(stores: list[EmbeddingStore], config: ExploreConfig) -> str:
    if not 1 <= len(stores) <= 2:
        raise ConfigError(f"explore shows one store or two side by side, not {len(stores)}")
    if config.max_points < 1 or config.k < 1:
        raise ConfigError("--max-points and --k must be at least 1")
    if not 8 <= config.thumbnail <= 256:
        raise ConfigError(f"--thumbnail must lie in 8..256 px, not {config.thumbnail}")
    if config.projection == "auto":
        try:
            import umap  # noqa: F401
        except ImportError:
            return "pca"
        return "umap"
    if config.projection not in PROJECTIONS:
        raise ConfigError(
            f"unknown projection '{config.projection}': use auto, {' or '.join(PROJECTIONS)}"
        )
    return config.projection


def _label_names(store: EmbeddingStore, dataset: str, labels: np.ndarray) -> list[str]:
    names = store.dataset_attrs(dataset)["class_names"]
    if labels.shape[1] == 1:
        return [names[i] for i in labels[:, 0]]
    return [";".join(n for n, on in zip(names, row, strict=True) if on) or "none" for row in labels]


def _rows(stores: list[EmbeddingStore], config: ExploreConfig) -> pl.DataFrame:
    """The points: dataset, split, index, row (in its split of each store), label."""
    first = stores[0]
    parts = []
    for dataset in store_datasets(first, config.datasets):
        for split in config.splits:
            if split not in first.splits(dataset):
                continue
            data = first.get(dataset, split)
            part = pl.DataFrame(
                {
                    "dataset": dataset,
                    "split": split,
                    "index": data.indices.astype(np.int64),
                    "row0": np.arange(len(data.indices)),
                    "label": _label_names(first, dataset, data.labels),
                }
            )
            for number, other in enumerate(stores[1:], 1):
                if dataset not in other.datasets() or split not in other.splits(dataset):
                    break  # the second store lacks it: not shown
                rows = pl.DataFrame(
                    {"index": other.get(dataset, split).indices.astype(np.int64)}
                ).with_row_index(f"row{number}")
                part = part.join(rows.cast({f"row{number}": pl.Int64}), on="index")
            else:
                parts.append(part)
    table = pl.concat(parts) if parts else pl.DataFrame()
    if not table.height:
        raise ConfigError(
            "no points to show: the stores share no split of the datasets asked for "
            f"({', '.join(config.datasets) or 'all'}; splits {', '.join(config.splits)})"
        )
    if table.height > config.max_points:
        rng = np.random.default_rng(config.seed)
        keep = np.sort(rng.choice(table.height, config.max_points, replace=False))
        log.info("showing %d of %d points (--max-points)", len(keep), table.height)
        table = table[keep]
    return table


def _embeddings(store: EmbeddingStore, table: pl.DataFrame, column: str) -> np.ndarray:
    parts = []
    for (dataset, split), group in table.group_by(["dataset", "split"], maintain_order=True):
        rows = group[column].to_numpy()
        parts.append((group["position"].to_numpy(), store.get(dataset, split).embeddings[rows]))
    out = np.empty((table.height, parts[0][1].shape[1]), np.float32)
    for positions, values in parts:
        out[positions] = values
    return out


def _cache_path(store: EmbeddingStore, table: pl.DataFrame, projection: str, seed: int) -> Path:
    digest = hashlib.sha256()
    digest.update(json.dumps([store.encoder.get("weights_sha256"), projection, seed]).encode())
    for column in KEYS:
        digest.update(table[column].cast(pl.Utf8).str.join("\0").item().encode())
    base = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
    return base / "embedkit" / "explore" / f"{digest.hexdigest()[:32]}.npy"


def _map(store, table, column, projection, seed) -> tuple[np.ndarray, np.ndarray]:
    """``(xy, embeddings)``: the 2-D map (cached) and the unit-length embeddings."""
    x = l2_normalise(_embeddings(store, table, column))
    path = _cache_path(store, table, projection, seed)
    if path.is_file():
        return np.load(path), x
    xy = _project(x, projection, seed).astype(np.float32)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.npy")
        np.save(tmp, xy)
        tmp.replace(path)
    except OSError as exc:
        log.warning("cannot cache the map in %s: %s", path.parent, exc)
    return xy, x


def _neighbours(x: np.ndarray, k: int) -> tuple[list[list[int]], list[list[float]]]:
    """The ``k`` nearest other points of each (cosine distance)."""
    k = min(k, len(x) - 1)
    if k < 1:
        return [[] for _ in x], [[] for _ in x]
    similarity, index = NeighborIndex(x, metric="ip").search(x, k + 1)
    neighbours, distances = [], []
    for i, (row, sims) in enumerate(zip(index, similarity, strict=True)):
        keep = [(j, s) for j, s in zip(row, sims, strict=True) if j != i][:k]
        neighbours.append([int(j) for j, _ in keep])
        distances.append([round(float(1 - s), 3) for _, s in keep])
    return neighbours, distances


def _thumbnails(store: EmbeddingStore, table: pl.DataFrame, side: int) -> list[str]:
    """WebP data URIs of the points' images (lossy, quality 80: about 250 bytes for a 28 px
    MedMNIST image against 600-1,600 as PNG), read through the store's provenance."""
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    def encode(image: np.ndarray) -> str:
        picture = Image.fromarray(np.asarray(image).squeeze())
        if picture.size != (side, side):
            picture = picture.resize((side, side), Image.Resampling.BICUBIC)
        buffer = io.BytesIO()
        picture.save(buffer, format="WEBP", quality=80)
        return "data:image/webp;base64," + base64.b64encode(buffer.getvalue()).decode()

    out = [""] * table.height
    with ThreadPoolExecutor(max(1, min(16, os.cpu_count() or 1))) as pool:  # Pillow frees the GIL
        for (dataset, split), group in table.group_by(["dataset", "split"], maintain_order=True):
            images = split_images(store, dataset, split, group["index"].to_numpy())
            for position, uri in zip(group["position"], pool.map(encode, images), strict=True):
                out[position] = uri
    return out


def _scores(folder: str | None, encoder: str, table: pl.DataFrame) -> dict[str, np.ndarray]:
    """One column per saved (scorer, ID dataset) of this encoder: NaN where not scored."""
    if folder is None:
        return {}
    files = sorted(Path(folder).glob("*.parquet"))
    if not Path(folder).is_dir() or not files:
        raise ConfigError(
            f"--scores {folder} holds no saved scores: run `embedkit ood --save-scores`"
        )
    columns = {}
    keys = table.select(KEYS).with_row_index("position")
    for file in files:
        saved = pl.read_parquet(file)
        if saved.height == 0 or saved["encoder"][0] != encoder:
            continue
        name = f"{saved['scorer'][0]} (ID {saved['id_dataset'][0]})"
        joined = keys.join(saved.select(*KEYS, "score"), on=list(KEYS), how="left")
        values = np.full(table.height, np.nan)
        values[joined["position"].to_numpy()] = joined["score"].fill_null(np.nan).to_numpy()
        columns[name] = values
    if not columns:
        raise ConfigError(f"--scores {folder} holds no scores of encoder {encoder}")
    return columns


def _category_colours(values: list[str]) -> list[str]:
    from bokeh.palettes import Category10, Category20

    levels = list(dict.fromkeys(values))
    palette = Category10[10] if len(levels) <= 10 else Category20[20]
    lookup = {v: palette[i % len(palette)] for i, v in enumerate(levels)}
    return [lookup[v] for v in values]


def _score_colours(values: np.ndarray) -> list[str]:
    from bokeh.palettes import Viridis256

    finite = np.isfinite(values)
    if not finite.any():
        return ["#bbbbbb"] * len(values)
    low, high = np.nanmin(values), np.nanmax(values)
    scaled = np.zeros(len(values), np.int64)
    scaled[finite] = np.round((values[finite] - low) / ((high - low) or 1) * 255)
    return [Viridis256[s] if f else "#bbbbbb" for s, f in zip(scaled, finite, strict=True)]


_HOVER = """
<div style="width: 150px">
  <img src="@thumb" width="84" height="84" style="image-rendering: pixelated"><br>
  <b>@label</b><br>@dataset / @split, row @index
</div>
"""

# the point and its neighbours (one click), or a gallery of the selection (lasso, box)
_SELECTED = """
const idx = source.selected.indices, d = source.data;
const card = (j, note) => `<figure style="display:inline-block;margin:2px;width:64px;` +
  `font-size:9px"><img class="thumb" src="${d.thumb[j]}" width="56" height="56"` +
  ` style="image-rendering:pixelated"><figcaption>${d.label[j]}${note}</figcaption></figure>`;
let html = '';
if (idx.length == 1) {
  const i = idx[0];
  for (let s = 0; s < maps; s++) {
    const near = d['neighbours' + s][i], far = d['distances' + s][i];
    html += `<div><b>${titles[s]}</b>: ${d.dataset[i]}/${d.split[i]} row ${d.index[i]} and its ` +
      `${near.length} nearest neighbours<br>` + card(i, '') +
      near.map((j, n) => card(j, ` · ${far[n]}`)).join('') + '</div>';
  }
} else if (idx.length > 1) {
  html = `<div><b>${idx.length} selected</b>` + (idx.length > 60 ? ' (the first 60 shown)' : '') +
    '<br>' + idx.slice(0, 60).map(j => card(j, '')).join('') + '</div>';
}
gallery.text = html;
"""

_COLOUR = "source.data.color = source.data['colour: ' + this.value]; source.change.emit();"

_FILTER = """
const v = source.data['score: ' + choice.value], [lo, hi] = slider.value;
filter.booleans = Array.from(v, x => x >= lo && x <= hi);
source.change.emit();
"""

_RANGE = """
const v = source.data['score: ' + this.value].filter(Number.isFinite);
const lo = Math.min(...v), hi = Math.max(...v);
slider.start = lo; slider.end = hi; slider.value = [lo, hi]; slider.step = (hi - lo) / 200 || 1;
"""

_CSV = """
const idx = source.selected.indices, d = source.data;
const quote = v => (typeof v === 'string' ? '"' + v.replaceAll('"', '""') + '"' : String(v));
const lines = [columns.join(',')].concat(idx.map(i => columns.map(c => quote(d[c][i])).join(',')));
const link = document.createElement('a');
link.href = URL.createObjectURL(new Blob([lines.join('\\n') + '\\n'], {type: 'text/csv'}));
link.download = 'selection.csv';
document.body.appendChild(link); link.click(); link.remove();
"""


def explore(stores: list[EmbeddingStore], config: ExploreConfig = ExploreConfig()):
    """The explorer's Bokeh layout (see the module docstring)."""
    from bokeh.layouts import column, row
    from bokeh.models import (
        BooleanFilter,
        Button,
        CDSView,
        ColumnDataSource,
        CustomJS,
        Div,
        HoverTool,
        RangeSlider,
        Select,
    )
    from bokeh.plotting import figure

    projection = _check(stores, config)
    table = _rows(stores, config).with_row_index("position").cast({"position": pl.Int64})
    data: dict[str, object] = {k: table[k].to_list() for k in (*KEYS, "label")}
    data["thumb"] = _thumbnails(stores[0], table, config.thumbnail)
    for number, store in enumerate(stores):
        xy, x = _map(store, table, f"row{number}", projection, config.seed)
        data[f"x{number}"], data[f"y{number}"] = xy[:, 0].tolist(), xy[:, 1].tolist()
        data[f"neighbours{number}"], data[f"distances{number}"] = _neighbours(x, config.k)
    scores = _scores(config.scores, stores[0].encoder_name, table)
    colours = {"class": _category_colours(data["label"])}
    colours["dataset"] = _category_colours(data["dataset"])
    colours["split"] = _category_colours(data["split"])
    for name, values in scores.items():
        data[f"score: {name}"] = values.tolist()
        colours[f"score: {name}"] = _score_colours(values)
    for name, values in colours.items():
        data[f"colour: {name}"] = values
    data["color"] = colours["class"]
    source = ColumnDataSource(data)
    keep = BooleanFilter(booleans=[True] * table.height)
    view = CDSView(filter=keep)
    titles = [f"{s.encoder_name} ({projection.upper()})" for s in stores]
    maps = []
    for number, title in enumerate(titles):
        plot = figure(
            title=title,
            width=620,
            height=560,
            output_backend="webgl",
            tools="pan,wheel_zoom,box_select,lasso_select,tap,reset",
            name=f"map{number}",
        )
        points = plot.scatter(
            f"x{number}",
            f"y{number}",
            source=source,
            view=view,
            color="color",
            size=5,
            alpha=0.8,
            name=f"points{number}",
        )
        plot.add_tools(HoverTool(renderers=[points], tooltips=_HOVER))
        plot.xaxis.visible = plot.yaxis.visible = False
        maps.append(plot)
    gallery = Div(text="", width=1240, name="gallery")
    source.selected.js_on_change(
        "indices",
        CustomJS(
            args=dict(source=source, gallery=gallery, maps=len(stores), titles=titles),
            code=_SELECTED,
        ),
    )
    colour = Select(title="colour by", value="class", options=list(colours), name="colour")
    colour.js_on_change("value", CustomJS(args=dict(source=source), code=_COLOUR))
    widgets = [colour]
    if scores:
        first = next(iter(scores.values()))
        low, high = float(np.nanmin(first)), float(np.nanmax(first))
        slider = RangeSlider(
            title="score range",
            start=low,
            end=high,
            value=(low, high),
            step=(high - low) / 200 or 1,
            width=300,
            name="score_range",
        )
        choice = Select(
            title="filter by score",
            value=next(iter(scores)),
            options=list(scores),
            name="score_choice",
        )
        choice.js_on_change("value", CustomJS(args=dict(slider=slider), code=_RANGE))
        update = CustomJS(
            args=dict(source=source, choice=choice, slider=slider, filter=keep), code=_FILTER
        )
        slider.js_on_change("value", update)
        choice.js_on_change("value", update)
        widgets += [choice, slider]
    csv_columns = [*KEYS, "label", *(f"score: {n}" for n in scores)]
    download = Button(label="download the selection as CSV", name="download")
    download.js_on_event(
        "button_click", CustomJS(args=dict(source=source, columns=csv_columns), code=_CSV)
    )
    widgets.append(download)
    header = Div(
        text=f"<b>{table.height} points</b> of {', '.join(dict.fromkeys(data['dataset']))} "
        f"({', '.join(dict.fromkeys(data['split']))}); hover for an image, click for its "
        f"{config.k} nearest neighbours, lasso or box to select.",
        width=1240,
    )
    return column(header, row(*widgets), row(*maps), gallery)


def write_explorer(
    stores: list[EmbeddingStore], output: str | Path, config: ExploreConfig = ExploreConfig()
) -> Path:
    """Write the explorer page to ``output`` (one HTML file, Bokeh's resources inlined)."""
    from bokeh.embed import file_html
    from bokeh.resources import INLINE

    output = Path(output)
    if output.suffix.lower() not in (".html", ".htm"):
        raise ConfigError(f"--output {output} must end in .html")
    if output.is_dir():
        raise ConfigError(f"--output {output} is a folder: name an .html file")
    layout = explore(stores, config)
    title = "embedkit explore: " + " | ".join(s.encoder_name for s in stores)
    html = file_html(layout, INLINE, title)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.{os.getpid()}.tmp")
    tmp.write_text(html, encoding="utf-8")
    tmp.replace(output)
    return output
