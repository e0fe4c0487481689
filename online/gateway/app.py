"""The FastAPI workflow gateway: `create_app()` builds it, `serve_gateway()` runs it."""

from __future__ import annotations

import logging
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

from models.settings import TandemSettings
from online.gateway.fastpath import FastPath
from online.gateway.problems import PayloadTooLarge, install_problem_handlers, problem_response
from online.gateway.routes import admin, jobs, models, ops, workflows
from online.gateway.runtime import Runtime
from online.gateway.settings import GatewaySettings
from online.gateway.tracing import new_id

access_log = logging.getLogger("tandem.gateway.access")

DESCRIPTION = """Tandem runs workflows of versioned ML models for many tenants.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`). Errors are
`application/problem+json`. Optional headers: `Idempotency-Key`, `X-Deadline-Ms`,
`X-Routing-Key` (sticky canary assignment), `traceparent` (W3C trace context).
"""


class _EdgeMiddleware:
    """Request ids, the body-size limit (413), the fast path, one JSON access-log line and request metrics per call."""

    def __init__(self, app, runtime_ref: dict, fast_path: FastPath | None = None):
        self.app = app
        self.runtime_ref = runtime_ref
        self.fast_path = fast_path

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        runtime: Runtime = self.runtime_ref["runtime"]
        limit = runtime.gateway.max_job_body_bytes if scope["path"] == "/v1/jobs" else runtime.gateway.max_body_bytes
        headers = dict(scope["headers"])
        request_id = (headers.get(b"x-request-id") or b"").decode()[:128] or new_id()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            resp = problem_response(PayloadTooLarge(_too_large(int(length), limit)), scope["path"], request_id)
            status["code"] = resp.status_code
            await resp(scope, receive, send)
            self._record(scope, state, status["code"], started, runtime)
            return

        seen = 0

        async def limited_receive():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise PayloadTooLarge(_too_large(seen, limit))
            return message

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*message["headers"], (b"x-request-id", request_id.encode())]
            await send(message)

        try:
            fast = self.fast_path
            matched = fast.match(scope) if fast is not None else None
            if matched is not None:
                await fast.serve(*matched, scope, limited_receive, send_with_id, headers, request_id)
            else:
                await self.app(scope, limited_receive, send_with_id)
        finally:
            self._record(scope, state, status["code"], started, runtime)

    @staticmethod
    def _record(scope, state, code, started, runtime: Runtime) -> None:
        elapsed = time.perf_counter() - started
        route = scope.get("route")
        path = getattr(route, "path", None) or scope["path"]
        workflow = (scope.get("path_params") or {}).get("name", "") if "workflows" in path else ""
        tenant = state.get("tenant", "")
        runtime.metrics.requests.labels(tenant, path, workflow, str(code)).inc()
        runtime.metrics.request_latency.labels(path, workflow).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps({
                "request_id": state.get("request_id"), "trace_id": state.get("trace_id"), "tenant": tenant,
                "method": scope["method"], "path": scope["path"], "status": code,
                "latency_ms": round(elapsed * 1000, 3),
            }).decode())


def _too_large(size: int, limit: int) -> str:
    return f"request body is {size} bytes; the limit is {limit} bytes — send fewer instances or use /v1/jobs"


def create_app(
    settings: TandemSettings | None = None,
    gateway: GatewaySettings | None = None,
    *,
    runtime: Runtime | None = None,
) -> FastAPI:
    """Build the gateway app; its runtime starts and stops with the app's lifespan."""
    runtime = runtime or Runtime(settings or TandemSettings(), gateway or GatewaySettings())
    ref = {"runtime": runtime}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await runtime.start()
        try:
            yield
        finally:
            await runtime.stop()

    app = FastAPI(title="Tandem gateway", version="0.1.0", description=DESCRIPTION, lifespan=lifespan)
    app.state.runtime = runtime
    install_problem_handlers(app)
    for module in (workflows, models, jobs, admin, ops):
        app.include_router(module.router)
    fast_path = FastPath(runtime) if runtime.gateway.fast_path else None
    app.add_middleware(_EdgeMiddleware, runtime_ref=ref, fast_path=fast_path)
    return app
