"""W3C trace context: accept `traceparent`, start a span per request, propagate to model servers.

OpenTelemetry's W3C propagator parses the incoming header, so a caller's trace id is kept and
returned in the response metadata and the prediction log; each model-server call carries a
child `traceparent` (same trace, new span id). No span exporter is configured yet.
"""

from __future__ import annotations

import secrets

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


def parse_traceparent(header: str | None) -> tuple[str, str]:
    """Return (trace_id, traceparent) continuing the caller's trace, or a fresh one."""
    if header:
        ctx = _PROPAGATOR.extract({"traceparent": header})
        span_ctx = trace.get_current_span(ctx).get_span_context()
        if span_ctx.is_valid:
            trace_id = format(span_ctx.trace_id, "032x")
            return trace_id, f"00-{trace_id}-{format(span_ctx.span_id, '016x')}-{int(span_ctx.trace_flags):02x}"
    trace_id = secrets.token_hex(16)
    return trace_id, f"00-{trace_id}-{secrets.token_hex(8)}-01"


def child_traceparent(traceparent: str) -> str:
    """A `traceparent` for a downstream call: same trace, new span id."""
    parts = traceparent.split("-")
    if len(parts) != 4:
        return traceparent
    return f"{parts[0]}-{parts[1]}-{secrets.token_hex(8)}-{parts[3]}"
