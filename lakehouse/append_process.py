"""Appends from a child process: the caller pays for pickling a batch, the child for converting and writing it.

A long-lived writer in a busy Python process (the gateway's request record and prediction log) spent
most of its time turning rows into Arrow and committing them, holding the GIL that serves requests:
on cache hits, half the gateway's time per request and a p99 of ~56 ms against ~7 ms without them.
`AppendProcess` moves that work into one child process per writer: `append(table, rows, build=...)`
pickles the batch (plain values and bytes: ~3 us a request note) in slices of `_SLICE_ROWS` rows into
a buffer it keeps, sends it down a pipe and blocks, GIL released, until the child has committed it.
(Pickled in one call, 2000 request notes held the GIL for 15-37 ms, and the gateway's event loop
stood still that long; in slices a hold lasts ~1 ms and the loop waits at most the interpreter's 5-ms
switch interval.)
`build`, a picklable function, runs in the child first to turn what was sent into rows.

The child is started by `start()` or the first append, and again after it died (the failed batch raises
`AppendProcessError`; the caller keeps and retries it). It keeps one `Appender` per table, so it only
reads new commits between appends and compacts as `compact_every` says. It exits when its pipe closes,
so it never outlives the process that started it. One batch at a time: concurrent callers queue.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import pickle
import signal
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, BinaryIO

from lakehouse.errors import LakehouseError
from lakehouse.lake import Appender, Lake

__all__ = ["AppendProcess", "AppendProcessError", "LocalAppends"]

logger = logging.getLogger(__name__)

_HEADER = struct.Struct("<Q")  # the length of each pickled message
_COLLECT_EVERY = 100  # batches between the child's garbage collections
_SLICE_ROWS = 200  # rows pickled in one call (each call holds the GIL throughout)
_SCRATCH_KEEP = 64 << 20  # bytes: a batch pickled larger than this does not keep its buffer


class AppendProcessError(LakehouseError):
    """The child could not append a batch (its error, or it died); the batch was not written."""


def _send(pipe: BinaryIO, message: Any) -> None:
    _write_frame(pipe, pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL))
    pipe.flush()


def _send_rows(pipe: BinaryIO, head: tuple, rows: list, scratch: io.BytesIO) -> None:
    """`head` plus the number of slices, then `rows` a slice (of `_SLICE_ROWS`) per frame, each pickled
    by its own call, so another thread can take the GIL between them. All are pickled before anything
    is written: a row that does not pickle raises here and leaves the pipe as it was.

    The slices are pickled into `scratch`, a buffer kept from batch to batch: `pickle.dumps` builds
    each slice in a new bytes object, as large as the slice (1.5 MB for 200 request notes), and the
    fresh pages cost as much as the pickling (~6 vs ~3 us a note)."""
    scratch.seek(0)
    ends = []
    for start in range(0, len(rows), _SLICE_ROWS):
        pickle.Pickler(scratch, protocol=pickle.HIGHEST_PROTOCOL).dump(rows[start:start + _SLICE_ROWS])
        ends.append(scratch.tell())
    _write_frame(pipe, pickle.dumps((*head, len(ends)), protocol=pickle.HIGHEST_PROTOCOL))
    with scratch.getbuffer() as view:
        begin = 0
        for end in ends:
            _write_frame(pipe, view[begin:end])
            begin = end
    pipe.flush()


def _receive_rows(pipe: BinaryIO, slices: int) -> list:
    """The rows of `slices` frames, all read before any is unpickled: a slice that fails to unpickle
    must not leave the rest of its batch in the pipe to be read as the next message."""
    frames = [_read_frame(pipe) for _ in range(slices)]
    return [row for frame in frames for row in pickle.loads(frame)]


def _write_frame(pipe: BinaryIO, data: bytes | memoryview) -> None:
    pipe.write(_HEADER.pack(len(data)))
    pipe.write(data)


def _receive(pipe: BinaryIO) -> Any:
    return pickle.loads(_read_frame(pipe))


def _read_frame(pipe: BinaryIO) -> bytes:
    header = pipe.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError
    (size,) = _HEADER.unpack(header)
    data = pipe.read(size)
    if len(data) < size:
        raise EOFError
    return data


class LocalAppends:
    """`AppendProcess`'s interface, appending in the calling thread (one `Appender` per table)."""

    pid = None

    def __init__(self, lake: Lake, *, compact_every: int = 0):
        self.lake = lake
        self.compact_every = compact_every
        self._appenders: dict[str, Appender] = {}
        self._lock = threading.Lock()

    def start(self) -> None:
        """Nothing to start: appends run in the caller's thread."""

    def append(self, table: str, rows: list, *, build: Callable[[list], list[dict]] | None = None) -> int:
        with self._lock:
            if table not in self._appenders:
                self._appenders[table] = self.lake.appender(table, compact_every=self.compact_every)
            return self._appenders[table].append(build(rows) if build is not None else rows)

    def close(self, timeout_s: float = 10.0) -> None:
        self._appenders.clear()


class AppendProcess:
    """Appends to `lake`'s tables from a child process; see the module docstring."""

    def __init__(self, lake: Lake, *, compact_every: int = 0, name: str = "lake writer"):
        self.lake = lake
        self.compact_every = compact_every
        self.name = name
        self._proc: subprocess.Popen | None = None
        self._lock = threading.Lock()
        self._scratch = io.BytesIO()  # where batches are pickled (see `_send_rows`); used under the lock

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def start(self) -> None:
        """Start the child now rather than at the first append (its imports take a second or two of CPU)."""
        with self._lock:
            self._running()

    def append(self, table: str, rows: list, *, build: Callable[[list], list[dict]] | None = None) -> int:
        """Append `rows` (or `build(rows)`, computed in the child) to `table`; returns the new table version.

        Blocks until the child has committed them. Raises `AppendProcessError` if it could not."""
        with self._lock:
            proc = self._running()
            try:
                try:
                    _send_rows(proc.stdin, ("append", table, build), rows, self._scratch)
                finally:
                    if self._scratch.tell() > _SCRATCH_KEEP:  # a rare large batch: its memory is not kept
                        self._scratch = io.BytesIO()
                reply = _receive(proc.stdout)
            except (BrokenPipeError, EOFError, OSError):
                code = self._reap()
                raise AppendProcessError(
                    f"{self.name}: the writer process exited (code {code}) before writing {len(rows)} rows "
                    f"to {table!r}; they are kept and a new process is started on the next write") from None
        status, value = reply
        if status != "ok":
            raise AppendProcessError(f"{self.name}: appending {len(rows)} rows to {table!r} failed: {value}")
        return value

    def close(self, timeout_s: float = 10.0) -> None:
        """Let the child finish and exit (it has nothing buffered: every append waited for its commit)."""
        with self._lock:
            proc, self._proc = self._proc, None
        if proc is None:
            return
        for pipe in (proc.stdin, proc.stdout):
            with contextlib.suppress(OSError):  # a child already gone: its pipe is broken
                pipe.close()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _running(self) -> subprocess.Popen:
        if self._proc is not None and self._proc.poll() is None:
            return self._proc
        if self._proc is not None:
            self._reap()
        proc = subprocess.Popen([sys.executable, "-m", "lakehouse.append_process"], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, close_fds=True)
        self._proc = proc
        try:
            _send(proc.stdin, ("open", self.lake, self.compact_every))
            status, value = _receive(proc.stdout)
        except (BrokenPipeError, EOFError, OSError):
            code = self._reap()
            raise AppendProcessError(f"{self.name}: the writer process exited at start (code {code}); "
                                     "see its error above") from None
        if status != "ok":
            self._reap()
            raise AppendProcessError(f"{self.name}: the writer process could not start: {value}")
        logger.info("%s: writer process %d started", self.name, proc.pid)
        return proc

    def _reap(self) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        proc.kill()
        return proc.wait()


def _serve(inbox: BinaryIO, outbox: BinaryIO) -> None:
    """The child's loop: open the lake, then append batch after batch until the pipe closes.

    The cyclic collector is off: a batch is thousands of short-lived objects without cycles, and with
    it on, unpickling and converting them set off collections that took 20-30% of this process's time.
    It runs once every `_COLLECT_EVERY` batches and after a failure (a traceback holds cycles), when no
    batch is alive, over a heap frozen once the lake was opened."""
    gc.disable()
    lake: Lake | None = None
    compact_every = 0
    appenders: dict[str, Appender] = {}
    handled = 0
    while True:
        try:
            message = _receive(inbox)
        except EOFError:
            return
        failed = False
        try:
            if message[0] == "open":
                _, lake, compact_every = message
                gc.collect()
                gc.freeze()  # what is alive now (modules, pyarrow, deltalake) lives as long as the process
                reply = ("ok", None)
            else:
                _, table, build, slices = message
                try:
                    rows = _receive_rows(inbox, slices)
                except EOFError:  # the parent died sending it
                    return
                if table not in appenders:
                    appenders[table] = lake.appender(table, compact_every=compact_every)
                reply = ("ok", appenders[table].append(build(rows) if build is not None else rows))
                rows = None
        except Exception as exc:  # reported to the parent, which keeps the batch and retries
            logger.warning("append failed", exc_info=True)
            reply, failed = ("error", f"{type(exc).__name__}: {exc}"), True
        message = None
        try:
            _send(outbox, reply)
        except BrokenPipeError:  # the parent is gone
            return
        handled += 1
        if failed or handled % _COLLECT_EVERY == 0:
            gc.collect()


def main() -> None:
    # Stopped by its pipe closing, never by a signal meant for its parent's group (Ctrl-C, `tandem up`
    # stopping the gateway): the parent's last flush still goes through this process.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # Frames go to the parent over the original stdout; anything else printed goes to stderr.
    outbox = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s lake writer %(process)d: %(message)s")
    _serve(sys.stdin.buffer, outbox)


if __name__ == "__main__":
    main()
