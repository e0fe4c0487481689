"""What every `tandem` command shares: the consoles, settings, the platform, error handling, tables."""

from __future__ import annotations

import functools
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from models.settings import TandemSettings

__all__ = ["Actor", "Reason", "console", "err", "friendly", "platform", "say", "settings", "table"]

console = Console()
err = Console(stderr=True)
Actor = Annotated[str, typer.Option(help="Who makes the change (recorded in the history).")]
Reason = Annotated[str | None, typer.Option(help="Why (recorded in the history).")]


def settings() -> TandemSettings:
    return TandemSettings()


def platform():
    from orchestration.bootstrap import Platform

    return Platform.open(settings())


def friendly(fn):
    """Turn the platform's errors into a one-line reason and exit code 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from lakehouse import LakehouseError
        from models.errors import TandemModelError
        from online.gateway.problems import GatewayError

        try:
            return fn(*args, **kwargs)
        except (TandemModelError, LakehouseError) as exc:
            err.print(f"[red]error:[/red] {exc}", highlight=False)
            raise typer.Exit(1) from None
        except GatewayError as exc:
            err.print(f"[red]error:[/red] {exc.detail}", highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def say(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)
    console.file.flush()  # progress must show at once, also when stdout is a file or a pipe


def table(title: str, columns: list[str], rows: list[list]) -> None:
    table = Table(title=title)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*["" if v is None else str(v) for v in row])
    console.print(table)
