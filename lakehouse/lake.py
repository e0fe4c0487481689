"""`Lake`: the catalog's tables as Delta tables under one root, with schema-checked, retried writes."""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError
from deltalake.exceptions import TableNotFoundError as DeltaTableNotFoundError

from lakehouse import sql as _sql
from lakehouse._coerce import Data, check_partition, coerce
from lakehouse._retry import retry_commit
from lakehouse.catalog import CATALOG, TableDef, get_table
from lakehouse.errors import LakehouseError
from lakehouse.sql import sql_literal

logger = logging.getLogger(__name__)



class Lake:
    """Every catalog table as a Delta table under `root` (a local path or `s3://bucket/prefix`).

    Nothing is cached: each call opens the tables it needs, so a `Lake` is cheap, picklable and safe to
    use from spawned processes and threads. Writes coerce data to the catalog schema
    (`SchemaMismatchError` names the column), create missing tables, and retry commit conflicts with
    backoff before raising `CommitConflictError`.
    """

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        if not root or not str(root).strip():
            raise ValueError(
                "root must be a directory or a URI, like '/var/lib/tandem/lake' or 's3://bucket/lake'"
            )
        root = str(root)
        self.root = root.rstrip("/") if "://" in root else os.path.abspath(root)
        self.storage_options: dict[str, str] = dict(storage_options or {})

    def __repr__(self) -> str:
        return f"Lake({self.root!r})"

    # -- tables ---------------------------------------------------------------------------------------

    def uri(self, name: str) -> str:
        """The table's location: `root/name`."""
        return f"{self.root}/{get_table(name).name}"

    def _open(self, name: str) -> DeltaTable | None:
        try:
            return DeltaTable(self.uri(name), storage_options=self.storage_options or None)
        except DeltaTableNotFoundError:
            return None

    def _open_or_create(self, name: str) -> DeltaTable:
        # No retry of its own: callers run inside retry_commit, which retries a lost creation race too.
        table = self._open(name)
        if table is None:
            self._create(name)
            table = self._open(name)
        if table is None:
            raise LakehouseError(
                f"table {name!r} is still missing at {self.uri(name)} right after creating it"
            )
        return table

    def _create(self, name: str) -> None:
        table = get_table(name)
        try:
            DeltaTable.create(
                self.uri(name),
                table.schema,
                mode="ignore",
                partition_by=list(table.partition_by) or None,
                name=table.name,
                description=table.description or None,
                storage_options=self.storage_options or None,
            )
        except CommitFailedError:
            # A concurrent writer created it first; if it is still missing, let the caller retry.
            if not self.exists(name):
                raise

    def exists(self, name: str) -> bool:
        """Whether the table has been created."""
        return self._open(name) is not None

    def ensure(self, name: str) -> None:
        """Create the empty table with its catalog schema and partitioning unless it exists (race-safe)."""
        if not self.exists(name):
            retry_commit(lambda: self._create(name), f"create table {name!r}")

    # -- writes ---------------------------------------------------------------------------------------

    def append(self, name: str, data: Data) -> int:
        """Append rows; returns the new table version."""
        rows = coerce(get_table(name), data)

        def op() -> int:
            table = self._open_or_create(name)
            if rows.num_rows:
                _append(table, rows)
            return table.version()

        return retry_commit(op, f"append to {name!r}")

    def appender(self, name: str, *, compact_every: int = 0, **compaction: int) -> Appender:
        """A writer for frequent appends to one table that keeps its table handle between writes.

        With `compact_every=N` it compacts the partitions it wrote every N appends (see `Appender` for
        `target_size`, `settled_rows` and `min_target_size`).
        """
        return Appender(self, name, compact_every=compact_every, **compaction)

    def overwrite_partition(self, name: str, data: Data, partition: Mapping[str, Any]) -> int:
        """Replace exactly one partition (e.g. `{"day": date(2026, 1, 4)}`) with `data`; returns the version."""
        table = get_table(name)
        predicate = _partition_predicate(table, partition)
        rows = coerce(table, data)
        check_partition(table, rows, partition)
        return self._overwrite(name, rows, predicate)

    def replace_where(self, name: str, data: Data, predicate: str) -> int:
        """Replace the rows matching a Delta SQL predicate (quote values with `sql_literal`) with `data`."""
        return self._overwrite(name, coerce(get_table(name), data), predicate)

    def _overwrite(self, name: str, rows: pa.Table, predicate: str) -> int:
        def op() -> int:
            table = self._open_or_create(name)
            write_deltalake(table, rows, mode="overwrite", predicate=predicate)
            return table.version()

        return retry_commit(op, f"overwrite {name!r} where {predicate}", predicate=predicate)

    def merge(self, name: str, data: Data, keys: Sequence[str] | None = None) -> int:
        """Upsert on `keys` (default: the catalog's): update matching rows, insert the rest; returns the version."""
        rows, on = self._merge_source(name, data, keys, keep="last")

        def op() -> int:
            table = self._open_or_create(name)
            if rows.num_rows:
                (
                    table.merge(rows, on, source_alias="s", target_alias="t")
                    .when_matched_update_all()
                    .when_not_matched_insert_all()
                    .execute()
                )
            return table.version()

        return retry_commit(op, f"merge into {name!r}")

    def insert_if_absent(self, name: str, data: Data, keys: Sequence[str] | None = None) -> int:
        """Insert only the rows whose keys are not in the table yet; returns how many were inserted."""
        rows, on = self._merge_source(name, data, keys, keep="first")

        def op() -> int:
            table = self._open_or_create(name)
            if not rows.num_rows:
                return 0
            metrics = (
                table.merge(rows, on, source_alias="s", target_alias="t")
                .when_not_matched_insert_all()
                .execute()
            )
            return int(metrics["num_target_rows_inserted"])

        return retry_commit(op, f"insert into {name!r}")

    def _merge_source(
        self, name: str, data: Data, keys: Sequence[str] | None, keep: str
    ) -> tuple[pa.Table, str]:
        table = get_table(name)
        keys = tuple(keys) if keys is not None else table.keys
        if not keys:
            raise ValueError(f"table {name!r} has no keys in the catalog; pass keys=[...]")
        unknown = [k for k in keys if k not in table.schema.names]
        if unknown:
            raise ValueError(
                f"table {name!r} has no column(s) {unknown}; columns: {', '.join(table.schema.names)}"
            )
        rows = _dedupe(coerce(table, data), keys, keep)
        return rows, " AND ".join(f"t.{k} = s.{k}" for k in keys)

    def delete(self, name: str, predicate: str) -> int:
        """Delete the rows matching a Delta SQL predicate; returns how many were deleted."""
        if not predicate.strip():
            raise ValueError("delete needs a predicate; refusing to delete a whole table")

        def op() -> int:
            table = self._open(name)
            return 0 if table is None else int(table.delete(predicate)["num_deleted_rows"])

        return retry_commit(op, f"delete from {name!r}", predicate=predicate)

    # -- reads ----------------------------------------------------------------------------------------

    def dataset(self, name: str) -> ds.Dataset:
        """The current version as a pyarrow dataset (an empty one with the catalog schema if missing)."""
        table = self._open(name)
        if table is None:
            return ds.dataset(get_table(name).schema.empty_table())
        return table.to_pyarrow_dataset()

    def read(
        self, name: str, filter: pc.Expression | None = None, columns: list[str] | None = None
    ) -> pa.Table:
        """Read the table (partition/file pruning by `filter`); an empty catalog-schema table if missing."""
        return self.dataset(name).to_table(filter=filter, columns=columns)

    def version(self, name: str) -> int | None:
        """The table's current version, or None if it does not exist."""
        table = self._open(name)
        return None if table is None else table.version()

    def versions(self) -> dict[str, int | None]:
        """Every catalog table's current version (None when missing), for change detection."""
        return {name: self.version(name) for name in CATALOG}

    def history(self, name: str, limit: int | None = None) -> list[dict[str, Any]]:
        """The table's commits, newest first ([] if missing)."""
        table = self._open(name)
        return [] if table is None else table.history(limit)

    # -- SQL ------------------------------------------------------------------------------------------

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A new DuckDB connection (close it when done) with every existing catalog table as a view."""
        return _sql.connect(self._datasets(CATALOG))

    def sql(self, query: str, params: _sql.Params = None) -> pa.Table:
        """Run a read-only DuckDB query over the tables with bound parameters; errors raise QueryError."""
        mentioned = [name for name in CATALOG if re.search(rf"\b{name}\b", query, re.IGNORECASE)]
        with _sql.connect(self._datasets(mentioned)) as con:
            return _sql.query(con, query, params, missing_table_hint=self._tables_hint)

    def _datasets(self, names: Iterable[str]) -> dict[str, _sql.Source]:
        sources: dict[str, _sql.Source] = {}
        for name in names:
            table = self._open(name)
            if table is not None:
                sources[name] = self._snapshot(name, table) or table.to_pyarrow_dataset()
        return sources

    def _snapshot(self, name: str, table: DeltaTable) -> _sql.ParquetSnapshot | None:
        """The live files for DuckDB's own Parquet reader, or None when only the pyarrow dataset reads it right."""
        if "://" in self.root and not self.root.startswith("file://"):
            return None  # DuckDB would need its httpfs extension and the credentials
        if table.protocol().min_reader_version != 1:
            return None  # deletion vectors or column mapping: files alone are not the table
        tdef = get_table(name)
        files = tuple(table.file_uris())
        if not files:
            return None
        parts = tdef.partition_by
        for f in files:
            segments = f.replace("\\", "/").split("/")
            for col in parts:
                hit = [seg for seg in segments if seg.startswith(f"{col}=")]
                if len(hit) != 1 or hit[0] == f"{col}=__HIVE_DEFAULT_PARTITION__":
                    return None  # a partition value is not (only) in the path, or is null
        types = {col: _sql.duckdb_type(tdef.schema.field(col).type) for col in parts}
        if None in types.values():
            return None
        schema = pa.schema(table.schema().to_arrow())
        if set(schema.names) ^ set(tdef.schema.names) or table.metadata().configuration.get(_EVOLVED) == "true":
            return None  # the schema changed over time: older data files lack columns (see `_append`)
        return _sql.ParquetSnapshot(files, tdef.schema, types)

    def _tables_hint(self) -> str:
        existing = [name for name in CATALOG if self.exists(name)]
        missing = [name for name in CATALOG if name not in existing]
        return f"Tables in the lake at {self.root}: {', '.join(existing) or '(none)'}" + (
            f"; catalog tables not written yet: {', '.join(missing)}" if missing else ""
        )


_EVOLVED = "tandem.schema_evolved"


def _append(table: DeltaTable, rows: pa.Table) -> None:
    """Append `rows` (catalog schema) to `table`, first adding the nullable columns the catalog gained since.

    The table is marked (`tandem.schema_evolved`) before its schema changes, so `Lake.sql` reads it through
    the pyarrow dataset, which gives older files' missing columns as nulls, and not with DuckDB's Parquet
    reader, which refuses files without a column of the view.
    """
    added = set(rows.schema.names) - {f.name for f in table.schema().fields}
    if added:
        if table.metadata().configuration.get(_EVOLVED) != "true":
            table.alter.set_table_properties({_EVOLVED: "true"}, raise_if_not_exists=False)
        logger.info("adding column(s) %s to %s", sorted(added), table.table_uri)
        write_deltalake(table, rows, mode="append", schema_mode="merge")
    else:
        write_deltalake(table, rows, mode="append")


def _partitions_of(rows: pa.Table, columns: Sequence[str]) -> set[tuple]:
    distinct = rows.select(list(columns)).group_by(list(columns)).aggregate([])
    return {tuple(r[c] for c in columns) for r in distinct.to_pylist()}


def _partition_text(value: Any) -> str:
    return value.isoformat() if hasattr(value, "isoformat") else str(value)


def _partition_predicate(table: TableDef, partition: Mapping[str, Any]) -> str:
    if not partition:
        raise ValueError(
            f"overwrite_partition of {table.name!r} needs a partition, e.g. {{'day': date(...)}}"
        )
    wrong = [column for column in partition if column not in table.partition_by]
    if wrong:
        raise ValueError(
            f"table {table.name!r} is partitioned by {list(table.partition_by)}, not by {wrong}; "
            "use replace_where for other predicates"
        )
    if any(value is None for value in partition.values()):
        raise ValueError(f"partition values of {table.name!r} cannot be None: {dict(partition)}")
    return " AND ".join(f"{column} = {sql_literal(value)}" for column, value in partition.items())


def _dedupe(rows: pa.Table, keys: Sequence[str], keep: str) -> pa.Table:
    """Keep one row per key (the first or the last), so a merge never sees two source rows for a target."""
    if rows.num_rows < 2:
        return rows
    index, how = "__lakehouse_row", "min" if keep == "first" else "max"
    numbered = rows.append_column(index, pa.array(range(rows.num_rows), pa.int64()))
    picked = numbered.group_by(list(keys), use_threads=False).aggregate([(index, how)])
    if picked.num_rows == rows.num_rows:
        return rows
    return rows.take(picked.sort_by(f"{index}_{how}").column(f"{index}_{how}"))


def compaction_target(files: Iterable[tuple[int | None, int]], *, settled_rows: int, append_rows: int,
                      target_size: int, min_target_size: int) -> int:
    """The `target_size` to compact a partition of `files` (rows, bytes) with, so that delta-rs, which
    rewrites every file smaller than it, leaves alone the files that hold `settled_rows` rows.

    A merged file's rows are as dense as the partition's rows get: the target is what `settled_rows`
    of them take in the densest file holding more than one append (`append_rows`, the most rows an
    append wrote), never below `min_target_size` nor above `target_size`, and never below twice the
    largest one-append file, so that no fresh write is ever too large to be merged. Until a merged
    file exists (or without row counts) it is `target_size`. So every file a compaction leaves alone is
    at least as large as `settled_rows` merged rows, and it rewrites only files smaller than that:
    both the files left and the rows rewritten each time stay bounded, however well rows compress."""
    files = [(rows, size) for rows, size in files if rows]
    merged = [size / rows for rows, size in files if rows > append_rows]
    if not merged:
        return target_size
    fresh = max((size for rows, size in files if rows <= append_rows), default=0)
    return int(min(target_size, max(min(merged) * settled_rows, 2 * fresh, min_target_size)))


class Appender:
    """Appends batches to one table through a `DeltaTable` it keeps open.

    `Lake.append` opens the table on every call, which replays its log; a long-lived writer
    such as the gateway's prediction log appends every second, so it keeps the handle and only
    reads the commits it has not seen (`update_incremental`). Not fork-safe: create it in the
    process that writes, and use it from one thread at a time.

    A commit costs delta-rs time in proportion to the table's live files (measured: ~36 ms with
    240 files, ~110 ms with 2,000), and a writer that appends every second adds 86,400 files a day.
    So with `compact_every=N` the appender rewrites the small files of the partitions it wrote into
    files of up to `target_size` bytes every N appends (files already that large are left alone,
    so the cost of one compaction stays bounded). A failed compaction is logged and retried at the
    next one; the rows are committed either way.

    Rows that compress well (a cache hit's answer recorded again and again) make files that stay far
    below `target_size` bytes however many rows they hold, and delta-rs picks the files to rewrite by
    size alone, so every compaction rewrote the whole day, each slower than the last. The target is
    therefore chosen per partition (`compaction_target`) so that a file holding `settled_rows` rows
    is left alone from then on.
    """

    def __init__(self, lake: Lake, name: str, *, compact_every: int = 0, target_size: int = 16 << 20,
                 settled_rows: int = 500_000, min_target_size: int = 1 << 20):
        self._lake = lake
        self._def = get_table(name)
        self._table: DeltaTable | None = None
        self.compact_every = compact_every
        self.target_size = target_size
        self.settled_rows = settled_rows
        self.min_target_size = min(min_target_size, target_size)
        self._largest_append = 0  # rows
        self._appends = 0
        self._touched: set[tuple] = set()

    def append(self, data: Data) -> int:
        """Append rows; returns the new table version."""
        rows = coerce(self._def, data)

        def op() -> int:
            if self._table is None:
                self._table = self._lake._open_or_create(self._def.name)
            else:
                self._table.update_incremental()
            if rows.num_rows:
                _append(self._table, rows)
            return self._table.version()

        version = retry_commit(op, f"append to {self._def.name!r}")
        if self.compact_every and self._def.partition_by and rows.num_rows:
            self._appends += 1
            self._largest_append = max(self._largest_append, rows.num_rows)
            self._touched.update(_partitions_of(rows, self._def.partition_by))
            if self._appends % self.compact_every == 0:
                self.compact()
        return version

    def targets_for(self, partitions: Iterable[tuple]) -> dict[tuple, int]:
        """The file size to compact each of `partitions` to (see `compaction_target`), from one read of
        the table's file list."""
        files = pa.table(self._table.get_add_actions(flatten=True))
        keys = zip(*(files[f"partition.{col}"].to_pylist() for col in self._def.partition_by))
        by_partition: dict[tuple, list[tuple[int | None, int]]] = {}
        for key, rows, size in zip(keys, files["num_records"].to_pylist(), files["size_bytes"].to_pylist()):
            by_partition.setdefault(key, []).append((rows, size))
        return {values: compaction_target(by_partition.get(values, ()), settled_rows=self.settled_rows,
                                          append_rows=self._largest_append, target_size=self.target_size,
                                          min_target_size=self.min_target_size)
                for values in partitions}

    def compact(self) -> None:
        """Compact the partitions written since the last compaction (errors are logged, not raised)."""
        touched, self._touched = self._touched, set()
        try:
            self._table.update_incremental()
            targets = self.targets_for(touched)
        except Exception:  # housekeeping: the appended rows are committed already
            self._touched |= touched
            logger.warning("compacting %s failed; will retry at the next compaction", self._def.name, exc_info=True)
            return
        for values in sorted(touched):
            filters = [(col, "=", _partition_text(v)) for col, v in zip(self._def.partition_by, values)]
            try:
                self._table.update_incremental()
                target = targets[values]
                metrics = self._table.optimize.compact(partition_filters=filters, target_size=target)
                logger.info("compacted %s %s: %s files -> %s (target %d bytes)", self._def.name, filters,
                            metrics.get("numFilesRemoved"), metrics.get("numFilesAdded"), target)
            except Exception:  # housekeeping: the appended rows are committed already
                self._touched.add(values)
                logger.warning("compacting %s %s failed; will retry at the next compaction",
                               self._def.name, filters, exc_info=True)

