"""What the command modules share: the overrides argument and one-line errors."""

from __future__ import annotations

from typing import Annotated

import typer

from posenc.cli.completion import complete_overrides

Overrides = Annotated[
    list[str] | None,
    typer.Argument(
        help="Hydra overrides, e.g. encoding=alibi task=copy train.steps=2000 seed=1",
        autocompletion=complete_overrides,
    ),
]


def error_line(message: str) -> None:
    """One red line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold red]error:[/] {escape(message)}", soft_wrap=True
    )


def warning_line(message: str) -> None:
    """One yellow line on stderr: something left out, the command goes on."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(
        f"[bold yellow]warning:[/] {escape(message)}", soft_wrap=True
    )


def fail(message: str, code: int = 2) -> None:
    """One red line on stderr, then exit with ``code``."""
    error_line(message)
    raise typer.Exit(code)
