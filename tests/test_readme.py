"""The README's set-up commands are the ones CI runs, so a missing step fails CI first."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_ci_runs_the_readme_commands():
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## Set-up: two commands", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```bash\n(.+?)\n```", section, flags=re.S)
    assert len(commands) == 2, "the set-up section must hold exactly two commands"
    install, test = commands
    assert "pip install" in install and "embedkit quickstart" in install
    assert "pytest" in test
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert install in ci_lines and test in ci_lines
    assert ci_lines.index(install) < ci_lines.index(test)


def test_readme_documents_every_scorer_and_the_plugin_example(tmp_path):
    from embedkit.ood import SCORERS
    from embedkit.ood.plugins import load_plugin

    readme = (ROOT / "README.md").read_text()
    for name in SCORERS:
        assert f"| `{name}` |" in readme, f"scorer {name} missing from the README's table"
    example = re.search(r"```python\n(# my_scores.py\n.+?)```", readme, flags=re.S).group(1)
    (tmp_path / "my_scores.py").write_text(example)
    import numpy as np

    scorer = load_plugin(f"{tmp_path / 'my_scores.py'}:CosineToMean")().fit(np.eye(3) + 1)
    assert scorer.score_samples(np.array([[1.0, 1, 1], [-1, -1, -1]])).tolist() == [
        pytest.approx(1.0),
        pytest.approx(-1.0),
    ]


def _readme_quickstart_table() -> dict[str, dict[str, float]]:
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- quickstart-table:begin -->", 1)[1].split(
        "<!-- quickstart-table:end", 1
    )[0]
    rows = [
        [cell.strip() for cell in line.strip().strip("|").split("|")]
        for line in block.splitlines()
        if line.startswith("|") and not line.startswith("|-")
    ]
    header, body = rows[0], rows[1:]
    return {row[0]: dict(zip(header[1:], map(float, row[1:]), strict=True)) for row in body}


def test_readme_quickstart_table_matches_a_fresh_quickstart():
    """CI runs `embedkit quickstart` at the repository root before the tests: the README's
    table (written by notebooks/render.py) must show what that run printed, to within what
    another machine moves: 0.03, or for a probe's mean over seeds the 95 % interval the
    probe reports for it, where that is wider. The 1 % probe fits 12 labelled images per
    seed: SimCLR's mean read 0.764 (interval +-0.42) where the table was rendered and 0.718
    (+-0.57, one seed at 0.45) on an AVX2-only CPU, whose kernels round the epochs of
    training differently; its 10 % and 100 % columns, at +-0.002, stay within 0.03."""
    import json

    import polars as pl

    from embedkit.eval.probe import summarise_probe
    from embedkit.quickstart import QuickstartConfig, probe_column
    from embedkit.utils import to_jsonable

    folder = ROOT / "embedkit-quickstart"
    if not (folder / "summary.parquet").is_file():
        pytest.skip("no embedkit-quickstart/ at the repository root (CI's first command makes it)")
    config = json.loads((folder / "summary.json").read_text())["config"]
    if config != to_jsonable(QuickstartConfig()):
        pytest.skip("embedkit-quickstart/ was made with other settings than the defaults")
    fresh = pl.read_parquet(folder / "summary.parquet")
    seeds = summarise_probe(pl.read_parquet(folder / "probe.parquet"))
    spread = {  # (encoder, summary column): the 95 % interval of its mean over seeds
        (row["encoder"], probe_column(row["label_fraction"])): row["accuracy_ci95"] or 0.0
        for row in seeds.iter_rows(named=True)
    }
    assert len(spread) == 6 and all(column in fresh.columns for _, column in spread)
    table = _readme_quickstart_table()
    assert sorted(table) == sorted(fresh["encoder"].to_list())
    for row in fresh.iter_rows(named=True):
        shown = table[row["encoder"]]
        assert list(shown) == [c for c in fresh.columns if c != "encoder"]
        for column, value in shown.items():
            tolerance = max(0.03, spread.get((row["encoder"], column), 0.0))
            assert value == pytest.approx(row[column], abs=tolerance), (
                f"README's quickstart table is stale ({row['encoder']}, {column}): "
                f"run `.venv/bin/python notebooks/render.py`"
            )
