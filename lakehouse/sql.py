"""DuckDB over Delta (each table a view on its pyarrow dataset) and safe literals for Delta predicates."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from lakehouse.errors import QueryError

Params = Sequence[Any] | Mapping[str, Any] | None


def sql_literal(value: Any) -> str:
    """Quote a Python value as a SQL literal for a Delta predicate (`"tenant = " + sql_literal(t)`)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot write {value!r} as a SQL literal")
        return repr(value)
    if isinstance(value, datetime):
        # Naive datetimes are UTC, as on write; Delta compares a quoted ISO string with a timestamp column.
        utc = value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)
        return f"'{utc.strftime('%Y-%m-%dT%H:%M:%S.%fZ')}'"
    if isinstance(value, date):
        return f"'{value.isoformat()}'"
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("a SQL literal cannot contain a NUL character")
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}; use str, int, float, bool, date or datetime")


def connect(datasets: Mapping[str, ds.Dataset]) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with each dataset registered as a view of that name (UTC session)."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for name, dataset in datasets.items():
        con.register(name, dataset)
    return con


def query(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    params: Params = None,
    *,
    missing_table_hint: Callable[[], str] | None = None,
) -> pa.Table:
    """Run one statement with bound parameters and return its result as Arrow; errors become QueryError."""
    try:
        relation = con.sql(sql, params=params)
        table = None if relation is None else relation.to_arrow_table()
    except duckdb.Error as exc:
        message = str(exc).strip()
        if isinstance(exc, duckdb.CatalogException) and missing_table_hint is not None:
            message = f"{message}\n{missing_table_hint()}"
        raise QueryError(message) from exc
    return table if table is not None else pa.table({})
