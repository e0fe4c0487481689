"""Request-scoped dependencies: the runtime, the caller's tenant, ids, deadline, idempotency.

They are `async def` on purpose: none does I/O, and sync dependencies would cost a thread-pool
hop on every request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request

from online.gateway.problems import InvalidInput
from online.gateway.runtime import Runtime
from online.gateway.tenants import Tenant
from online.gateway.tracing import parse_traceparent, request_id_from


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


@dataclass(frozen=True)
class Caller:
    """The authenticated tenant of a request and the request's ids."""

    tenant: Tenant
    request_id: str
    trace_id: str
    traceparent: str
    routing_key: str
    quota_counted: bool = False  # counted with the rate token: `respond` must not count it again


def _key_from_headers(authorization: str | None, api_key: str | None) -> str | None:
    if api_key:
        return api_key.strip()
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


CALLER_HEADERS = (b"authorization", b"x-api-key", b"x-routing-key", b"traceparent")


async def resolve_caller(runtime: Runtime, headers: Mapping[str, str], request_id: str,
                         state: dict | None = None, *, quota: bool = False) -> Caller:
    """The caller of a request from its (lower-case) headers: 401 for a bad key, 429 over the rate limit
    (or, with `quota`, over the daily quota: both in one shared-state call).

    `state` (the ASGI scope's) gets the tenant before the rate check, so a 429 is counted as its tenant's.
    """
    tenant = runtime.tenants.authenticate(_key_from_headers(headers.get("authorization"), headers.get("x-api-key")))
    if state is not None:
        state["tenant"] = tenant.id
    await runtime.limits.admit(tenant, quota=quota)
    trace_id, parent = parse_traceparent(headers.get("traceparent"))
    return Caller(tenant=tenant, request_id=request_id, trace_id=trace_id, traceparent=parent,
                  routing_key=f"{tenant.id}:{headers.get('x-routing-key') or request_id}", quota_counted=quota)


async def authenticate(
    request: Request,
    runtime: RuntimeDep,
    # documented as the OpenAPI security schemes BearerAuth and ApiKeyAuth (see app.py), not as parameters
    authorization: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_api_key: Annotated[str | None, Header(include_in_schema=False)] = None,
    x_request_id: Annotated[str | None, Header()] = None,
    x_routing_key: Annotated[str | None, Header()] = None,
    traceparent: Annotated[str | None, Header()] = None,
) -> Caller:
    """Resolve the API key to a tenant and apply its rate limit (429 with Retry-After)."""
    known = getattr(request.state, "caller", None)
    if known is not None:  # the edge authenticated it before reading the body
        return known
    request_id = request.state.request_id if hasattr(request.state, "request_id") else (
        request_id_from(x_request_id.encode("latin-1") if x_request_id else None))
    headers = {"authorization": authorization, "x-api-key": x_api_key, "x-routing-key": x_routing_key,
               "traceparent": traceparent}
    caller = await resolve_caller(runtime, {k: v for k, v in headers.items() if v is not None}, request_id,
                                  request.scope.setdefault("state", {}))
    request.state.tenant = caller.tenant.id
    request.state.trace_id = caller.trace_id
    return caller


CallerDep = Annotated[Caller, Depends(authenticate)]


def scoped(scope: str):
    """A dependency requiring `scope` of the caller's tenant (403 otherwise)."""

    async def check(caller: CallerDep) -> Caller:
        caller.tenant.require_scope(scope)
        return caller

    return check


PredictCaller = Annotated[Caller, Depends(scoped("predict"))]
AdminCaller = Annotated[Caller, Depends(scoped("admin"))]


def parse_deadline(runtime: Runtime, value: str | None) -> int | None:
    """The caller's `X-Deadline-Ms` bounded by the gateway's maximum; 422 unless a positive integer."""
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        ms = 0
    if ms <= 0:
        raise InvalidInput([{"field": "header.X-Deadline-Ms",
                             "message": "must be a positive whole number of milliseconds, e.g. 2000"}])
    return min(ms, runtime.gateway.max_deadline_ms)


async def deadline_ms(
    runtime: RuntimeDep,
    x_deadline_ms: Annotated[str | None, Header(description="Request deadline in milliseconds.")] = None,
) -> int | None:
    """The caller's deadline from `X-Deadline-Ms`, bounded by the gateway's maximum."""
    return parse_deadline(runtime, x_deadline_ms)


DeadlineDep = Annotated[int | None, Depends(deadline_ms)]
MAX_IDEMPOTENCY_KEY = 255


def check_idempotency_key(value: str | None) -> str | None:
    """The caller's `Idempotency-Key`: 1-255 printable ASCII characters, else 422."""
    if value is not None and not (0 < len(value) <= MAX_IDEMPOTENCY_KEY and value.isascii() and value.isprintable()):
        raise InvalidInput([{"field": "header.Idempotency-Key",
                             "message": f"must be 1-{MAX_IDEMPOTENCY_KEY} printable ASCII characters, e.g. a UUID"}])
    return value


async def idempotency_key(
    idempotency_key: Annotated[str | None, Header(
        alias="Idempotency-Key", description="Same key + same body within 24 h replays the answer.")] = None,
) -> str | None:
    """The caller's `Idempotency-Key`, checked."""
    return check_idempotency_key(idempotency_key)


IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
