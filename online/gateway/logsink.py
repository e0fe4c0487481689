"""A buffered, never-blocking sink for rows of a Delta table (`predictions`; `requests` through the record).

`log(row)` appends to a deque and returns; a background task hands batches of up to `max_rows`
to `writer` in a worker thread, every `flush_interval_s` or as soon as a batch is full. A failed
write keeps its rows (in order) at the head of the buffer and is retried with exponential
backoff. Past `max_buffer` rows, new rows are dropped and counted rather than growing memory
without bound. Call `log` from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

__all__ = ["PredictionLog", "Writer", "prediction_row"]

logger = logging.getLogger(__name__)

Writer = Callable[[list[dict]], None]


def prediction_row(
    *,
    request_id: str,
    tenant: str,
    model: str,
    status: str,
    trace_id: str | None = None,
    workflow: str | None = None,
    workflow_version: int | None = None,
    step: str | None = None,
    version: str | None = None,
    arm: str | None = None,
    input_hash: str | None = None,
    output_summary: str | None = None,
    latency_ms: float | None = None,
    error: str | None = None,
    error_type: str | None = None,
    cached: bool | None = None,
    ts: datetime | None = None,
) -> dict[str, Any]:
    """A row of the `predictions` table (see `lakehouse.catalog`), `ts` defaulting to now (UTC).

    `status` is ok | error | fallback | skipped; an `error` row names its `error_type`
    (timeout, upstream_error, unavailable, circuit_open, rejected, deadline, cancelled).
    """
    ts = ts or datetime.now(UTC)
    return {
        "request_id": request_id,
        "trace_id": trace_id,
        "tenant": tenant,
        "workflow": workflow,
        "workflow_version": workflow_version,
        "step": step,
        "model": model,
        "version": version,
        "arm": arm,
        "input_hash": input_hash,
        "output_summary": output_summary,
        "latency_ms": latency_ms,
        "status": status,
        "error": error,
        "cached": cached,
        "ts": ts,
        "day": ts.astimezone(UTC).date(),
        "error_type": error_type,
    }


class PredictionLog:
    """Buffers rows and writes them in batches off the event loop; see the module docstring."""

    def __init__(
        self,
        writer: Writer,
        max_rows: int = 500,
        flush_interval_s: float = 1.0,
        max_buffer: int = 100_000,
        *,
        retry_backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
        name: str = "prediction log",
    ):
        if max_rows < 1 or max_buffer < max_rows:
            raise ValueError(f"need 1 <= max_rows <= max_buffer, got max_rows={max_rows}, max_buffer={max_buffer}")
        if flush_interval_s <= 0 or retry_backoff_s <= 0 or max_backoff_s < retry_backoff_s:
            raise ValueError("flush_interval_s and retry_backoff_s must be > 0, max_backoff_s >= retry_backoff_s")
        self._writer = writer
        self.name = name  # in log messages
        self.max_rows = max_rows
        self.flush_interval_s = flush_interval_s
        self.max_buffer = max_buffer
        self.retry_backoff_s = retry_backoff_s
        self.max_backoff_s = max_backoff_s
        self._clock = clock
        self._buffer: deque[dict] = deque()
        self._write_lock = asyncio.Lock()
        self._batch_ready = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.written = 0
        self.dropped = 0
        self.flush_failures = 0

    @property
    def depth(self) -> int:
        """Rows waiting to be written (including a batch being written now)."""
        return len(self._buffer)

    def log(self, row: Any) -> bool:
        """Queue one row; O(1), never blocks, never raises (drops and counts when full: False)."""
        if len(self._buffer) >= self.max_buffer:
            self.dropped += 1
            return False
        self._buffer.append(row)
        if len(self._buffer) >= self.max_rows:
            self._batch_ready.set()
        return True

    def start(self) -> None:
        """Start the background flusher on the running loop (a no-op if it is running)."""
        if self._task is None or self._task.done():
            self._stopping.clear()
            self._task = asyncio.get_running_loop().create_task(self._run(), name=f"{self.name}-flusher")

    async def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the flusher and write everything buffered, retrying for up to `timeout_s`.

        Rows still unwritten after that are dropped (counted in `dropped`) so shutdown ends.
        """
        self._stopping.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        deadline = self._clock() + timeout_s
        failures = 0
        while self._buffer:
            if await self.flush():
                continue
            failures += 1
            remaining = deadline - self._clock()
            if remaining <= 0:
                lost = len(self._buffer)
                self._buffer.clear()
                self.dropped += lost
                logger.error("%s: dropped %d rows still unwritten at shutdown", self.name, lost)
                return
            await asyncio.sleep(min(self._backoff(failures), remaining))

    async def flush(self) -> bool:
        """Write everything buffered now, batch by batch; False (rows kept) if a write failed."""
        return await self._flush(min_rows=1)

    async def _flush(self, min_rows: int, *, drain: bool = True) -> bool:
        """Write batches while at least `min_rows` are buffered.

        With `drain=False` only the rows buffered when it starts are written: rows logged during a
        slow write wait for the next flush instead of chasing the tail with a commit per write.
        """
        budget = None if drain else len(self._buffer)
        while len(self._buffer) >= min_rows and (budget is None or budget > 0):
            n = min(self.max_rows, len(self._buffer))
            if not await self._write_batch():
                return False
            if budget is not None:
                budget -= n
        return True

    async def _write_batch(self) -> bool:
        async with self._write_lock:
            n = min(self.max_rows, len(self._buffer))
            if n == 0:
                return True
            batch = list(itertools.islice(self._buffer, n))  # log() only appends on the right
            try:
                await asyncio.to_thread(self._writer, batch)
            except Exception:
                self.flush_failures += 1
                logger.warning(
                    "%s: writing %d rows failed (%d rows buffered); will retry",
                    self.name, n, len(self._buffer), exc_info=True,
                )
                return False
            for _ in range(n):
                self._buffer.popleft()
            self.written += n
            return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        failures = 0
        due = loop.time() + self.flush_interval_s  # when the buffer is next written whatever its size
        while not self._stopping.is_set():
            if failures:
                await self._wait(self._backoff(failures), self._stopping)
            else:
                await self._wait(max(0.0, due - loop.time()), self._batch_ready, self._stopping)
            self._batch_ready.clear()
            if self._stopping.is_set():
                return  # stop() drains
            timed = failures > 0 or loop.time() >= due
            # Woken by a full batch: write only full batches, so the table gets fewer, larger files.
            ok = await self._flush(min_rows=1 if timed else self.max_rows, drain=False)
            failures = 0 if ok else failures + 1
            if timed and ok:
                due = loop.time() + self.flush_interval_s

    def _backoff(self, failures: int) -> float:
        return min(self.max_backoff_s, self.retry_backoff_s * 2 ** (failures - 1))

    @staticmethod
    async def _wait(timeout: float, *events: asyncio.Event) -> None:
        waiters = [asyncio.ensure_future(e.wait()) for e in events]
        try:
            await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
