"""The benchmark as a whole: grids of methods x datasets x backbones x initialisations x
multi-domain sets, run idempotently (locally or as SLURM arrays) and collected into the
study's tables and findings.

- ``spec``: grid files (TOML) and presets, checked key by key.
- ``cells``: one encoder's pretraining, extraction and evaluation, identified by a hash of
  its configuration; state on disk, resumable.
- ``runner``: ``plan``, ``run_grid`` (local or SLURM through submitit) and ``status``.
- ``collect``: long tables over all cells, the study's tables and sentences.
"""

from .spec import EvaluationPlan, GridSpec, load_grid, parse_grid, presets

# isort: split
from .cells import Cell, Resources, expand, run_cell
from .collect import Collected, Finding, collect
from .runner import SlurmOptions, plan, read_output, run_grid, status, submit_slurm

__all__ = [
    "Cell",
    "Collected",
    "EvaluationPlan",
    "Finding",
    "GridSpec",
    "Resources",
    "SlurmOptions",
    "collect",
    "expand",
    "load_grid",
    "parse_grid",
    "plan",
    "presets",
    "read_output",
    "run_cell",
    "run_grid",
    "status",
    "submit_slurm",
]
