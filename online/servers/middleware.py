"""HTTP-side plumbing of a model server: W3C trace context, request metrics, `GET /metrics`."""

from __future__ import annotations

import logging
import re
import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from online.servers.metrics import render_metrics, server_metrics

__all__ = ["TraceContextMiddleware", "metrics_endpoint", "parse_traceparent"]

logger = logging.getLogger("tandem.servers")

_TRACEPARENT = re.compile(r"^(?!ff)[0-9a-f]{2}-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_KNOWN_PATHS = frozenset({"/predict", "/health", "/info", "/metrics"})


def parse_traceparent(value: str | None) -> str | None:
    """The header if it is a valid W3C `traceparent`, else None (invalid ones are ignored, per spec)."""
    if value is None:
        return None
    value = value.strip().lower()
    return value if _TRACEPARENT.match(value) else None


class TraceContextMiddleware:
    """Echo a valid `traceparent` on the response, log it with failures, time every request."""

    def __init__(self, app: ASGIApp, model: str) -> None:
        self.app = app
        self.model = model

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        traceparent = None
        for key, value in scope["headers"]:
            if key == b"traceparent":
                traceparent = parse_traceparent(value.decode("latin-1"))
                break
        start = time.perf_counter()
        code = 500

        async def send_with_trace(message: Message) -> None:
            nonlocal code
            if message["type"] == "http.response.start":
                code = message["status"]
                if traceparent:
                    message["headers"] = [*message.get("headers", []), (b"traceparent", traceparent.encode())]
            await send(message)

        try:
            await self.app(scope, receive, send_with_trace)
        finally:
            path = scope["path"] if scope["path"] in _KNOWN_PATHS else "other"
            server_metrics().http_latency.labels(self.model, path, str(code)).observe(
                time.perf_counter() - start
            )
            if code >= 500:
                logger.warning(
                    "%s %s -> %d (traceparent=%s)", scope["method"], scope["path"], code, traceparent
                )
            elif traceparent and logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "%s %s -> %d (traceparent=%s)", scope["method"], scope["path"], code, traceparent
                )


async def metrics_endpoint(request: Request) -> Response:
    """Prometheus metrics of every process of this server."""
    body, content_type = render_metrics()
    return Response(content=body, media_type=content_type)
