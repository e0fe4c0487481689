"""The lakehouse: Tandem's Delta tables (see `CATALOG`), written and queried through `Lake`."""

from lakehouse.catalog import CATALOG, TableDef, get_table
from lakehouse.errors import (
    CommitConflictError,
    LakehouseError,
    QueryError,
    SchemaMismatchError,
    TableNotFoundError,
)
from lakehouse.lake import Lake
from lakehouse.maintenance import compact, delete_older_than, vacuum
from lakehouse.sql import sql_literal

__all__ = [
    "CATALOG",
    "CommitConflictError",
    "Lake",
    "LakehouseError",
    "QueryError",
    "SchemaMismatchError",
    "TableDef",
    "TableNotFoundError",
    "compact",
    "delete_older_than",
    "get_table",
    "sql_literal",
    "vacuum",
]
