"""``embedkit store ls`` and ``embedkit store verify``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from .app import DebugOpt, app, run_command
from .output import show_table

store_app = typer.Typer(help="List and verify embedding stores.", no_args_is_help=True)
app.add_typer(store_app, name="store")


@store_app.command("ls")
def ls(
    paths: Annotated[list[Path], typer.Argument(help="Stores, or folders to search for *.zarr.")],
    debug: DebugOpt = False,
) -> None:
    """Every store, dataset and split with sizes and provenance."""
    from embedkit.store import list_stores

    run_command(debug, lambda: show_table(list_stores(paths)))


@store_app.command("verify")
def verify(
    store: Annotated[Path, typer.Option("--store", metavar="PATH", help="The store to check.")],
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
