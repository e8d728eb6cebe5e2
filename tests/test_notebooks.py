"""Every notebook runs top to bottom on the demo data, and is stored without outputs."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


def test_there_are_five_notebooks():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03", "04", "05"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_stored_without_outputs(path):
    notebook = nbformat.read(path, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, path.name


def _run(path: Path) -> nbformat.NotebookNode:
    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3").execute(cwd=str(path.parent))
    return notebook


def _figures(notebook) -> int:
    return sum(
        "image/png" in output.get("data", {})
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
    )


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


def test_quickstart_notebook(quickstart_folder):
    folder, notebook = quickstart_folder
    assert (folder / "simclr.zarr").is_dir() and (folder / "random.zarr").is_dir()
    assert _figures(notebook) == 2  # probe curves and the OOD heatmap


@pytest.mark.parametrize(
    ("index", "figures"), [(1, 3), (2, 3), (3, 1), (4, 2)], ids=["02", "03", "04", "05"]
)
def test_notebook_runs_on_the_quickstart_stores(quickstart_folder, index, figures, monkeypatch):
    folder, _ = quickstart_folder
    monkeypatch.setenv("EMBEDKIT_QUICKSTART", str(folder))
    notebook = _run(NOTEBOOKS[index])
    assert _figures(notebook) == figures
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert errors == []
