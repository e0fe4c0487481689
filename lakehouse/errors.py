"""Exceptions raised by the lakehouse.

    LakehouseError
    ├── TableNotFoundError      the name is not in the catalog
    ├── SchemaMismatchError     written data does not fit the table's schema (names the column)
    ├── CommitConflictError     a commit still conflicted after every retry
    └── QueryError              a SQL query failed (bad SQL, unknown column, ...)
"""


class LakehouseError(Exception):
    """Base of every error raised by `lakehouse`."""


class TableNotFoundError(LakehouseError):
    """The table name is not in the catalog."""


class SchemaMismatchError(LakehouseError):
    """Written data does not fit the table's schema."""


class CommitConflictError(LakehouseError):
    """A commit kept conflicting with concurrent writers after every retry."""


class QueryError(LakehouseError):
    """A SQL query failed."""
