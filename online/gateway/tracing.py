"""W3C trace context: accept `traceparent`, start a span per request, propagate to model servers.

OpenTelemetry's W3C propagator parses the incoming header, so a caller's trace id is kept and
returned in the response metadata and the prediction log; each model-server call carries a
child `traceparent` (same trace, new span id). No span exporter is configured yet.
"""

from __future__ import annotations

import os
import random
import re

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


_ids = random.Random()  # ids must be unique, not secret: no syscall per id (os.urandom) on the hot path
os.register_at_fork(after_in_child=_ids.seed)  # a forked worker must not repeat its parent's ids


def new_id(bits: int = 128) -> str:
    """A random hex id of `bits` bits (request, trace and span ids)."""
    return format(_ids.getrandbits(bits), f"0{bits // 4}x")


MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(rb"[\x21-\x7e]{1,%d}" % MAX_REQUEST_ID)  # printable ASCII, no spaces


def request_id_from(header: bytes | None) -> str:
    """The caller's `X-Request-ID` when it is 1-128 printable ASCII characters; otherwise a fresh id.

    A request id is echoed in responses, logs and the prediction log, so anything else (raw bytes,
    control characters, a megabyte of text) is replaced rather than repeated.
    """
    if header and _REQUEST_ID.fullmatch(header):
        return header.decode("ascii")
    return new_id()


def parse_traceparent(header: str | None) -> tuple[str, str]:
    """Return (trace_id, traceparent) continuing the caller's trace, or a fresh one."""
    if header:
        ctx = _PROPAGATOR.extract({"traceparent": header})
        span_ctx = trace.get_current_span(ctx).get_span_context()
        if span_ctx.is_valid:
            trace_id = format(span_ctx.trace_id, "032x")
            return trace_id, f"00-{trace_id}-{format(span_ctx.span_id, '016x')}-{int(span_ctx.trace_flags):02x}"
    trace_id = new_id()
    return trace_id, f"00-{trace_id}-{new_id(64)}-01"


def child_traceparent(traceparent: str) -> str:
    """A `traceparent` for a downstream call: same trace, new span id."""
    parts = traceparent.split("-")
    if len(parts) != 4:
        return traceparent
    return f"{parts[0]}-{parts[1]}-{new_id(64)}-{parts[3]}"
