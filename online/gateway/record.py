"""The request record: one `requests` row per sync prediction request, successes and errors alike.

The edge middleware opens a `RequestNote` for every request (`begin`, a context variable), the route
cores note what they learn (`note_body`, `note_steps`, `note_result`), and the edge hands the note to
`RequestRecorder.finish` once the response is sent, with its status and problem type. Errors raised
before a route core runs (a rate limit, a body that fails validation) are recorded the same way, with
no input. A request refused before its tenant is known (401) leaves no row.

The note itself is buffered (the same never-blocking `PredictionLog` machinery as `predictions`,
a second instance); building the row (JSON, the tenant's PII policy, the keyed input hash) happens
in the flusher's worker thread, so the request path pays only for the note. `get` answers from the
buffer before the flush and from the lake after it.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import orjson
import pyarrow.compute as pc

from models.pii import Privacy
from online.gateway.logsink import PredictionLog
from online.gateway.steps import StepReport

__all__ = ["PREDICTION_ROUTES", "RequestNote", "RequestRecorder", "begin", "build_row", "note_body",
           "note_result", "note_steps", "problem_type_of", "split_output"]

PREDICTION_ROUTES = frozenset({"/v1/models/{name}/predict", "/v1/embeddings", "/v1/rerank",
                               "/v1/workflows/{name}/run"})


@dataclass(slots=True)
class RequestNote:
    """What one request left behind, filled in as it goes; turned into a row off the request path."""

    started: float = field(default_factory=time.perf_counter)
    ts: datetime = field(default_factory=lambda: datetime.now(UTC))
    body: Any = None  # the validated request body (a pydantic model)
    name: str | None = None  # the path's {name}
    workflow: str | None = None
    workflow_version: int | None = None
    reports: list[StepReport] | None = None
    result: dict | None = None
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
    if (note := _CURRENT.get()) is not None:
        note.body, note.name = body, name


def note_steps(reports: list[StepReport], workflow: str | None = None, workflow_version: int | None = None) -> None:
    if (note := _CURRENT.get()) is not None:
        note.reports, note.workflow, note.workflow_version = reports, workflow, workflow_version


def note_result(result: dict) -> None:
    if (note := _CURRENT.get()) is not None:
        note.result = result


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
    data = note.body.model_dump(exclude_none=True)
    return {"name": note.name, **data} if note.name is not None else data


def _strings(value: Any, into: set[str]) -> set[str]:
    if isinstance(value, str):
        into.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, into)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, into)
    return into


def _vector(value: Any) -> list[float] | None:
    if isinstance(value, str):  # OpenAI's encoding_format=base64
        return np.frombuffer(base64.b64decode(value), dtype="<f4").tolist()
    if isinstance(value, list) and (not value or isinstance(value[0], int | float)):
        return value
    return None


def split_output(result: Any, inputs: set[str], protect: Callable[[str], Any]) -> tuple[Any, list[list[float]]]:
    """(the output as stored, its vectors): each `embedding` moves to the vector list (its place holds
    `"$embeddings[i]"`), `metadata` is left out (it goes to `steps`), and a string the input also holds
    (a rerank document echoed back) is stored as the PII policy stores inputs (`protect`)."""
    vectors: list[list[float]] = []

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k == "metadata":
                    continue
                if k == "embedding" and (vec := _vector(x)) is not None:
                    out[k] = f"$embeddings[{len(vectors)}]"
                    vectors.append(vec)
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str) and v in inputs:
            return protect(v)
        return v

    return walk(result), vectors


def _steps(reports: list[StepReport] | None) -> str | None:
    if reports is None:
        return None
    return orjson.dumps([{"step": r.step, "model": r.model, "version": r.version, "arm": r.arm,
                          "status": r.status, "cached": r.cached, "latency_ms": round(r.latency_ms, 3)}
                         for r in reports]).decode()


def build_row(note: RequestNote, privacy: Privacy) -> dict[str, Any]:
    """The `requests` row of a finished note, its input stored as the tenant's PII policy allows."""
    raw = _input_of(note)
    stored = privacy.apply(note.pii, raw) if raw is not None else None
    output, vectors = None, None
    if note.result is not None:
        inputs = _strings(raw, set()) if raw is not None and note.pii != "keep" else set()
        protect = (lambda s: privacy.apply(note.pii, s)) if note.pii != "drop" else (lambda s: None)
        out, vecs = split_output(note.result, inputs, protect)
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
        "input": None if stored is None else orjson.dumps(stored).decode(),
        "input_hash": None if raw is None else privacy.input_hash(orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)),
        "output": output, "embeddings": vectors,
    }


def public_record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as `GET /v1/requests/{id}` answers it: JSON columns parsed, vectors put back in place."""
    out = {k: v for k, v in row.items() if k not in ("day", "embeddings")}
    out["ts"] = row["ts"].isoformat() if isinstance(row["ts"], datetime) else row["ts"]
    for col in ("steps", "input", "output"):
        if isinstance(row.get(col), str):
            out[col] = orjson.loads(row[col])
    vectors = row.get("embeddings") or []
    if vectors and out.get("output") is not None:
        out["output"] = _put_back(out["output"], vectors)
    return out


def _put_back(value: Any, vectors: list) -> Any:
    if isinstance(value, dict):
        return {k: _put_back(v, vectors) for k, v in value.items()}
    if isinstance(value, list):
        return [_put_back(v, vectors) for v in value]
    if isinstance(value, str) and value.startswith("$embeddings[") and value.endswith("]"):
        return [float(x) for x in vectors[int(value[12:-1])]]
    return value


# --------------------------------------------------------------------------------------------------


class RequestRecorder:
    """Buffers finished notes (never blocking), writes them as `requests` rows, answers look-ups."""

    def __init__(self, lake, privacy: Privacy, *, max_rows: int = 2000, flush_interval_s: float = 2.0,
                 compact_every: int = 60):
        self._lake = lake
        self.privacy = privacy
        self._compact_every = compact_every
        self._appender = None
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
        rows = [build_row(n, self.privacy) for n in notes]
        if self._appender is None:
            self._appender = self._lake.appender("requests", compact_every=self._compact_every)
        self._appender.append(rows)
        for n in notes:
            if self._pending.get((n.tenant, n.request_id)) is n:
                del self._pending[(n.tenant, n.request_id)]

    def get(self, tenant: str, request_id: str) -> dict[str, Any] | None:
        """The tenant's record of `request_id` (the newest if an id was sent twice), or None."""
        note = self._pending.get((tenant, request_id))
        if note is not None:
            return public_record(build_row(note, self.privacy))
        return read_record(self._lake, tenant, request_id)


def read_record(lake, tenant: str, request_id: str) -> dict[str, Any] | None:
    """A tenant's stored record of `request_id` from the lake (pruned to the tenant's partitions), or None."""
    if lake.version("requests") is None:
        return None
    rows = lake.read("requests", filter=(pc.field("tenant") == tenant) & (pc.field("request_id") == request_id))
    if rows.num_rows == 0:
        return None
    newest = max(rows.to_pylist(), key=lambda r: r["ts"])
    return public_record(newest)

