"""Result tables: encoder columns from store provenance, parquet plus a JSON of the config."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import stats

from ..errors import ConfigError, StoreError
from ..store import EmbeddingStore
from ..utils import check_writable, stamp, write_json


def encoder_columns(stores: list[EmbeddingStore]) -> list[dict[str, Any]]:
    """Per store, the columns that tell encoders apart in a table (from provenance).

    ``encoder`` is the store's encoder name; where two stores share a name (the same method
    pretrained twice), the store's folder name is added so that every row stays traceable.
    """
    names = [s.encoder_name for s in stores]
    columns = []
    for store, name in zip(stores, names, strict=True):
        encoder = store.encoder
        columns.append(
            {
                "encoder": name if names.count(name) == 1 else f"{name} ({store.path.stem})",
                "method": encoder["method"],
                "backbone": encoder["backbone"],
                "init": encoder["init"],
                "pretrain_dataset": encoder.get("pretrain_dataset") or "",
            }
        )
    return columns


def store_datasets(store: EmbeddingStore, datasets: tuple[str, ...] | None) -> list[str]:
    """The requested datasets (checked against the store), or all of the store's datasets."""
    if not datasets:
        return store.datasets()
    for dataset in datasets:
        store.dataset_attrs(dataset)  # raises StoreError naming what the store has
    return list(datasets)


def check_stores(stores: list[EmbeddingStore]) -> None:
    """Stores compared in one table must be distinct encoders with consistent features.

    Two stores of the same backbone must hold embeddings of the same size: otherwise one
    holds backbone features and the other something else (a projection head's output),
    and their rows would not be comparable.
    """
    names = [s.encoder_name for s in stores]
    hashes = [s.encoder["weights_sha256"] for s in stores]
    if len(set(hashes)) != len(hashes):
        raise StoreError(f"the same encoder appears twice among the stores ({', '.join(names)})")
    dims: dict[str, dict[int, str]] = {}
    for store in stores:
        for dataset in store.datasets()[:1]:
            dim = store.split_attrs(dataset, store.splits(dataset)[0])["dim"]
            dims.setdefault(store.encoder["backbone"], {}).setdefault(dim, str(store.path))
    for backbone, sizes in dims.items():
        if len(sizes) > 1:
            listed = ", ".join(f"{path} ({dim}-d)" for dim, path in sizes.items())
            raise StoreError(
                f"stores of backbone {backbone} hold embeddings of different sizes: {listed}; "
                f"compare stores of one kind of feature"
            )


def check_table_path(out: str | Path) -> Path:
    """Refuse a result-table path that cannot be written, before any work is done."""
    out = Path(out)
    if out.suffix != ".parquet":
        raise ConfigError(f"--out {out} must end in .parquet")
    if out.is_dir():
        raise ConfigError(f"--out {out} is a folder: name a .parquet file")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ConfigError(f"--out {out}: {parent} is a file, not a folder")
            break
    check_writable(out, "result table")
    return out


EXPORT_FORMATS = ("parquet", "csv", "latex")


def check_formats(formats: tuple[str, ...]) -> tuple[str, ...]:
    unknown = [f for f in formats if f not in EXPORT_FORMATS]
    if unknown:
        raise ConfigError(
            f"unknown table format {', '.join(unknown)}: use {', '.join(EXPORT_FORMATS)}"
        )
    return formats


def write_table(
    table: pl.DataFrame, out: str | Path, config: Any, stores: list, formats: tuple[str, ...] = ()
) -> Path:
    """Write ``table`` as parquet and, beside it, a JSON of the config and stores that made it;
    ``formats`` may add ``csv`` (``OUT.csv``) and ``latex`` (``OUT.tex``, a booktabs tabular,
    numbers to 3 decimals)."""
    check_formats(formats)
    out = check_table_path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    table.write_parquet(tmp)
    tmp.replace(out)
    if "csv" in formats:
        table.write_csv(out.with_suffix(".csv"))
    if "latex" in formats:
        out.with_suffix(".tex").write_text(latex_table(table))
    provenance = {
        "config": config,
        "stores": [{"path": str(s.path), "encoder": s.encoder} for s in stores],
        **stamp(),
    }
    write_json(out.with_suffix(".json"), provenance)
    return out


def latex_table(table: pl.DataFrame) -> str:
    """A booktabs ``tabular`` of ``table``: text left, numbers right, floats to 3 decimals."""

    def cell(value) -> str:
        if value is None:
            return "--"
        text = f"{value:.3f}" if isinstance(value, float) else str(value)
        for char, escaped in (
            ("\\", "\\textbackslash{}"),
            ("_", "\\_"),
            ("%", "\\%"),
            ("&", "\\&"),
            ("#", "\\#"),
            ("$", "\\$"),
        ):
            text = text.replace(char, escaped)
        return text

    numeric = [dtype.is_numeric() for dtype in table.dtypes]
    lines = [
        "\\begin{tabular}{" + "".join("r" if n else "l" for n in numeric) + "}",
        "\\toprule",
        " & ".join(cell(c) for c in table.columns) + " \\\\",
        "\\midrule",
        *(" & ".join(cell(v) for v in row) + " \\\\" for row in table.rows()),
        "\\bottomrule",
        "\\end{tabular}",
    ]
    return "\n".join(lines) + "\n"


def read_provenance(table_path: str | Path) -> dict:
    """The JSON ``write_table`` wrote beside a table (empty when it is absent or unreadable:
    a table from elsewhere still reports)."""
    try:
        return json.loads(Path(table_path).with_suffix(".json").read_text())
    except (OSError, ValueError):
        return {}


def mean_ci(values: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Mean and half-width of the Student-t confidence interval (NaN for a single value: one
    value has no interval, which is not the same as an interval of width 0)."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) == 0:
        return float("nan"), float("nan")
    if len(values) < 2:
        return float(values.mean()), float("nan")
    half = stats.t.ppf(0.5 + confidence / 2, len(values) - 1) * stats.sem(values)
    return float(values.mean()), float(half)
