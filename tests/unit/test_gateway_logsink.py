"""Prediction-log sink: flush by size and time, retry in order, drops when full, drain on stop."""

from __future__ import annotations

import asyncio
import threading
from datetime import UTC, datetime

import pytest

from lakehouse.catalog import get_table
from online.gateway.logsink import PredictionLog, prediction_row


class Writer:
    """Records batches; fails its first `fail` calls."""

    def __init__(self, fail: int = 0):
        self.batches: list[list[dict]] = []
        self.fail = fail
        self.calls = 0
        self.threads: set[int] = set()

    def __call__(self, rows: list[dict]) -> None:
        self.calls += 1
        self.threads.add(threading.get_ident())
        if self.calls <= self.fail:
            raise OSError("lake unavailable")
        self.batches.append(list(rows))

    @property
    def rows(self) -> list[dict]:
        return [r for b in self.batches for r in b]


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


async def until(cond, timeout: float = 2.0) -> None:
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.002)


def rows(n: int, start: int = 0) -> list[dict]:
    return [{"i": i} for i in range(start, start + n)]


def test_prediction_row_has_exactly_the_predictions_columns():
    ts = datetime(2026, 3, 1, 23, 30, tzinfo=UTC)
    row = prediction_row(request_id="r", tenant="t", model="m", status="ok", ts=ts)
    assert list(row) == get_table("predictions").schema.names
    assert row["day"] == ts.date()


def test_flush_by_size_without_waiting_for_the_interval():
    async def main():
        w = Writer()
        sink = PredictionLog(w, max_rows=10, flush_interval_s=60)
        sink.start()
        for r in rows(25):
            sink.log(r)
        await until(lambda: sink.written >= 20)
        assert [len(b) for b in w.batches][:2] == [10, 10]
        assert sink.depth == 5  # the partial batch waits for the interval
        await sink.stop()
        assert w.rows == rows(25)

    run(main())


def test_flush_by_time_writes_a_partial_batch():
    async def main():
        w = Writer()
        sink = PredictionLog(w, max_rows=100, flush_interval_s=0.02)
        sink.start()
        sink.log({"i": 0})
        await until(lambda: sink.depth == 0)
        assert w.rows == [{"i": 0}]
        await sink.stop()

    run(main())


def test_a_timed_flush_writes_what_was_buffered_not_rows_logged_during_its_write():
    class SlowWriter(Writer):
        def __call__(self, rows):
            super().__call__(rows)
            threading.Event().wait(0.05)

    async def main():
        w = SlowWriter()
        sink = PredictionLog(w, max_rows=1000, flush_interval_s=0.3)
        sink.start()
        started = asyncio.get_running_loop().time()
        i = 0
        while asyncio.get_running_loop().time() - started < 1.0:  # steady traffic for about 3 intervals
            sink.log({"i": i})
            i += 1
            await asyncio.sleep(0.002)
        await sink.stop()
        assert w.rows == rows(i)
        # one commit per interval (plus the final drain), not one per slow write
        assert len(w.batches) <= 5, [len(b) for b in w.batches]

    run(main())


def test_the_writer_runs_off_the_event_loop_thread():
    async def main():
        w = Writer()
        sink = PredictionLog(w, max_rows=1)
        sink.log({"i": 0})
        await sink.flush()
        assert threading.get_ident() not in w.threads

    run(main())


def test_a_failed_flush_keeps_rows_in_order_and_is_counted():
    async def main():
        w = Writer(fail=1)
        sink = PredictionLog(w, max_rows=3)
        for r in rows(5):
            sink.log(r)
        assert await sink.flush() is False
        assert sink.flush_failures == 1 and sink.depth == 5
        sink.log({"i": 5})
        assert await sink.flush() is True
        assert w.rows == rows(6)
        assert sink.written == 6 and sink.depth == 0

    run(main())


def test_the_background_flusher_retries_with_backoff_until_the_writer_recovers():
    async def main():
        w = Writer(fail=3)
        sink = PredictionLog(w, max_rows=2, flush_interval_s=0.005, retry_backoff_s=0.005, max_backoff_s=0.02)
        sink.start()
        for r in rows(5):
            sink.log(r)
        await until(lambda: sink.depth == 0)
        assert sink.flush_failures == 3
        assert w.rows == rows(5)
        await sink.stop()

    run(main())


def test_log_drops_and_counts_past_max_buffer_and_never_raises():
    w = Writer()
    sink = PredictionLog(w, max_rows=2, max_buffer=4)
    for r in rows(7):
        sink.log(r)
    assert sink.depth == 4
    assert sink.dropped == 3


def test_stop_drains_everything_buffered():
    async def main():
        w = Writer()
        sink = PredictionLog(w, max_rows=4, flush_interval_s=60)
        sink.start()
        for r in rows(11):
            sink.log(r)
        await sink.stop()
        assert w.rows == rows(11)
        assert sink.depth == 0

    run(main())


def test_stop_retries_a_failing_writer_then_gives_up_at_its_timeout():
    async def main():
        clock = [0.0]

        def failing(batch: list[dict]) -> None:
            clock[0] += 0.4  # each attempt "takes" 0.4 s of the fake clock
            raise OSError("down")

        sink = PredictionLog(failing, max_rows=2, retry_backoff_s=0.001, clock=lambda: clock[0])
        for r in rows(3):
            sink.log(r)
        await sink.stop(timeout_s=1.0)
        assert sink.depth == 0
        assert sink.dropped == 3
        assert sink.flush_failures == 3  # at 0.4, 0.8, 1.2 s: the last one is past the deadline

    run(main())


def test_stop_retries_until_a_flaky_writer_succeeds():
    async def main():
        w = Writer(fail=2)
        sink = PredictionLog(w, max_rows=10, retry_backoff_s=0.001)
        sink.start()
        for r in rows(3):
            sink.log(r)
        await sink.stop()
        assert w.rows == rows(3) and sink.dropped == 0

    run(main())


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        PredictionLog(Writer(), max_rows=0)
    with pytest.raises(ValueError):
        PredictionLog(Writer(), max_rows=10, max_buffer=5)


def test_the_log_appends_to_a_predictions_table_created_before_error_type(tmp_path):
    """A lake written by an older gateway (no `error_type` column) takes the new rows; old rows read as null."""
    from datetime import date

    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    from lakehouse import Lake

    lake = Lake(str(tmp_path / "lake"))
    old_schema = pa.schema([f for f in get_table("predictions").schema if f.name != "error_type"])
    DeltaTable.create(lake.uri("predictions"), old_schema, partition_by=["day"])
    ts = datetime(2026, 3, 1, 12, tzinfo=UTC)
    old_row = {k: v for k, v in prediction_row(request_id="old", tenant="t", model="m", status="ok", ts=ts).items()
               if k != "error_type"}
    write_deltalake(lake.uri("predictions"), pa.Table.from_pylist([old_row], schema=old_schema), mode="append")

    lake.append("predictions", [prediction_row(request_id="new", tenant="t", model="m", status="error",
                                               error_type="timeout", ts=ts)])
    lake.appender("predictions").append([prediction_row(request_id="newer", tenant="t", model="m",
                                                        status="error", error_type="circuit_open", ts=ts)])

    rows = {r["request_id"]: r for r in lake.read("predictions").to_pylist()}
    assert {k: rows[k]["error_type"] for k in rows} == {"old": None, "new": "timeout", "newer": "circuit_open"}
    assert rows["old"]["day"] == date(2026, 3, 1)
    by_sql = lake.sql("SELECT request_id, error_type FROM predictions ORDER BY request_id").to_pylist()
    assert by_sql == [{"request_id": "new", "error_type": "timeout"}, {"request_id": "newer", "error_type": "circuit_open"},
                      {"request_id": "old", "error_type": None}]
