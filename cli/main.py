"""The ``embedkit`` command: a thin typer layer over the library (see ``app``)."""

# isort: skip_file
from . import stages  # noqa: F401  (registered first: --help lists the pipeline in order)
from . import evaluate  # noqa: F401
from . import store  # noqa: F401
from . import grid  # noqa: F401
from .app import app


def main() -> None:
    app()


if __name__ == "__main__":
    main()
