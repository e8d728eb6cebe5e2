"""The typer app, the options every command shares, and the error boundary.

Each command parses options, builds the library's frozen config, calls one library function
and prints a table. ``EmbedkitError`` becomes one line on stderr and exit code 2; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Annotated

import typer
from typer.core import TyperGroup

# names from the catalog, not the registries: --help must not wait for torch, timm, lightly
from embedkit.catalog import BACKBONE_NAMES, METHOD_NAMES, SIZES
from embedkit.errors import ConfigError, EmbedkitError
from embedkit.utils import USER_OS_ERRNOS, os_errno, os_error_message

try:  # typer >= 0.20 ships its own copy of click
    from typer._click.exceptions import NoArgsIsHelpError, UsageError
except ImportError:  # pragma: no cover - older typer uses click itself
    from click.exceptions import NoArgsIsHelpError, UsageError


class _OneLineUsageError(UsageError):
    """A usage error shown as one line (click shows a usage block, a hint and the error)."""

    def show(self, file=None) -> None:
        command = self.ctx.command_path if self.ctx else "embedkit"
        print(f"error: {self.format_message()} (see `{command} --help`)", file=file or sys.stderr)


class EmbedkitGroup(TyperGroup):
    """The command group: bad options and values end in one line and exit code 2."""

    def make_context(self, *args, **kwargs) -> typer.Context:
        with _one_line_usage():
            return super().make_context(*args, **kwargs)

    def invoke(self, ctx: typer.Context):
        with _one_line_usage():
            return super().invoke(ctx)


def _load_config(ctx: typer.Context, value: Path | None) -> Path | None:
    """``--config FILE``: the file's values become the command's defaults (``default_map``),
    so options on the command line still win (see ``embedkit.cli.config``)."""
    if value is None:
        return value
    from .config import command_defaults, read_config

    path = Path(value)
    try:
        params = {p.name: p for p in ctx.command.params if p.name and p.name != "config_file"}
        defaults = command_defaults(read_config(path), ctx.info_name, params, path)
    except ConfigError as exc:
        raise _OneLineUsageError(str(exc), ctx) from None
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


@contextlib.contextmanager
def _one_line_usage():
    try:
        yield
    except (NoArgsIsHelpError, _OneLineUsageError):
        raise
    except UsageError as exc:
        raise _OneLineUsageError(exc.format_message(), exc.ctx) from None


app = typer.Typer(
    cls=EmbedkitGroup,
    name="embedkit",
    help="SSL benchmarks on MedMNIST over cached embedding stores: pretrain → embed → evaluate.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from embedkit import __version__

        print(f"embedkit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    pass


_sizes = ", ".join(map(str, SIZES))
DatasetOpt = Annotated[
    str,
    typer.Option(
        "--dataset",
        help="A dataset, a comma-separated list, "
        "an a+b multi-domain spec, 'all' (the 12 MedMNIST 2D) or 'demo'.",
    ),
]
SizeOpt = Annotated[int, typer.Option("--size", help=f"Image size in pixels: {_sizes}.")]
DataRootOpt = Annotated[
    str | None,
    typer.Option(
        "--data-root", help="Folder of the npz files (default: $EMBEDKIT_DATA, else ~/.medmnist)."
    ),
]
MethodOpt = Annotated[str, typer.Option("--method", help=f"One of: {', '.join(METHOD_NAMES)}.")]
BackboneOpt = Annotated[
    str, typer.Option("--backbone", help=f"One of: {', '.join(BACKBONE_NAMES)}.")
]
InitOpt = Annotated[
    str, typer.Option("--init", help="random, imagenet, timm:TAG (timm:dino) or a weights file.")
]
EpochsOpt = Annotated[int, typer.Option("--epochs", help="Passes over the training split.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Images per step.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed.")]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")]
StoresOpt = Annotated[
    list[Path], typer.Option("--store", metavar="PATH", help="An embedding store (repeatable).")
]
DownloadOpt = Annotated[
    bool, typer.Option("--download", help="Fetch missing MedMNIST files (needs network).")
]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]
ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        metavar="FILE",
        is_eager=True,
        callback=_load_config,
        help="Option values from a TOML, YAML or JSON file (options given here win); a run's "
        "config.json replays that run.",
    ),
]
TableFormatOpt = Annotated[
    str,
    typer.Option(
        "--format",
        help="Table formats, comma-separated: parquet (always written; the report reads it), "
        "csv, latex (OUT.csv, OUT.tex beside it).",
    ),
]
ProgressOpt = Annotated[bool, typer.Option("--progress/--no-progress", help="Progress bars.")]


def run_command(debug: bool, action):
    """Call ``action``; turn EmbedkitError into one line and exit code 2."""
    # embedkit's own progress lines at INFO; other libraries (faiss's loader, Lightning) only
    # when they warn
    logging.basicConfig(level=logging.WARNING, format="embedkit: %(message)s", stream=sys.stderr)
    logging.getLogger("embedkit").setLevel(logging.INFO)
    warnings.showwarning = lambda message, category, *_: print(
        f"warning: {message}", file=sys.stderr
    )
    try:
        return action()
    except EmbedkitError as exc:
        if debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        raise typer.Exit(2) from None
    except OSError as exc:  # a full disk, a read-only or forbidden path: no traceback
        if debug or os_errno(exc) not in USER_OS_ERRNOS:
            raise
        print(f"error: {os_error_message(exc, 'cannot write or read a file')}", file=sys.stderr)
        raise typer.Exit(2) from None


@functools.cache
def _documented(config_cls: type) -> dict[str, str]:
    from embedkit.registry import documented_parameters

    return documented_parameters(config_cls, "Attributes")


def field_help(config_cls: type, name: str, syntax: str = "") -> str:
    """An option's help: the ``Attributes`` entry of its config field (one text for the
    library's docs and ``--help``), then how the command line writes it, where that differs."""
    raw = _documented(config_cls)[name]
    text = raw.replace("``", "")
    if not raw.startswith("``"):  # prose, not a value or a name such as torch.compile
        text = text[:1].upper() + text[1:]
    return f"{text} {syntax}".strip()


def listed(values: tuple) -> str:
    """A config's tuple default as the comma-separated text its option takes (``()``, every
    dataset, is ``all``)."""
    return ",".join(map(str, values)) if values else "all"


def dataset_option(value: str) -> tuple[str, ...]:
    """A --dataset/--id/--ood value as names; "all" becomes () (every dataset in the store).
    An empty value or an empty list element is an error, not "all"."""
    if value.strip() == "all":
        return ()
    parts = [part.strip() for part in value.split(",")]
    if not all(parts):
        raise ConfigError(
            f"dataset list '{value}' has an empty name: give names separated by commas, or 'all'"
        )
    return tuple(parts)


def is_other_rank() -> bool:
    """True in the processes of a multi-process run other than global rank 0."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and dist.get_rank() != 0
