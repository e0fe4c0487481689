"""The FastAPI workflow gateway: `create_app()` builds it, `serve_gateway()` runs it."""

from __future__ import annotations

import logging
import os
import re
import time
from contextlib import asynccontextmanager

import orjson
from fastapi import FastAPI

from models.settings import TandemSettings
from online.gateway import record
from online.gateway.bodies import check_content_type, parse_json, read_body, too_large
from online.gateway.deps import CALLER_HEADERS, resolve_caller
from online.gateway.docs import install_docs
from online.gateway.pipeline import PipelineRoute
from online.gateway.problems import (
    GatewayError,
    HeadersTooLarge,
    PayloadTooLarge,
    install_problem_handlers,
    problem_response,
)
from online.gateway.routes import admin, jobs, models, ops, requests, workflows
from online.gateway.routes.jobs import MAX_JOB_INPUTS
from online.gateway.runtime import Runtime
from online.gateway.settings import GatewaySettings
from online.gateway.tracing import request_id_from

access_log = logging.getLogger("tandem.gateway.access")

DESCRIPTION = """Tandem runs workflows of versioned ML models for many tenants.

Authenticate with `Authorization: Bearer <key>` (or `X-API-Key`). Bodies are
`application/json` only (else 415). Errors are `application/problem+json`; `/v1/embeddings` and
`/v1/rerank` errors also carry OpenAI's `error` object. Optional headers: `Idempotency-Key`, `X-Deadline-Ms`,
`X-Routing-Key` (sticky canary assignment), `traceparent` (W3C trace context).
"""


_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
MAX_HEADER_BYTES = 8 << 10  # one header value
MAX_HEADERS_BYTES = 32 << 10  # all of them together


class _EdgeMiddleware:
    """Everything a request meets before a route: a valid request id, header and body limits, auth and
    the rate check before any body is read (a `PipelineRoute` does its own), one JSON access-log line and
    request metrics."""

    def __init__(self, app, runtime_ref: dict, api: FastAPI | None = None, pipeline: tuple[PipelineRoute, ...] = ()):
        self.app = app
        self.runtime_ref = runtime_ref
        self.api = api
        self.pipeline = pipeline
        self._templates: list[tuple[str, re.Pattern, frozenset[str]]] | None = None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        runtime: Runtime = self.runtime_ref["runtime"]
        headers = dict(scope["headers"])
        request_id = request_id_from(headers.get(b"x-request-id"))
        rid_header = request_id.encode()
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        started = time.perf_counter()
        status = {"code": 500}
        note = record.begin() if runtime.recorder is not None and scope["method"] == "POST" else None

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                # exactly one x-request-id, ours: a route or problem document may have set it already
                message["headers"] = [*(h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"),
                                      (b"x-request-id", rid_header)]
            elif note is not None and status["code"] >= 400 and note.problem_type is None:
                note.problem_type = record.problem_type_of(message.get("body", b""))
            await send(message)

        try:
            try:
                route = self._admit(scope, headers, runtime)
                if isinstance(route, PipelineRoute):
                    response = await route.answer(scope, receive)
                    await response(scope, receive, send_with_id)
                    return
                if route is not None:
                    receive = await self._gate_body(scope, receive, headers, runtime, request_id)
            except GatewayError as err:
                resp = problem_response(err, scope["path"], request_id)
                await resp(scope, receive, send_with_id)
                return
            await self.app(scope, receive, send_with_id)
        finally:
            self._record(scope, state, status["code"], started, runtime, note)

    def _admit(self, scope, headers: dict[bytes, bytes], runtime: Runtime) -> PipelineRoute | str | None:
        """Header checks and the declared body size; then the prediction route to answer at once, or the
        template of a route whose body the edge reads, or None: pass through."""
        _check_headers(scope["headers"])
        if scope["method"] not in _BODY_METHODS:
            return None
        limit = _body_limit(scope, runtime)
        length = headers.get(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(too_large(int(length), limit))
        for route in self.pipeline:
            if scope["method"] in route.methods and (m := route.path_regex.match(scope["path"])) is not None:
                scope["route"], scope["path_params"] = route, m.groupdict()
                return route
        return self._body_route(scope)

    def _routes(self) -> list[tuple[str, re.Pattern, frozenset[str]]]:
        """(template, pattern, methods taking a body) of every documented route, from the OpenAPI document."""
        if self._templates is None:
            paths = self.api.openapi()["paths"] if self.api is not None else {}
            self._templates = [
                (path, re.compile(re.sub(r"\\\{(\w+)\\\}", r"(?P<\1>[^/]+)", re.escape(path))),
                 frozenset(m.upper() for m, op in ops.items() if isinstance(op, dict) and op.get("requestBody")))
                for path, ops in paths.items()
            ]
        return self._templates

    def _template(self, scope) -> tuple[str, frozenset[str]] | None:
        for path, pattern, body_methods in self._routes():
            if (m := pattern.fullmatch(scope["path"])) is not None:
                scope.setdefault("path_params", m.groupdict())
                return path, body_methods
        return None

    def _body_route(self, scope):
        found = self._template(scope)
        if found is None or scope["method"] not in found[1]:
            return None
        return found[0]

    async def _gate_body(self, scope, receive, headers, runtime: Runtime, request_id: str):
        """Auth and the rate check, then the content type, the bounded read and the JSON check: a
        throttled or unauthenticated request never has its body read. Returns the replaying receive."""
        state = scope["state"]
        hdrs = {k.decode(): v.decode("latin-1") for k in CALLER_HEADERS if (v := headers.get(k)) is not None}
        caller = state["caller"] = await resolve_caller(runtime, hdrs, request_id, state)
        state["trace_id"] = caller.trace_id
        check_content_type(headers)
        limit = _body_limit(scope, runtime)
        raw = await read_body(receive, limit)
        parse_json(raw, max_items=MAX_JOB_INPUTS if scope["path"] == "/v1/jobs" else None)
        sent = False

        async def replay():
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": raw, "more_body": False}

        return replay

    def _record(self, scope, state, code, started, runtime: Runtime, note: record.RequestNote | None) -> None:
        elapsed = time.perf_counter() - started
        path = self._route_label(scope)
        if note is not None and path in record.PREDICTION_ROUTES and state.get("tenant"):
            runtime.recorder.finish(note, request_id=state["request_id"], tenant=state["tenant"],
                                    pii=runtime.tenant_pii(state["tenant"]), route=path,
                                    trace_id=state.get("trace_id"), http_status=code)
        name = (scope.get("path_params") or {}).get("name", "") if "/workflows/" in path else ""
        workflow = name if name in runtime.workflows else ("" if not name else "<unknown>")
        tenant = state.get("tenant", "")
        runtime.metrics.requests.labels(tenant, path, workflow, str(code)).inc()
        runtime.metrics.request_latency.labels(path, workflow).observe(elapsed)
        if access_log.isEnabledFor(logging.INFO):
            access_log.info(orjson.dumps({
                "request_id": state.get("request_id"), "trace_id": state.get("trace_id"), "tenant": tenant,
                "method": scope["method"], "path": scope["path"], "status": code,
                "latency_ms": round(elapsed * 1000, 3),
            }).decode())

    def _route_label(self, scope) -> str:
        """The route template (bounded), never the raw path: unknown paths all count as `<unmatched>`."""
        path = getattr(scope.get("route"), "path", None)
        if path:
            return path
        found = self._template(scope)
        return found[0] if found is not None else "<unmatched>"


def _body_limit(scope, runtime: Runtime) -> int:
    return runtime.gateway.max_job_body_bytes if scope["path"] == "/v1/jobs" else runtime.gateway.max_body_bytes


def _check_headers(raw_headers) -> None:
    total = 0
    for name, value in raw_headers:
        size = len(name) + len(value)
        total += size
        if size > MAX_HEADER_BYTES:
            raise HeadersTooLarge(f"header {name[:64].decode('latin-1')!r} is {size} bytes; "
                                  f"the limit is {MAX_HEADER_BYTES} bytes per header")
    if total > MAX_HEADERS_BYTES:
        raise HeadersTooLarge(f"the headers are {total} bytes together; the limit is {MAX_HEADERS_BYTES} bytes")


def native_telemetry(environ) -> dict | None:
    """FastAPI's own OpenTelemetry spans, metrics and logs: on (its defaults) when the environment
    configures OpenTelemetry (any `OTEL_*` or `FASTAPI_OTEL_*` variable, as `opentelemetry-instrument`
    and OTLP exporters are set up), otherwise off. Left on with nothing configured, FastAPI looks up
    the global providers on every request (three `os.environ` look-ups, ~2% of a cache hit) to find
    them unset."""
    if any(k.startswith(("OTEL_", "FASTAPI_OTEL_")) for k in environ):
        return None
    return {"tracing": False, "metrics": False, "logs": False}


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

    app = FastAPI(title="Tandem gateway", version="0.1.0", description=DESCRIPTION, lifespan=lifespan,
                  docs_url=None, redoc_url=None, telemetry=native_telemetry(os.environ))
    app.state.runtime = runtime
    install_problem_handlers(app)
    for module in (workflows, models, jobs, requests, admin, ops):
        app.include_router(module.router)
    install_docs(app)
    pipeline = tuple(r for m in (workflows, models) for r in m.router.routes if isinstance(r, PipelineRoute))
    app.add_middleware(_EdgeMiddleware, runtime_ref=ref, api=app, pipeline=pipeline)
    return app
