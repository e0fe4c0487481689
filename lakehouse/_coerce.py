"""Coerce written data to a catalog table's Arrow schema, naming the column that does not fit."""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.catalog import TableDef
from lakehouse.errors import SchemaMismatchError

Data = pa.Table | pa.RecordBatch | Sequence[Mapping[str, Any]]

_CONVERSION_ERRORS = (
    pa.ArrowInvalid,
    pa.ArrowTypeError,
    pa.ArrowNotImplementedError,
    TypeError,
    ValueError,
    OverflowError,
)

# Casts are allowed only inside a family (plus integer -> float): int -> string or string -> int
# would "work" in Arrow and silently store the wrong thing.
_FAMILIES: tuple[tuple[str, Callable[[pa.DataType], bool]], ...] = (
    ("string", lambda t: pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)),
    ("integer", pa.types.is_integer),
    ("float", pa.types.is_floating),
    ("bool", pa.types.is_boolean),
    ("timestamp", pa.types.is_timestamp),
    ("date", pa.types.is_date),
)


def coerce(table: TableDef, data: Data) -> pa.Table:
    """Return `data` as a pa.Table with exactly `table.schema`, or raise SchemaMismatchError."""
    if isinstance(data, pa.RecordBatch):
        data = pa.Table.from_batches([data])
    if isinstance(data, pa.Table):
        out = _from_arrow(table, data)
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        out = _from_rows(table, data)
    else:
        raise TypeError(
            f"cannot write {type(data).__name__} to table {table.name!r}; "
            "pass a pyarrow.Table, a pyarrow.RecordBatch or a list of dicts"
        )
    _check_not_null(table, out)
    return out


def _where(table: TableDef, column: str) -> str:
    return f"table {table.name!r}, column {column!r}"


def _expected(field: pa.Field) -> str:
    return f"{field.type}{'' if field.nullable else ' not null'}"


def _check_columns(table: TableDef, names: Sequence[str]) -> None:
    extra = sorted(set(names) - set(table.schema.names))
    if extra:
        raise SchemaMismatchError(
            f"table {table.name!r}: unexpected column(s) {', '.join(map(repr, extra))}; "
            f"expected only: {', '.join(table.schema.names)}"
        )


def _from_rows(table: TableDef, rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    for i, row in enumerate(rows):
        if type(row) is not dict and not isinstance(row, Mapping):  # (the ABC check costs ~0.5 us a row)
            raise TypeError(f"row {i} for table {table.name!r} is a {type(row).__name__}, expected a dict")
    _check_columns(table, list({key: None for row in rows for key in row}))
    arrays = []
    for field in table.schema:
        values = [row.get(field.name) for row in rows]
        if (fast := _float_lists(values, field.type)) is not None:
            arrays.append(fast)
            continue
        try:
            arrays.append(pa.array(values, type=field.type))
        except _CONVERSION_ERRORS as exc:
            raise SchemaMismatchError(
                f"{_where(table, field.name)}: expected {_expected(field)}, got values that do not convert: {exc}"
            ) from exc
    return pa.Table.from_arrays(arrays, schema=table.schema)


_PACK_CODES = {pa.float32(): "f", pa.float64(): "d"}


def _float_lists(values: list, typ: pa.DataType) -> pa.Array | None:
    """`values` as a list<float> or list<list<float>> array, packed with `struct` (3-4x faster than
    `pa.array`, which converts float by float: an embedding vector's 384 took ~14 us a row); None when
    `typ` is another type or a value does not pack (a null element, a string), so `pa.array` converts
    it and names what does not fit."""
    if not pa.types.is_list(typ):
        return None
    inner = typ.value_type
    nested = pa.types.is_list(inner)
    code = _PACK_CODES.get(inner.value_type if nested else inner)
    if code is None:
        return None
    chunks: list[bytes] = []
    ends = [0]  # float offset after each vector
    value_ends = [0]  # after each value: vectors so far (nested) or floats so far (flat)
    mask = []
    try:
        for value in values:
            mask.append(value is None)
            for vector in (() if value is None else value if nested else (value,)):
                chunks.append(struct.pack(f"{len(vector)}{code}", *vector))
                ends.append(ends[-1] + len(vector))
            value_ends.append(len(ends) - 1 if nested else ends[-1])
    except (struct.error, TypeError, OverflowError):
        return None
    flat = pa.Array.from_buffers(inner.value_type if nested else inner, ends[-1],
                                 [None, pa.py_buffer(b"".join(chunks))])
    if nested:
        flat = pa.ListArray.from_arrays(pa.array(ends, pa.int32()), flat, type=inner)
    return pa.ListArray.from_arrays(pa.array(value_ends, pa.int32()), flat, type=typ, mask=pa.array(mask, pa.bool_()))


def _from_arrow(table: TableDef, data: pa.Table) -> pa.Table:
    names = data.column_names
    duplicated = sorted({n for n in names if names.count(n) > 1})
    if duplicated:
        raise SchemaMismatchError(
            f"table {table.name!r}: duplicated column(s) {', '.join(map(repr, duplicated))}"
        )
    _check_columns(table, names)
    columns = []
    for field in table.schema:
        if field.name in names:
            columns.append(_cast(table, field, data.column(field.name)))
        elif field.nullable:
            columns.append(pa.nulls(data.num_rows, field.type))
        else:
            raise SchemaMismatchError(
                f"{_where(table, field.name)}: required column is missing (expected {_expected(field)})"
            )
    return pa.Table.from_arrays(columns, schema=table.schema)


def _family(typ: pa.DataType) -> str:
    if pa.types.is_dictionary(typ):
        return _family(typ.value_type)
    return next((name for name, matches in _FAMILIES if matches(typ)), str(typ))


def _cast(table: TableDef, field: pa.Field, column: pa.ChunkedArray) -> pa.ChunkedArray:
    source = column.type
    if source == field.type:
        return column
    src, dst = _family(source), _family(field.type)
    if not (pa.types.is_null(source) or src == dst or (src, dst) == ("integer", "float")):
        raise SchemaMismatchError(f"{_where(table, field.name)}: expected {_expected(field)}, got {source}")
    try:
        return column.cast(field.type, safe=True)
    except _CONVERSION_ERRORS as exc:
        raise SchemaMismatchError(
            f"{_where(table, field.name)}: {source} cannot be cast safely to {field.type}: {exc}"
        ) from exc


def _check_not_null(table: TableDef, data: pa.Table) -> None:
    for field in table.schema:
        nulls = data.column(field.name).null_count
        if nulls and not field.nullable:
            raise SchemaMismatchError(
                f"{_where(table, field.name)}: {nulls} of {data.num_rows} row(s) are null or missing "
                f"(expected {_expected(field)})"
            )


def check_partition(table: TableDef, data: pa.Table, partition: Mapping[str, Any]) -> None:
    """Raise SchemaMismatchError unless every row of `data` belongs to `partition`."""
    for column, value in partition.items():
        field = table.schema.field(column)
        try:
            scalar = pa.scalar(value, type=field.type)
        except _CONVERSION_ERRORS as exc:
            raise ValueError(
                f"{_where(table, column)}: partition value {value!r} is not a {field.type}"
            ) from exc
        matches = pc.fill_null(pc.equal(data.column(column), scalar), False)
        outside = len(data) - pc.sum(matches).as_py() if len(data) else 0
        if outside:
            raise SchemaMismatchError(
                f"{_where(table, column)}: {outside} of {len(data)} row(s) are outside the partition being "
                f"overwritten (expected {column} = {value!r} in every row)"
            )
