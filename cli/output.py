"""How the CLI prints tables and parses comma-separated options."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from embedkit.errors import ConfigError

if TYPE_CHECKING:
    import polars as pl


def show_table(table: pl.DataFrame, drop: Iterable[str] = ()) -> None:
    """Print a whole table, floats to 3 decimals and nulls as "-", without polars' shape and
    dtype lines."""
    import polars as pl

    table = table.drop([c for c in drop if c in table.columns])
    # a missing number (an interval one seed cannot give) prints as "-", not "null"
    table = table.with_columns(
        pl.col(c).map_elements(lambda v: f"{v:.3f}", return_dtype=pl.String).fill_null("-")
        for c, dtype in table.schema.items()
        if dtype.is_float() and table[c].null_count()
    )
    with pl.Config(
        tbl_rows=-1,
        tbl_cols=-1,
        fmt_str_lengths=80,
        tbl_width_chars=250,
        tbl_hide_dataframe_shape=True,
        tbl_hide_column_data_types=True,
        float_precision=3,
        tbl_formatting="ASCII_MARKDOWN",
    ):
        print(table)


def split_names(value: str) -> tuple[str, ...]:
    """``"knn,vim"`` to names; an empty value or an empty element is an error."""
    parts = tuple(part.strip() for part in value.split(","))
    if not all(parts):
        raise ConfigError(f"'{value}' has an empty name: give names separated by commas")
    return parts


def split_floats(value: str) -> tuple[float, ...]:
    """``"0.01,0.1"`` to numbers; an empty value or an empty element is an error."""
    return _split_numbers(value, float, "numbers (0.01,0.1,1)")


def split_ints(value: str) -> tuple[int, ...]:
    """``"0,1,2"`` to integers; an empty value or an empty element is an error."""
    return _split_numbers(value, int, "integers (0,1,2)")


def _split_numbers(value: str, cast, what: str) -> tuple:
    try:
        return tuple(cast(part) for part in value.split(","))  # int(" 1") is fine, "" is not
    except ValueError:
        raise ConfigError(f"'{value}' is not a comma-separated list of {what}") from None


def parse_params(items: list[str]) -> dict[str, dict[str, object]]:
    """``["knn.k=20", "vim.dim=256"]`` to ``{"knn": {"k": 20}, "vim": {"dim": 256}}``."""
    params: dict[str, dict[str, object]] = {}
    for item in items:
        key, sep, text = item.partition("=")
        scorer, dot, name = key.partition(".")
        if not (sep and dot and scorer and name):
            raise ConfigError(f"--param '{item}' is not of the form SCORER.NAME=VALUE (knn.k=20)")
        params.setdefault(scorer, {})[name] = parse_value(text)
    return params


def parse_groups(items: list[str]) -> dict[str, tuple[str, ...]]:
    """``["near=a,b", "far=c"]`` to ``{"near": ("a", "b"), "far": ("c",)}``."""
    groups: dict[str, tuple[str, ...]] = {}
    for item in items:
        name, sep, datasets = item.partition("=")
        if not (sep and name.strip()):
            raise ConfigError(f"--ood-group '{item}' is not of the form NAME=a,b (near=a,b)")
        if name.strip() in groups:
            raise ConfigError(f"--ood-group {name.strip()} is given twice")
        groups[name.strip()] = split_names(datasets)
    return groups


def parse_value(text: str) -> object:
    """``"20"`` to 20, ``"0.1"`` to 0.1, ``"true"``/``"false"`` to booleans, else the text."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            continue
    return text


def parse_method_params(items: list[str]) -> dict[str, object]:
    """``["temperature=0.1", "n_local=2"]`` to ``{"temperature": 0.1, "n_local": 2}``."""
    params: dict[str, object] = {}
    for item in items:
        name, sep, text = item.partition("=")
        if not (sep and name):
            raise ConfigError(f"--param '{item}' is not of the form NAME=VALUE (temperature=0.1)")
        params[name.replace("-", "_")] = parse_value(text)
    return params
