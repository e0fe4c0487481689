"""The prediction routes' one pipeline: FastAPI documents them, one lean handler serves them.

Profiling the gateway under load showed FastAPI's dependency solving, its request wrapper and its
body handling costing more CPU than the work of a prediction request itself (about 1.9 ms of the
gateway's 2.5 ms per request at 32 clients). So a `PipelineRoute` is a FastAPI `APIRoute` (its
endpoint's signature declares the body, path parameters, headers, security and responses once, for
OpenAPI, like any other route) whose handler does the request's work directly: the caller from the
headers and the rate check plus the quota in one shared-state call, all before the body is read;
then the content type, the bounded read, the JSON check and pydantic-core validation of the body
in one step; then the endpoint itself, with its `call` built by the same functions the
`PredictCall` dependency uses. Errors are answered here as problem+json, like FastAPI's handlers.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any, get_type_hints

from fastapi import Depends
from fastapi.routing import APIRoute, APIRouter
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from online.gateway.bodies import check_content_type, parse_json, read_body
from online.gateway.deps import (
    CALLER_HEADERS,
    DeadlineDep,
    IdempotencyKey,
    PredictCaller,
    RuntimeDep,
    check_idempotency_key,
    parse_deadline,
    resolve_caller,
)
from online.gateway.execution import Call
from online.gateway.problems import as_problem, invalid_input, problem_response, unhandled_response
from online.gateway.runtime import Runtime
from online.gateway.tracing import request_id_from

__all__ = ["PipelineRoute", "PredictCall", "pipeline_route"]


async def predict_call(caller: PredictCaller, runtime: RuntimeDep, deadline: DeadlineDep,
                       idempotency_key: IdempotencyKey = None) -> Call:
    """The request's `Call`, the FastAPI way. Through it a pipeline endpoint's signature declares the
    headers it reads (auth, `X-Deadline-Ms`, `Idempotency-Key`, ...) for OpenAPI; a `PipelineRoute`
    never solves it but builds the same `Call` from the raw headers in `_admit`, with the same functions."""
    return Call(runtime, caller, deadline, idempotency_key)


PredictCall = Annotated[Call, Depends(predict_call)]


class PipelineRoute(APIRoute):
    """A `POST` prediction route: documented from its endpoint like any route, answered by `answer`.

    The endpoint takes its path parameters, `body` (a pydantic model) and `call: PredictCall`. The
    gateway's edge matches these routes itself and calls `answer`, skipping FastAPI's router and
    middleware layers (about 0.6 ms of CPU per request here); FastAPI's router serves them the same way.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any):
        super().__init__(path, endpoint, **kwargs)
        hints = get_type_hints(endpoint)
        body = hints.get("body")
        if not (isinstance(body, type) and issubclass(body, BaseModel)) or "call" not in hints:
            raise TypeError(f"a pipeline endpoint takes `body: <pydantic model>` and `call: PredictCall`; "
                            f"{endpoint.__qualname__} does not")
        self.body_model: type[BaseModel] = body

    def get_route_handler(self) -> Callable[[Request], Awaitable[Response]]:
        """What FastAPI's router runs when it routes here (the gateway's edge calls `answer` directly)."""

        async def handler(request: Request) -> Response:
            return await self.answer(request.scope, request.receive)

        return handler

    async def answer(self, scope, receive) -> Response:
        """The response to one request, errors included (problem+json, like the FastAPI handlers)."""
        state = scope.setdefault("state", {})
        if "request_id" not in state:  # no edge in front (a bare FastAPI app)
            state["request_id"] = request_id_from(dict(scope["headers"]).get(b"x-request-id"))
        request_id = state["request_id"]
        try:
            runtime: Runtime = scope["app"].state.runtime
            call = await _admit(runtime, dict(scope["headers"]), request_id, state)
            data = parse_json(await read_body(receive, runtime.gateway.max_body_bytes))
            try:
                body = self.body_model.model_validate(data)
            except ValidationError as exc:
                raise invalid_input(exc.errors(), "body") from None
            return await self.endpoint(**scope.get("path_params", {}), body=body, call=call)
        except Exception as exc:  # noqa: BLE001 - an unexpected one is logged with its traceback and answered 500
            err = as_problem(exc)
            return (problem_response(err, scope["path"], request_id) if err is not None
                    else unhandled_response(scope["method"], scope["path"], request_id, exc))


async def _admit(runtime: Runtime, headers: Mapping[bytes, bytes], request_id: str, state: dict) -> Call:
    """Auth, the `predict` scope, the rate check and the quota (one shared-state call: every prediction
    route counts), the deadline, the idempotency key and the content type: all before the body is read."""
    hdrs = {k.decode(): v.decode("latin-1") for k in CALLER_HEADERS if (v := headers.get(k)) is not None}
    caller = await resolve_caller(runtime, hdrs, request_id, state, quota=True)
    state["trace_id"] = caller.trace_id
    caller.tenant.require_scope("predict")
    deadline = parse_deadline(runtime, _header(headers, b"x-deadline-ms"))
    idempotency_key = check_idempotency_key(_header(headers, b"idempotency-key"))
    check_content_type(headers)
    return Call(runtime, caller, deadline, idempotency_key)


def pipeline_route(router: APIRouter, path: str, **kwargs: Any) -> Callable[[Callable], Callable]:
    """`@router.post(path, ...)`, served by a `PipelineRoute`."""

    def decorate(endpoint: Callable) -> Callable:
        router.add_api_route(path, endpoint, methods=["POST"], route_class_override=PipelineRoute, **kwargs)
        return endpoint

    return decorate


def _header(headers: Mapping[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")
