"""The benchmark as a whole: grids of methods x datasets x backbones x initialisations x
multi-domain sets, run idempotently (locally or as SLURM arrays) and collected into the
study's tables and findings.

- ``spec``: grid files (TOML) and presets, checked key by key.
- ``cells``: a cell (one encoder with its extraction and evaluation) identified by a hash
  of its configuration, its state and where its artefacts live.
- ``execute``: running one cell, resumable.
- ``plan``: the cells and their cost, before running.
- ``runner``: ``run_grid`` with the local executor, ``status``; ``slurm``: the SLURM
  executor through submitit.
- ``collect``: long tables over all cells; ``findings``: the study's tables and sentences.
"""

from .cells import Cell, expand
from .collect import Collected, collect
from .execute import Resources, run_cell
from .findings import Finding
from .plan import plan
from .runner import read_output, run_grid, status
from .slurm import SlurmOptions, submit_slurm
from .spec import EvaluationPlan, GridSpec, load_grid, parse_grid, presets

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
