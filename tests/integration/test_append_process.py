"""`AppendProcess`: rows appended by a real child process land in the Delta table; a child that dies
costs the batch in flight one retry, not the rows; errors come back named; the child never outlives
its parent."""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from functools import partial

import pytest

from lakehouse import Lake
from lakehouse.append_process import _SLICE_ROWS, AppendProcess, AppendProcessError
from online.gateway.logsink import prediction_row


def _rows(n: int, start: int = 0) -> list[dict]:
    ts = datetime(2026, 12, 1, 12, tzinfo=UTC)
    return [prediction_row(request_id=f"r{i}", tenant="acme", model="embedder", status="ok", ts=ts)
            for i in range(start, start + n)]


def _with_tenant(rows: list[dict], tenant: str) -> list[dict]:
    """A `build` step: runs in the child."""
    return [{**r, "tenant": tenant} for r in rows]


def _alive(pid: int) -> bool:
    """Running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _ids(lake: Lake) -> list[str]:
    return sorted(lake.sql("SELECT request_id FROM predictions")["request_id"].to_pylist())


def _numbered(rows: list[dict]) -> list[dict]:
    """A `build` step: each row's position in the batch the child received, as its latency."""
    return [{**r, "latency_ms": float(i)} for i, r in enumerate(rows)]


def test_a_batch_of_many_slices_lands_whole_and_in_order_and_an_unpicklable_row_leaves_the_pipe_usable(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    many = _rows(5 * _SLICE_ROWS + 7)  # six slices, each pickled by its own call
    try:
        appends.append("predictions", many, build=_numbered)
        with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
            appends.append("predictions", [*_rows(_SLICE_ROWS + 1, start=10_000), {"request_id": lambda: None}])
        appends.append("predictions", _rows(1, start=20_000))  # the next batch reads as its own
    finally:
        appends.close()
    ids = lake.sql("SELECT request_id FROM predictions")["request_id"].to_pylist()
    assert sorted(ids) == sorted([r["request_id"] for r in many] + ["r20000"])  # none of the refused batch
    positions = lake.sql("SELECT request_id, latency_ms FROM predictions WHERE latency_ms IS NOT NULL").to_pylist()
    assert all(int(p["request_id"][1:]) == p["latency_ms"] for p in positions) and len(positions) == len(many)


def _explode():
    raise ValueError("this row cannot be rebuilt")


class _Unrebuildable:
    """Pickles in the parent; unpickling it in the child raises."""

    def __reduce__(self):
        return _explode, ()


def test_a_slice_that_fails_to_unpickle_in_the_child_fails_its_batch_only(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        bad = [{**_rows(1, start=500)[0], "error": _Unrebuildable()}, *_rows(2 * _SLICE_ROWS, start=501)]
        with pytest.raises(AppendProcessError, match="cannot be rebuilt"):
            appends.append("predictions", bad)  # its first slice fails; the two after it must not linger
        appends.append("predictions", _rows(3))
    finally:
        appends.close()
    assert _ids(lake) == ["r0", "r1", "r2"]


def test_no_single_pickle_call_holds_more_than_a_slice_of_a_batch(tmp_path, monkeypatch):
    # One call holds the GIL throughout: 2000 request notes in one held it for 15-37 ms, stalling the gateway.
    import lakehouse.append_process as ap

    largest = []
    real_dumps = pickle.dumps

    def dumps(obj, *args, **kwargs):  # the rows a call pickles: a list, or a list inside a message tuple
        parts = obj if isinstance(obj, tuple) else (obj,)
        largest.append(max((len(p) for p in parts if isinstance(p, list)), default=0))
        return real_dumps(obj, *args, **kwargs)

    class Pickler(pickle.Pickler):
        def dump(self, obj):
            largest.append(len(obj))
            return super().dump(obj)

    monkeypatch.setattr(ap.pickle, "dumps", dumps)
    monkeypatch.setattr(ap.pickle, "Pickler", Pickler)
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        appends.append("predictions", _rows(4 * _SLICE_ROWS))
    finally:
        appends.close()
    assert lake.sql("SELECT count(*) AS n FROM predictions")["n"].to_pylist() == [4 * _SLICE_ROWS]
    assert max(largest) == _SLICE_ROWS


def test_rows_appended_by_the_child_are_in_the_table(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        appends.append("predictions", _rows(3))
        version = appends.append("predictions", _rows(2, start=3), build=partial(_with_tenant, tenant="globex"))
        pid = appends.pid
        assert pid is not None and pid != os.getpid()
    finally:
        appends.close()
    assert version == lake.version("predictions")
    assert _ids(lake) == ["r0", "r1", "r2", "r3", "r4"]
    tenants = lake.sql("SELECT tenant, count(*) AS n FROM predictions GROUP BY tenant ORDER BY tenant")
    assert tenants.to_pylist() == [{"tenant": "acme", "n": 3}, {"tenant": "globex", "n": 2}]
    assert not _alive(pid)  # close() waited for it


def _die(rows: list[dict]) -> list[dict]:
    """A `build` step that kills the child in the middle of a batch."""
    os._exit(3)


def test_a_child_that_dies_fails_its_batch_only_and_the_next_append_starts_a_new_one(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        appends.append("predictions", _rows(1))
        first = appends.pid
        with pytest.raises(AppendProcessError, match=r"exited \(code 3\) before writing 1 rows"):
            appends.append("predictions", _rows(1, start=1), build=_die)
        appends.append("predictions", _rows(1, start=1))  # the caller's retry, in a new child
        second = appends.pid
        assert second not in (None, first)
        os.kill(second, signal.SIGKILL)  # killed between batches: the next one starts a third, silently
        time.sleep(0.2)
        appends.append("predictions", _rows(1, start=2))
        assert appends.pid not in (None, first, second)
    finally:
        appends.close()
    assert _ids(lake) == ["r0", "r1", "r2"]


def test_an_append_that_fails_in_the_child_says_why_and_writes_nothing(tmp_path):
    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        appends.append("predictions", _rows(1))
        bad = [{**_rows(1, start=1)[0], "latency_ms": "fast"}]
        with pytest.raises(AppendProcessError, match="latency_ms"):
            appends.append("predictions", bad)
        appends.append("predictions", _rows(1, start=2))  # the same child goes on
    finally:
        appends.close()
    assert _ids(lake) == ["r0", "r2"]


def test_the_child_exits_with_its_parent_and_ignores_its_parents_signals(tmp_path):
    script = textwrap.dedent(f"""
        import sys, time
        from lakehouse import Lake
        from lakehouse.append_process import AppendProcess
        from tests.integration.test_append_process import _rows
        appends = AppendProcess(Lake({str(tmp_path / "lake")!r}))
        appends.append("predictions", _rows(1))
        print(appends.pid, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                              cwd=os.getcwd(), start_new_session=True)
    try:
        child = int(parent.stdout.readline())
        os.killpg(parent.pid, signal.SIGINT)  # Ctrl-C reaches the whole group: the parent stops, the child waits
        parent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:  # its pipe closed with the parent: it exits
            time.sleep(0.05)
        if not _alive(child):
            return
        os.kill(child, signal.SIGKILL)
        pytest.fail("the writer process outlived its parent")
    finally:
        if parent.poll() is None:
            parent.kill()


def test_the_request_record_builds_and_writes_its_rows_in_the_child(tmp_path):
    import asyncio

    import orjson

    from models.pii import Privacy
    from online.gateway.record import RequestNote, RequestRecorder

    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    recorder = RequestRecorder(lake, Privacy(b"k" * 32, b"ZmVybmV0LWtleS1mb3ItdW5pdC10ZXN0cy0zMmJ5dGU="),
                               max_rows=10, flush_interval_s=60, appends=appends)
    note = RequestNote(body={"query": "mail jane@example.com", "documents": ["a"]},
                       result=orjson.dumps({"results": [{"index": 0, "relevance_score": 0.5}]}))

    async def scenario():
        recorder.finish(note, request_id="r1", tenant="acme", pii="redact", route="/v1/rerank", trace_id="t",
                        http_status=200)
        before = recorder.get("acme", "r1")
        assert await recorder.sink.flush()
        return before, recorder.get("acme", "r1")

    try:
        before, after = asyncio.run(scenario())
        assert appends.pid is not None  # the rows went through the child
    finally:
        appends.close()
    assert before == after
    assert after["input"]["query"] == "mail <EMAIL>" and after["output"]["results"][0]["relevance_score"] == 0.5


def test_the_pickling_buffer_is_kept_between_batches_but_not_after_a_large_one(tmp_path, monkeypatch):
    import lakehouse.append_process as ap

    lake = Lake(str(tmp_path / "lake"))
    appends = AppendProcess(lake)
    try:
        appends.append("predictions", _rows(10))
        kept = appends._scratch
        appends.append("predictions", _rows(10, start=10))
        assert appends._scratch is kept  # reused: no fresh pages for every batch
        monkeypatch.setattr(ap, "_SCRATCH_KEEP", kept.tell() + 1)
        appends.append("predictions", _rows(50, start=20))  # larger than the limit: its buffer is let go
        assert appends._scratch is not kept and appends._scratch.tell() == 0
        appends.append("predictions", _rows(1, start=70))
    finally:
        appends.close()
    assert _ids(lake) == sorted(f"r{i}" for i in range(71))
