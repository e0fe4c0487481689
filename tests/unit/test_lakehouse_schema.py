"""Unit tests of the lakehouse's pure parts: schema coercion, SQL literals, commit retries."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone

import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError, DeltaError

from lakehouse import CommitConflictError, QueryError, SchemaMismatchError, get_table, sql_literal
from lakehouse._coerce import check_partition, coerce
from lakehouse._retry import BASE_DELAY_S, MAX_DELAY_S, retry_commit
from lakehouse.lake import _dedupe

JOBS = get_table("jobs")
PREDICTIONS = get_table("predictions")
TS = datetime(2026, 1, 4, 12, 30, tzinfo=UTC)


def prediction(**overrides):
    row = {
        "request_id": "r1",
        "tenant": "acme",
        "model": "m",
        "status": "ok",
        "ts": TS,
        "day": date(2026, 1, 4),
    }
    return row | overrides


def arrow_predictions(**columns) -> pa.Table:
    base = {
        "request_id": pa.array(["r1", "r2"]),
        "tenant": pa.array(["acme", "acme"]),
        "model": pa.array(["m", "m"]),
        "status": pa.array(["ok", "error"]),
        "ts": pa.array([TS, TS], pa.timestamp("us", tz="UTC")),
        "day": pa.array([date(2026, 1, 4)] * 2, pa.date32()),
    }
    base.update(columns)
    return pa.table({k: v for k, v in base.items() if v is not None})


def test_rows_are_coerced_to_the_catalog_schema_with_missing_nullable_columns_null():
    out = coerce(PREDICTIONS, [prediction(latency_ms=3), prediction(request_id="r2", cached=True)])
    assert out.schema == PREDICTIONS.schema
    assert out.column("latency_ms").to_pylist() == [3.0, None]
    assert out.column("trace_id").null_count == 2


def test_naive_datetimes_in_rows_are_taken_as_utc():
    out = coerce(PREDICTIONS, [prediction(ts=datetime(2026, 1, 4, 12, 30))])
    assert out.column("ts").to_pylist() == [TS]


def test_other_timezones_are_converted_to_utc():
    paris = timezone(timedelta(hours=1))
    out = coerce(PREDICTIONS, [prediction(ts=datetime(2026, 1, 4, 13, 30, tzinfo=paris))])
    assert out.column("ts").to_pylist() == [TS]


def test_arrow_input_fills_missing_nullable_columns_and_keeps_catalog_order():
    data = arrow_predictions()
    out = coerce(PREDICTIONS, data.select(list(reversed(data.column_names))))
    assert out.schema == PREDICTIONS.schema
    assert out.column("error").null_count == 2


def test_record_batch_is_accepted():
    batch = arrow_predictions().to_batches()[0]
    assert coerce(PREDICTIONS, batch).num_rows == 2


def test_missing_required_column_names_table_column_and_expected_type():
    with pytest.raises(SchemaMismatchError) as err:
        coerce(PREDICTIONS, arrow_predictions(tenant=None))
    message = str(err.value)
    assert "'predictions'" in message and "'tenant'" in message and "missing" in message
    assert "string not null" in message


def test_extra_column_is_named():
    with pytest.raises(SchemaMismatchError, match=r"'predictions'.*unexpected column\(s\) 'tenantt'"):
        coerce(PREDICTIONS, arrow_predictions(tenantt=pa.array(["a", "b"])))


def test_extra_key_in_rows_is_named():
    with pytest.raises(SchemaMismatchError, match="unexpected column.*'latency'"):
        coerce(PREDICTIONS, [prediction(latency=3.0)])


def test_wrong_type_is_named_with_expected_and_actual():
    with pytest.raises(SchemaMismatchError) as err:
        coerce(PREDICTIONS, arrow_predictions(latency_ms=pa.array(["fast", "slow"])))
    assert "column 'latency_ms'" in str(err.value) and "expected double" in str(err.value)
    assert "got string" in str(err.value)


def test_numbers_are_not_silently_stringified():
    with pytest.raises(SchemaMismatchError, match="column 'model': expected string not null, got int64"):
        coerce(PREDICTIONS, arrow_predictions(model=pa.array([1, 2])))


def test_wrong_python_type_in_rows_is_named():
    with pytest.raises(SchemaMismatchError, match="'predictions', column 'latency_ms': expected double"):
        coerce(PREDICTIONS, [prediction(latency_ms="fast")])


def test_null_in_non_nullable_column_is_named():
    with pytest.raises(SchemaMismatchError, match="column 'status': 1 of 2 row"):
        coerce(PREDICTIONS, arrow_predictions(status=pa.array(["ok", None])))


def test_missing_required_key_in_rows_is_named():
    row = prediction()
    del row["model"]
    with pytest.raises(SchemaMismatchError, match="'predictions', column 'model'.*null or missing"):
        coerce(PREDICTIONS, [row])


def test_safe_integer_and_timestamp_casts_are_accepted():
    data = arrow_predictions(
        ts=pa.array([datetime(2026, 1, 4, 12, 30)] * 2, pa.timestamp("ns")),
        workflow_version=pa.array([1, 2], pa.int64()),
        latency_ms=pa.array([1, 2], pa.int16()),
        model=pa.array(["m", "m"]).dictionary_encode(),
    )
    out = coerce(PREDICTIONS, data)
    assert out.schema == PREDICTIONS.schema
    assert out.column("ts").to_pylist() == [TS, TS]


def test_lossy_casts_are_refused():
    with pytest.raises(SchemaMismatchError, match="column 'workflow_version'.*cannot be cast safely"):
        coerce(PREDICTIONS, arrow_predictions(workflow_version=pa.array([2**40, 1], pa.int64())))
    nanos = pa.array([1, 2], pa.timestamp("ns"))
    with pytest.raises(SchemaMismatchError, match="column 'ts'.*cannot be cast safely"):
        coerce(PREDICTIONS, arrow_predictions(ts=nanos))


REQUESTS = get_table("requests")


def request_row(**overrides):
    row = {"request_id": "r1", "tenant": "acme", "day": date(2026, 1, 4), "ts": TS, "kind": "sync",
           "status": "ok", "pii_policy": "keep"}
    return row | overrides


@pytest.mark.parametrize("embeddings", [
    [[[0.1, 0.2, 0.3], [1.0, -2.5, 3]]],  # two vectors, an int among the floats
    [None, [], [[]], [[0.5]]],  # null, no vectors, an empty vector
    [[(0.25, 0.5)]],  # a tuple
    [[[float("nan"), float("inf"), 1e40]]],  # not finite, past float32's range
])
def test_vector_columns_are_packed_exactly_as_arrow_converts_them(embeddings):
    out = coerce(REQUESTS, [request_row(request_id=str(i), embeddings=e) for i, e in enumerate(embeddings)])
    expected = pa.array(embeddings, type=REQUESTS.schema.field("embeddings").type)
    got = out.column("embeddings").combine_chunks()
    assert got.type == expected.type and repr(got.to_pylist()) == repr(expected.to_pylist())  # repr: nan == nan


@pytest.mark.parametrize("bad", [[["0.5"]], [[0.5, None]], [0.5], "abc"])
def test_a_vector_that_does_not_pack_falls_back_to_arrow(bad):
    typ = REQUESTS.schema.field("embeddings").type
    try:
        expected = pa.array([bad], type=typ)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        with pytest.raises(SchemaMismatchError, match="column 'embeddings'"):
            coerce(REQUESTS, [request_row(embeddings=bad)])
    else:  # a null element inside a vector is valid: it is stored as Arrow stores it
        assert coerce(REQUESTS, [request_row(embeddings=bad)]).column("embeddings").combine_chunks().equals(expected)


def test_unsupported_input_type_says_what_to_pass():
    with pytest.raises(TypeError, match="list of dicts"):
        coerce(JOBS, "not rows")


def test_rows_outside_the_partition_are_refused_with_counts():
    data = coerce(PREDICTIONS, [prediction(), prediction(day=date(2026, 1, 5))])
    with pytest.raises(SchemaMismatchError, match="column 'day': 1 of 2 row"):
        check_partition(PREDICTIONS, data, {"day": date(2026, 1, 4)})
    check_partition(PREDICTIONS, data.slice(0, 1), {"day": date(2026, 1, 4)})


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("acme", "'acme'"),
        ("o'brien", "'o''brien'"),
        ("x\\'; DROP", "'x\\''; DROP'"),
        (None, "NULL"),
        (True, "TRUE"),
        (42, "42"),
        (1.5, "1.5"),
        (date(2026, 1, 4), "'2026-01-04'"),
        (datetime(2026, 1, 4, 13, 30, tzinfo=timezone(timedelta(hours=1))), "'2026-01-04T12:30:00.000000Z'"),
        (datetime(2026, 1, 4, 12, 30), "'2026-01-04T12:30:00.000000Z'"),
    ],
)
def test_sql_literal_quotes_values(value, literal):
    assert sql_literal(value) == literal


@pytest.mark.parametrize("value", [float("nan"), "a\x00b", object()])
def test_sql_literal_refuses_values_it_cannot_quote_safely(value):
    with pytest.raises((ValueError, TypeError)):
        sql_literal(value)


def test_dedupe_keeps_first_or_last_row_per_key():
    rows = pa.table({"k": ["a", "b", "a"], "v": [1, 2, 3]})
    assert _dedupe(rows, ["k"], "first").to_pylist() == [{"k": "a", "v": 1}, {"k": "b", "v": 2}]
    assert _dedupe(rows, ["k"], "last").to_pylist() == [{"k": "b", "v": 2}, {"k": "a", "v": 3}]


def test_commit_conflicts_are_retried_with_bounded_jittered_sleeps():
    sleeps: list[float] = []
    calls = iter([CommitFailedError("conflict")] * 3 + ["done"])

    def op():
        outcome = next(calls)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    assert retry_commit(op, "append to 'jobs'", sleep=sleeps.append) == "done"
    assert len(sleeps) == 3
    assert all(0 <= s <= min(MAX_DELAY_S, BASE_DELAY_S * 2**i) for i, s in enumerate(sleeps))


def test_commit_conflicts_give_up_after_the_last_try():
    calls = []

    def op():
        calls.append(1)
        raise CommitFailedError("Failed to commit transaction: 15")

    with pytest.raises(CommitConflictError, match="append to 'jobs'.*after 4 tries"):
        retry_commit(op, "append to 'jobs'", tries=4, sleep=lambda s: None)
    assert len(calls) == 4


def test_other_delta_errors_are_mapped_without_retry():
    calls = []

    def op():
        calls.append(1)
        raise DeltaError("Generic DeltaTable error: Schema error: No field named zzz.\n   0: <unknown>")

    with pytest.raises(QueryError, match="predicate 'zzz = 1' failed: .*No field named zzz\\.$"):
        retry_commit(op, "delete from 'jobs'", predicate="zzz = 1", sleep=lambda s: None)
    assert len(calls) == 1
