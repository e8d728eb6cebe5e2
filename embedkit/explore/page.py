"""The explorer's page: the Bokeh layout of the points, its widgets and callbacks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..configs import ExploreConfig
from ..errors import ConfigError
from ..store import EmbeddingStore
from .points import KEYS, point_data


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

    data, scores, projection = point_data(stores, config)
    n = len(data["index"])
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
    keep = BooleanFilter(booleans=[True] * n)
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
        text=f"<b>{n} points</b> of {', '.join(dict.fromkeys(data['dataset']))} "
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
