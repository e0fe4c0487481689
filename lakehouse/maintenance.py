"""Table maintenance: compact small files, vacuum unreferenced ones, and delete rows past retention."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from typing import Any

import pyarrow as pa

from lakehouse._retry import retry_commit
from lakehouse.catalog import get_table
from lakehouse.lake import Lake
from lakehouse.sql import sql_literal


def compact(lake: Lake, name: str) -> dict[str, Any]:
    """Rewrite small files into bigger ones; returns delta-rs's metrics ({} if the table is missing)."""

    def op() -> dict[str, Any]:
        table = lake._open(name)
        return {} if table is None else table.optimize.compact()

    return retry_commit(op, f"compact {name!r}")


def vacuum(lake: Lake, name: str, retention_hours: int = 168, enforce_retention: bool = True) -> list[str]:
    """Delete files no version newer than `retention_hours` references; returns the removed paths."""

    def op() -> list[str]:
        table = lake._open(name)
        if table is None:
            return []
        return table.vacuum(
            retention_hours=retention_hours, dry_run=False, enforce_retention_duration=enforce_retention
        )

    return retry_commit(op, f"vacuum {name!r}")


def delete_older_than(
    lake: Lake, name: str, column: str, cutoff: datetime | date, where: str | None = None
) -> int:
    """Delete rows with `column < cutoff` (and `where`, e.g. "tenant = 'acme'"); returns rows deleted."""
    schema = get_table(name).schema
    if column not in schema.names:
        raise ValueError(f"table {name!r} has no column {column!r}; columns: {', '.join(schema.names)}")
    field = schema.field(column)
    if pa.types.is_date(field.type) and isinstance(cutoff, datetime):
        cutoff = cutoff.date()
    elif pa.types.is_timestamp(field.type) and not isinstance(cutoff, datetime):
        cutoff = datetime.combine(cutoff, time(), tzinfo=UTC)
    elif not (pa.types.is_date(field.type) or pa.types.is_timestamp(field.type)):
        raise ValueError(f"table {name!r}, column {column!r} is {field.type}, not a date or timestamp")
    predicate = f"{column} < {sql_literal(cutoff)}"
    return lake.delete(name, f"{predicate} AND ({where})" if where else predicate)
