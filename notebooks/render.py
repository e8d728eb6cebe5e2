"""Re-run the demo chain and rewrite what the repository shows of it: every notebook, executed
in place with its outputs, and the README's quickstart table.

    .venv/bin/python notebooks/render.py            # about 10 minutes on 2 CPU cores

The quickstart runs at its defaults into ``embedkit-quickstart/`` at the repository root (the
folder the README's first command writes, reused when complete); notebook 6 adds its two runs
under ``embedkit-quickstart/runs``. ``tests/test_notebooks.py`` executes every notebook afresh
and checks the committed outputs; ``tests/test_readme.py`` checks the README's table against a
fresh quickstart when there is one.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
BEGIN, END = "<!-- quickstart-table:begin -->", "<!-- quickstart-table:end -->"


def render_notebook(path: Path) -> None:
    """Execute ``path`` in its folder and write it back with its outputs (no timings)."""
    import nbformat
    from nbclient import NotebookClient

    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=1800, kernel_name="python3", record_timing=False)
    client.execute(cwd=str(path.parent))
    text = nbformat.writes(notebook)
    for prefix in {str(ROOT), str(ROOT.resolve())}:  # outputs name folders relative to it
        text = text.replace(prefix + os.sep, "")
    path.write_text(text if text.endswith("\n") else text + "\n")


def readme_table(summary) -> str:
    """The quickstart summary as a markdown table, three decimals, with where it came from."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    columns = summary.columns
    lines = [
        "| " + " | ".join(columns) + " |",
        "|" + "|".join("-" * (len(c) + 2) for c in columns) + "|",
    ]
    for row in summary.iter_rows():
        cells = [f"{v:.3f}" if isinstance(v, float) else str(v) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    origin = (
        f"Written by `notebooks/render.py` from a quickstart at its defaults (commit {commit}, "
        f"{os.cpu_count()} CPU cores, {platform.machine()}, Python "
        f"{platform.python_version()})."
    )
    return origin + "\n\n" + "\n".join(lines)


def update_readme(summary) -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    pattern = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), flags=re.S)
    if not pattern.search(text):
        sys.exit(f"README.md has no {BEGIN} ... {END} block")
    readme.write_text(pattern.sub(f"{BEGIN}\n{readme_table(summary)}\n{END}", text))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--skip-readme", action="store_true", help="Only the notebooks.")
    args = parser.parse_args()
    from embedkit.quickstart import QuickstartConfig, quickstart

    os.environ.pop("EMBEDKIT_QUICKSTART", None)  # the notebooks' default folder
    os.environ.pop("EMBEDKIT_EPOCHS", None)
    result = quickstart(QuickstartConfig(), ROOT / "embedkit-quickstart", progress=True)
    if not args.skip_readme:
        update_readme(result.summary)
    for path in NOTEBOOKS:
        print(f"rendering {path.name}", flush=True)
        render_notebook(path)


if __name__ == "__main__":
    main()
