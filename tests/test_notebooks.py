"""Every notebook is committed with the outputs of a demo run (``notebooks/render.py``) and
runs top to bottom afresh on the demo data."""

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))
FIGURES = {"01": 2, "02": 3, "03": 3, "04": 1, "05": 2, "06": 2}


def test_there_are_six_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == list(FIGURES)


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


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


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS[1:], ids=lambda p: p.stem)
def test_notebook_runs_on_the_quickstart_stores(quickstart_folder, path, monkeypatch):
    folder, _ = quickstart_folder
    monkeypatch.setenv("EMBEDKIT_QUICKSTART", str(folder))
    notebook = _run(path)
    assert _figures(notebook) == FIGURES[path.name[:2]]
    assert _errors(notebook) == []
