"""Every notebook is committed with the outputs of a demo run (``notebooks/render.py``) and
runs top to bottom afresh on the demo data."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FIGURES = {"01": 2, "02": 3, "03": 3, "04": 1, "05": 2, "06": 2}
# the tables each notebook shows, on the demo family: summary and catalog (2 encoders x 3
# datasets x 3 splits), catalog and kNN of one store, score rows and the 8 lowest AUROCs,
# 36 OOD rows (2 encoders x 3 ID x 2 OOD x 3 scorers), probe summary and kNN of 2 encoders,
# 3 runs
SHAPES = {
    "01": [(2, 9), (18, 10)],
    "02": [(9, 10), (3, 13)],
    "03": [(5, 8), (8, 5)],
    "04": [(36, 6)],
    "05": [(6, 6), (6, 4)],
    "06": [(3, 11)],
}


def test_there_are_six_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == list(FIGURES)


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


def _tables(notebook) -> list[tuple[tuple[int, int], list[dict[str, str]]]]:
    """The polars tables a notebook shows (their HTML form): shape, and each row shown as
    column -> cell text (strings without their quotes; polars elides the middle rows of a
    long table)."""
    tables = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []) if cell.cell_type == "code" else []:
            html = output.get("data", {}).get("text/html", "")
            match = re.search(r"<small>shape: \((\d+), (\d+)\)</small>", html)
            if not match:
                continue
            head, body = html.split("<tbody>")
            columns = re.findall(r"<th>(.*?)</th>", head)
            rows = [
                dict(zip(columns, [v.replace("&quot;", "") for v in cells], strict=True))
                for cells in (re.findall(r"<td>(.*?)</td>", row) for row in body.split("</tr>"))
                if cells and set(cells) != {"&hellip;"}  # the row polars elides a long table at
            ]
            tables.append(((int(match[1]), int(match[2])), rows))
    return tables


def _check_tables(notebook, key: str) -> None:
    tables = _tables(notebook)
    assert [shape for shape, _ in tables] == SHAPES[key]
    if key == "03":  # the 8 lowest AUROCs, sorted: ascending, each in [0, 1]
        auroc = [float(row["auroc"]) for row in tables[1][1]]
        assert auroc == sorted(auroc) and all(0 <= a <= 1 for a in auroc)
    if key == "01":  # SimCLR against random weights; demo-med's splits of 1,200/300/600
        summary, catalog = tables[0][1], tables[1][1]
        assert [row["encoder"] for row in summary] == ["simclr/resnet18", "random/resnet18"]
        assert all(0 <= float(row[c]) <= 1 for row in summary for c in list(row)[1:])
        sizes = {(r["dataset"], r["split"]): int(r["n"]) for r in catalog}
        assert [sizes["demo-med", s] for s in ("train", "val", "test")] == [1200, 300, 600]
    if key == "05":  # the probe summary: 3 label fractions per encoder, fewer labels first
        fractions = [float(row["label_fraction"]) for row in tables[0][1]]
        assert fractions == [0.01, 0.1, 1.0] * 2


def _errors(notebook) -> list:
    return [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_with_the_outputs_of_a_run(path):
    """Readable on a repository page: every cell ran, in order, without errors, warnings or
    the rendering machine's paths; every figure is there with a note on how to read it."""
    notebook = nbformat.read(path, as_version=4)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1)), path.name
    assert _errors(notebook) == []
    assert _figures(notebook) == FIGURES[path.name[:2]]
    _check_tables(notebook, path.name[:2])
    notes = [c for c in notebook.cells if c.cell_type == "markdown"]
    assert sum(c.source.startswith("**Reading it.**") for c in notes) == FIGURES[path.name[:2]]
    text = nbformat.writes(notebook)
    assert not re.search(r"/(tmp|root|home|work)/", text), "an absolute path of the renderer"
    streams = [o.text for c in code for o in c.outputs if o.output_type == "stream"]
    assert not any("Warning" in s for s in streams), path.name


def _run(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute(cwd=str(path.parent))
    return notebook


@pytest.fixture(scope="module")
def quickstart_folder(tmp_path_factory, data_root):
    folder = tmp_path_factory.mktemp("notebooks") / "quickstart"
    patch = pytest.MonkeyPatch()
    patch.setenv("EMBEDKIT_QUICKSTART", str(folder))
    patch.setenv("EMBEDKIT_EPOCHS", "1")
    patch.setenv("EMBEDKIT_DATA", str(data_root))
    notebook = _run(NOTEBOOKS[0])
    yield folder, notebook
    patch.undo()


@pytest.mark.slow
def test_quickstart_notebook(quickstart_folder):
    folder, notebook = quickstart_folder
    assert (folder / "simclr.zarr").is_dir() and (folder / "random.zarr").is_dir()
    assert _figures(notebook) == FIGURES["01"]  # probe curves and the OOD heatmap
    _check_tables(notebook, "01")


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_notebook_runs_on_the_quickstart_stores(quickstart_folder, path, monkeypatch):
    folder, _ = quickstart_folder
    monkeypatch.setenv("EMBEDKIT_QUICKSTART", str(folder))
    notebook = _run(path)
    assert _figures(notebook) == FIGURES[path.name[:2]]
    assert _errors(notebook) == []
    _check_tables(notebook, path.name[:2])
