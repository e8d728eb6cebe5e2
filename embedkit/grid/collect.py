"""Collecting a grid: the long tables over all cells, and the study's findings from them.

``collect`` writes ``OUT/results/``: ``probe``, ``knn``, ``ood`` and ``transfer`` tables with
every axis as a column, one table per finding (``study_*.parquet``) and ``findings.md``,
where each finding is a table and sentences computed from the numbers. Cells that are not
done are named, never silently dropped.

The findings themselves are computed in ``findings``.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from ..data import components, get_info
from ..eval.probe import summarise_probe
from ..utils import stamp, write_json
from .cells import Cell, cell_folder, cell_state
from .findings import Finding, markdown_table, study_findings
from .open_questions import full_data, open_question_findings
from .paper import results_page
from .runner import read_output, recorded_modalities

PROVENANCE = ("encoder", "method", "backbone", "init", "pretrain_dataset")


@dataclass
class Collected:
    tables: dict[str, pl.DataFrame]
    findings: list[Finding]
    missing: list[tuple[str, str, str]]  # (label, state, error)
    folder: Path


def _modality(name: str, recorded: dict[str, str]) -> str:
    """A dataset's modality as ``grid run`` recorded it (the user's datasets need the data
    root), else the registry's."""
    return recorded[name] if name in recorded else get_info(name).modality


def _axis_columns(cell: Cell, varied: list[str], recorded: dict[str, str]) -> dict[str, object]:
    dataset = cell.axes["dataset"]
    parts = [] if cell.kind == "baseline" else components(dataset)
    modalities = {_modality(p, recorded) for p in parts}
    method = cell.axes["method"]
    kind = (
        "baseline"
        if cell.kind == "baseline"
        else ("supervised" if method == "supervised" else "ssl")
    )
    columns: dict[str, object] = {
        "cell": cell.id,
        "encoder": cell.label,
        "kind": kind,
        "method": method,
        "pretrain_dataset": dataset if parts else "",
        "multi_domain": len(parts) > 1,
        "multi_modality": len(modalities) > 1,
        "pretrain_modalities": "+".join(sorted(modalities)),
        "backbone": cell.axes["backbone"],
        "init": cell.axes["init"],
        "size": cell.axes["size"],
    }
    for name in varied:  # options varied by the grid (pretrain_lr) and method parameters
        columns[name if "." in name else f"pretrain_{name}"] = str(cell.axes.get(name, ""))
    return columns


def _long_tables(output: Path, cells: list[Cell]) -> dict[str, pl.DataFrame]:
    standard = {"method", "dataset", "backbone", "init", "size"}
    varied = sorted({k for c in cells for k in c.axes if k not in standard})
    parts: dict[str, list[pl.DataFrame]] = {"probe": [], "knn": [], "ood": []}
    recorded = recorded_modalities(output)
    for cell in cells:
        columns = _axis_columns(cell, varied, recorded)
        for name in parts:
            file = cell_folder(output, cell.id) / f"{name}.parquet"
            if not file.is_file():
                continue
            table = pl.read_parquet(file)
            table = table.drop([c for c in PROVENANCE if c in table.columns])
            table = table.with_columns([pl.lit(v).alias(k) for k, v in columns.items()]).select(
                [*columns, *table.columns]
            )
            parts[name].append(table)
    tables = {n: pl.concat(t, how="diagonal_relaxed") for n, t in parts.items() if t}
    if "probe" in tables:
        probe = tables["probe"].with_columns(
            in_domain=pl.struct("pretrain_dataset", "dataset").map_elements(
                lambda r: r["dataset"] in (r["pretrain_dataset"] or "").split("+"),
                return_dtype=pl.Boolean,
            ),
            probed_modality=pl.col("dataset").map_elements(
                lambda name: _modality(name, recorded), return_dtype=pl.String
            ),
        )
        tables["probe"] = probe
        tables["transfer"] = _summary(probe)
    return tables


def _summary(probe: pl.DataFrame) -> pl.DataFrame:
    """Mean and 95 % interval over seeds, per cell, dataset and label fraction."""
    per_seed = (
        *("seed", "n_train", "l2", "protocol", "converged", "unconverged_fits"),
        *("accuracy", "auc", "balanced_accuracy"),
    )
    return summarise_probe(probe, [c for c in probe.columns if c not in per_seed])


def collect(
    output: str | os.PathLike, report: bool = True, page: str | os.PathLike | None = None
) -> Collected:
    """Write ``OUT/results``: long tables, study tables, ``findings.md`` and (``report``)
    ``report/report.md`` with the heatmaps and curves of ``embedkit report``; with ``page``,
    also the results page beside the paper's claims (``embedkit.grid.paper``)."""
    output = Path(output)
    spec, cells = read_output(output)
    results = output / "results"
    results.mkdir(exist_ok=True)
    missing = []
    done, records = [], []
    for cell in cells:
        record = cell_state(output, cell.id)
        if record.get("state") == "done":
            done.append(cell)
            records.append(record)
        else:
            missing.append((cell.label, record.get("state", "pending"), record.get("error") or ""))
    tables = _long_tables(output, done)
    for name, table in tables.items():
        table.write_parquet(results / f"{name}.parquet")
    findings = []
    if "probe" in tables:
        summary = tables["transfer"]
        ood = tables.get("ood")
        findings = study_findings(full_data(summary), full_data(ood))
        findings += open_question_findings(summary)
        for finding in findings:
            finding.table.write_parquet(results / f"study_{finding.name}.parquet")
    text = _write_findings(results / "findings.md", spec.name, findings, missing, len(cells))
    if page is not None and "probe" in tables:
        host = f"{os.cpu_count()} CPU cores ({platform.machine()}), {platform.platform(terse=True)}"
        options = {k: spec.pretrain[k][0] for k in ("epochs", "recipe") if k in spec.pretrain}
        settings = ", ".join(f"{k} {v}" for k, v in options.items())
        results_page(
            page,
            spec.name,
            full_data(tables["transfer"]),
            full_data(tables.get("ood")),
            findings,
            records,
            missing,
            text,
            host,
            settings,
        )
    if report and "probe" in tables:
        from ..report import ReportConfig, build_report

        build_report(
            results / "report",
            **{n: tables.get(n) for n in ("probe", "knn", "ood", "transfer")},
            config=ReportConfig(title=f"embedkit grid {spec.name}"),
        )
    write_json(
        results / "collect.json",
        {"grid": spec.name, "cells": len(cells), "done": len(done), "missing": missing, **stamp()},
    )
    return Collected(tables, findings, missing, results)


def _write_findings(path: Path, name: str, findings, missing, n_cells: int) -> str:
    lines = [f"# Findings of grid `{name}`", ""]
    lines.append(f"{n_cells - len(missing)} of {n_cells} cells done.")
    if missing:
        lines += ["", "Missing cells (not in the tables below):", ""]
        lines += [
            f"- {label}: {state}" + (f" ({error})" if error else "")
            for label, state, error in missing
        ]
    for i, finding in enumerate(findings, 1):
        lines += ["", f"## {i}. {finding.title}", ""]
        lines += [f"- {s}" for s in finding.sentences]
        if finding.table.height:
            lines += ["", markdown_table(finding.table)]
    path.write_text("\n".join(lines) + "\n")
    return path.read_text()
