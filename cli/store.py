"""``embedkit store ls`` and ``embedkit store verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import ConfigOpt, DebugOpt, app, run_command
from .output import show_table

store_app = typer.Typer(help="List and verify embedding stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("ls")
def ls(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(hidden=True, help="Stores or folders, as --store (kept for old scripts)."),
    ] = None,
    store: Annotated[
        list[Path] | None,
        typer.Option(
            "--store",
            metavar="PATH",
            help="A store, or a folder to search for *.zarr; repeat for several.",
        ),
    ] = None,
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Every store, dataset and split with sizes and provenance."""
    from embedkit.errors import ConfigError
    from embedkit.store import list_stores

    def action():
        given = [*(paths or []), *(store or [])]
        if not given:
            raise ConfigError("name a store or a folder of stores: embedkit store ls --store PATH")
        show_table(list_stores(given))

    run_command(debug, action)


@store_app.command("verify")
def verify(
    store: Annotated[Path, typer.Option("--store", metavar="PATH", help="The store to check.")],
    config_file: ConfigOpt = None,
    debug: DebugOpt = False,
) -> None:
    """Completeness, shapes, dtypes, NaN/inf, chunk checksums, provenance; exit 1 on problems."""
    from embedkit.store import verify_store

    def action():
        table = verify_store(store)
        show_table(table)
        bad = table.filter(table["status"] != "ok").height
        print(f"{store}: {'sound' if not bad else f'{bad} problem row(s)'}")
        if bad:
            raise typer.Exit(1)

    run_command(debug, action)
