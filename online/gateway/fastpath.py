"""The prediction routes served straight from ASGI, without FastAPI's per-request machinery.

Profiling the gateway under load showed FastAPI's dependency solving, its middleware layers and
its body handling costing more CPU than the work of a prediction request itself (about 1.9 ms
of the gateway's 2.5 ms per request at 32 clients). The four prediction routes are the hot ones,
so the edge middleware hands them here: the body is parsed and validated by pydantic-core in one
step, the caller resolved from the headers by the same function the FastAPI dependency uses, and
the same route cores (`routes.models`, `routes.workflows`) answer. FastAPI keeps every other route,
and still documents these four in OpenAPI; `TANDEM_GATEWAY_FAST_PATH=false` routes them through
FastAPI too (tests check both paths give the same answers).
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.responses import Response

from online.gateway.api_models import EmbeddingsRequest, PredictRequest, RerankRequest, RunRequest
from online.gateway.bodies import check_content_type, parse_json, read_body
from online.gateway.deps import CALLER_HEADERS, check_idempotency_key, parse_deadline, resolve_caller
from online.gateway.execution import Call
from online.gateway.problems import as_problem, invalid_input, problem_response, unhandled_response
from online.gateway.routes.models import embeddings_core, predict_core, rerank_core
from online.gateway.routes.workflows import run_workflow_core
from online.gateway.runtime import Runtime

__all__ = ["FastPath"]



@dataclass(frozen=True)
class _Route:
    path: str  # the template, as FastAPI names it (metrics label)
    pattern: re.Pattern
    body: type[BaseModel]
    core: Callable[..., Awaitable[Response]]


_ROUTES = (
    _Route("/v1/models/{name}/predict", re.compile(r"/v1/models/(?P<name>[^/]+)/predict"), PredictRequest,
           predict_core),
    _Route("/v1/embeddings", re.compile(r"/v1/embeddings"), EmbeddingsRequest, embeddings_core),
    _Route("/v1/rerank", re.compile(r"/v1/rerank"), RerankRequest, rerank_core),
    _Route("/v1/workflows/{name}/run", re.compile(r"/v1/workflows/(?P<name>[^/]+)/run"), RunRequest,
           run_workflow_core),
)


class FastPath:
    """Matches and serves `POST` to the prediction routes; everything else goes to FastAPI."""

    def __init__(self, runtime: Runtime):
        self.runtime = runtime

    def match(self, scope: Mapping[str, Any]) -> tuple[_Route, dict[str, str]] | None:
        if scope["method"] != "POST":
            return None
        path = scope["path"]
        for route in _ROUTES:
            if m := route.pattern.fullmatch(path):
                return route, m.groupdict()
        return None

    async def serve(self, route: _Route, params: dict[str, str], scope, receive, send,
                    headers: Mapping[bytes, bytes], request_id: str, *, limit: int) -> None:
        """Answer one request, errors included (as problem+json, like the FastAPI handlers)."""
        scope["route"], scope["path_params"] = route, params
        try:
            response = await self._answer(route, params, scope, receive, headers, request_id, limit)
        except Exception as exc:  # noqa: BLE001 - an unexpected one is logged with its traceback and answered 500
            err = as_problem(exc)
            response = (problem_response(err, scope["path"], request_id) if err is not None
                        else unhandled_response("POST", scope["path"], request_id, exc))
        await response(scope, receive, send)

    async def _answer(self, route: _Route, params: dict[str, str], scope, receive,
                      headers: Mapping[bytes, bytes], request_id: str, limit: int) -> Response:
        runtime = self.runtime
        hdrs = {k.decode(): v.decode("latin-1") for k in CALLER_HEADERS if (v := headers.get(k)) is not None}
        state = scope["state"]
        # The rate check (and, in the same shared-state call, the quota: every route here counts) comes
        # before the body is read.
        caller = await resolve_caller(runtime, hdrs, request_id, state, quota=True)
        state["trace_id"] = caller.trace_id
        caller.tenant.require_scope("predict")
        deadline = parse_deadline(runtime, _header(headers, b"x-deadline-ms"))
        idempotency_key = check_idempotency_key(_header(headers, b"idempotency-key"))
        check_content_type(headers)
        data = parse_json(await read_body(receive, limit))
        try:
            body = route.body.model_validate(data)
        except ValidationError as exc:
            raise invalid_input(exc.errors(), "body") from None
        call = Call(runtime, caller, deadline, idempotency_key)
        return await route.core(call, *params.values(), body)


def _header(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")
