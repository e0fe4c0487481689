"""The request record: one `requests` row per sync prediction request, successes and errors alike.

The edge middleware opens a `RequestNote` for every request (`begin`, a context variable), the route
cores note what they learn (`note_body`, `note_steps`, `note_result`), and the edge hands the note to
`RequestRecorder.finish` once the response is sent, with its status and problem type. Errors raised
before a route core runs (a rate limit, a body that fails validation) are recorded the same way, with
no input. A request refused before its tenant is known (401) leaves no row.

The note itself is buffered (the same never-blocking `PredictionLog` machinery as `predictions`,
a second instance) and holds plain data: the request body as validated, the response as sent (bytes).
Building the row (JSON, the tenant's PII policy, the keyed input hash) and writing it happen off the
request path: in the gateway's writer process (`lakehouse.append_process`, the default), or in the
flusher's worker thread. `get` answers from the buffer before the flush and from the lake after it.
"""

from __future__ import annotations

import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import Any

import orjson

from lakehouse.append_process import AppendProcess, LocalAppends
from models.pii import Privacy
from models.record import protect_output, public_record, read_record, stored_input
from online.gateway.logsink import PredictionLog
from online.gateway.steps import StepReport

__all__ = ["PREDICTION_ROUTES", "RequestNote", "RequestRecorder", "begin", "build_row", "build_rows", "note_body",
           "note_result", "note_steps", "problem_type_of"]

PREDICTION_ROUTES = frozenset({"/v1/models/{name}/predict", "/v1/embeddings", "/v1/rerank",
                               "/v1/workflows/{name}/run"})


@dataclass(slots=True)
class RequestNote:
    """What one request left behind, filled in as it goes; turned into a row off the request path."""

    started: float = field(default_factory=time.perf_counter)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    body: dict | None = None  # the validated request body, dumped (`exclude_none`)
    name: str | None = None  # the path's {name}
    workflow: str | None = None
    workflow_version: int | None = None
    reports: list[StepReport] | None = None
    result: bytes | None = None  # the response body as sent (JSON)
    problem_type: str | None = None
    # set by `finish`
    request_id: str = ""
    tenant: str = ""
    pii: str = "redact"
    route: str = ""
    trace_id: str | None = None
    http_status: int = 200
    latency_ms: float = 0.0


_CURRENT: ContextVar[RequestNote | None] = ContextVar("tandem_request_note", default=None)


def begin() -> RequestNote:
    """Open the note of the request being served (the edge calls this first)."""
    note = RequestNote()
    _CURRENT.set(note)
    return note


def note_body(body: Any, name: str | None = None) -> None:
    """The validated request body (a pydantic model; kept dumped, so the note pickles as plain data)."""
    if (note := _CURRENT.get()) is not None:
        note.body, note.name = body.model_dump(exclude_none=True), name


def note_steps(reports: list[StepReport], workflow: str | None = None, workflow_version: int | None = None) -> None:
    if (note := _CURRENT.get()) is not None:
        note.reports, note.workflow, note.workflow_version = reports, workflow, workflow_version


def note_result(content: bytes) -> None:
    """The JSON body of a successful answer, as sent."""
    if (note := _CURRENT.get()) is not None:
        note.result = content


def problem_type_of(body: bytes) -> str:
    """The `type` of a problem+json body (an error response's first chunk); `unknown` if it has none."""
    try:
        found = orjson.loads(body).get("type")
    except (orjson.JSONDecodeError, AttributeError):
        found = None
    return found if isinstance(found, str) else "unknown"


# --------------------------------------------------------------------------------------------------
# Row building (pure; runs in the flusher's thread)


def _input_of(note: RequestNote) -> Any:
    if note.body is None:
        return None
    return {"name": note.name, **note.body} if note.name is not None else note.body


def _steps(reports: list[StepReport] | None) -> str | None:
    if reports is None:
        return None
    return orjson.dumps([{"step": r.step, "model": r.model, "version": r.version, "arm": r.arm,
                          "status": r.status, "cached": r.cached, "latency_ms": round(r.latency_ms, 3)}
                         for r in reports]).decode()


def build_row(note: RequestNote, privacy: Privacy) -> dict[str, Any]:
    """The `requests` row of a finished note, its input stored as the tenant's PII policy allows."""
    raw = _input_of(note)
    stored, input_hash = stored_input(raw, note.pii, privacy)
    output, vectors = None, None
    if note.result is not None:
        out, vecs = protect_output(orjson.loads(note.result), raw, note.pii, privacy)
        output, vectors = orjson.dumps(out).decode(), vecs or None
    if note.http_status >= 400:
        status = "error"
    elif note.reports and any(r.degraded for r in note.reports):
        status = "degraded"
    else:
        status = "ok"
    return {
        "request_id": note.request_id, "tenant": note.tenant, "day": note.ts.date(), "ts": note.ts,
        "kind": "sync", "route": note.route, "job_id": None, "item": None,
        "workflow": note.workflow or (note.name if note.route == "/v1/workflows/{name}/run" else None),
        "workflow_version": note.workflow_version, "steps": _steps(note.reports),
        "status": status, "problem_type": note.problem_type, "http_status": note.http_status,
        "latency_ms": note.latency_ms, "trace_id": note.trace_id, "pii_policy": note.pii,
        "input": stored, "input_hash": input_hash,
        "output": output, "embeddings": vectors,
    }


def build_rows(notes: list[RequestNote], privacy: Privacy) -> list[dict[str, Any]]:
    return [build_row(n, privacy) for n in notes]


# --------------------------------------------------------------------------------------------------


class RequestRecorder:
    """Buffers finished notes (never blocking), writes them as `requests` rows, answers look-ups."""

    def __init__(self, lake, privacy: Privacy, *, max_rows: int = 2000, flush_interval_s: float = 2.0,
                 compact_every: int = 60, appends: AppendProcess | LocalAppends | None = None):
        self._lake = lake
        self.privacy = privacy
        # Where rows are built and written: the gateway's writer process, or (None) the flusher's thread.
        self._appends = appends or LocalAppends(lake, compact_every=compact_every)
        self._pending: dict[tuple[str, str], RequestNote] = {}  # (tenant, request_id) -> note, until written
        self.sink = PredictionLog(self._write, max_rows=max_rows, flush_interval_s=flush_interval_s,
                                  name="request record")

    def finish(self, note: RequestNote, *, request_id: str, tenant: str, pii: str, route: str,
               trace_id: str | None, http_status: int) -> None:
        """Queue the note of a request answered with `http_status` (O(1); dropped and counted when full)."""
        note.request_id, note.tenant, note.pii, note.route = request_id, tenant, pii, route
        note.trace_id, note.http_status = trace_id, http_status
        note.latency_ms = round((time.perf_counter() - note.started) * 1000, 3)
        if self.sink.log(note):
            self._pending[(tenant, request_id)] = note

    def _write(self, notes: list[RequestNote]) -> None:
        self._appends.append("requests", notes, build=partial(build_rows, privacy=self.privacy))
        for n in notes:
            if self._pending.get((n.tenant, n.request_id)) is n:
                del self._pending[(n.tenant, n.request_id)]

    def get(self, tenant: str, request_id: str) -> dict[str, Any] | None:
        """The tenant's record of `request_id` (the newest if an id was sent twice), or None."""
        note = self._pending.get((tenant, request_id))
        if note is not None:
            return public_record(build_row(note, self.privacy))
        found = read_record(self._lake, tenant, request_id)
        return None if found is None else public_record(found)

