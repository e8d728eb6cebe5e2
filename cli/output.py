"""How the CLI prints tables and parses comma-separated options."""

from __future__ import annotations

from collections.abc import Iterable

import polars as pl

from embedkit.errors import ConfigError


def show_table(table: pl.DataFrame, drop: Iterable[str] = ()) -> None:
    """Print a whole table, floats to 3 decimals, without polars' shape and dtype lines."""
    table = table.drop([c for c in drop if c in table.columns])
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
    return tuple(part.strip() for part in value.split(",") if part.strip())


def split_floats(value: str) -> tuple[float, ...]:
    try:
        return tuple(float(part) for part in split_names(value))
    except ValueError:
        raise ConfigError(f"'{value}' is not a comma-separated list of numbers") from None


def split_ints(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(part) for part in split_names(value))
    except ValueError:
        raise ConfigError(f"'{value}' is not a comma-separated list of integers") from None


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
