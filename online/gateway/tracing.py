"""W3C trace context: accept `traceparent`, start a span per request, propagate to model servers.

OpenTelemetry does the work: the gateway's spans get their parent from the incoming header
and each model call carries a child `traceparent`. Exporters are configured the OpenTelemetry
way (`OTEL_*` environment variables with the SDK); without one, spans stay in-process.
"""

from __future__ import annotations

import secrets

from opentelemetry import trace
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
_TRACER = trace.get_tracer("tandem.gateway")


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


def start_request_span(name: str, traceparent: str):
    """A span for one gateway request, parented on the incoming trace."""
    ctx = _PROPAGATOR.extract({"traceparent": traceparent})
    return _TRACER.start_as_current_span(name, context=ctx)
