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
