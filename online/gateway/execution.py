"""Shared request plumbing for the prediction routes: input validation, deadline, idempotency."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import Response
from pydantic import BaseModel, ValidationError

from models.workflows import WorkflowSpec
from online.gateway.cache import content_hash
from online.gateway.deps import Caller
from online.gateway.engine import RequestContext, StepReport
from online.gateway.problems import invalid_input
from online.gateway.record import note_result
from online.gateway.runtime import Runtime

JSON = "application/json"


@dataclass(frozen=True, slots=True)
class Call:
    """One authenticated prediction request (built by `pipeline._admit` or the `PredictCall` dependency)."""

    runtime: Runtime
    caller: Caller
    deadline_ms: int | None
    idempotency_key: str | None


def validate(model: type[BaseModel], data: Any, where: str) -> dict:
    """Validate `data` against `model`; 422 naming every bad field (`input.text: Field required`)."""
    try:
        return model.model_validate(data).model_dump(exclude_none=True)
    except ValidationError as exc:
        raise invalid_input(exc.errors(), where) from None


def request_context(runtime: Runtime, caller: Caller, *, deadline_ms: int | None, spec: WorkflowSpec | None,
                    pins: dict[str, str] | None) -> RequestContext:
    budget = deadline_ms or (spec.deadline_ms if spec else None) or runtime.gateway.default_deadline_ms
    return RequestContext(
        request_id=caller.request_id, trace_id=caller.trace_id, traceparent=caller.traceparent,
        tenant=caller.tenant.id, routing_key=caller.routing_key,
        deadline=runtime.engine.clock() + budget / 1000, budget_ms=budget,
        tenant_pins=caller.tenant.model_pins, explicit_pins=pins or {},
        workflow=spec.name if spec else None, workflow_version=spec.version if spec else None,
    )


def metadata(ctx: RequestContext, reports: list[StepReport], started: float) -> dict:
    return {
        "request_id": ctx.request_id, "trace_id": ctx.trace_id, "workflow": ctx.workflow,
        "workflow_version": ctx.workflow_version, "degraded": any(r.degraded for r in reports),
        "latency_ms": round((time.perf_counter() - started) * 1000, 3),
        "steps": [r.as_dict() for r in reports],
    }


async def respond(
    runtime: Runtime,
    caller: Caller,
    idempotency_key: str | None,
    body: BaseModel,
    route: str,
    run: Callable[[], Awaitable[dict]],
    *,
    deadline_ms: int | None = None,
) -> Response:
    """Run `run` once per idempotency key (replaying the stored answer) and render JSON.

    The request counts against the tenant's daily quota here unless it was counted with its rate
    token (`caller.quota_counted`, a `PipelineRoute`: one shared-state call per request). `run` holds
    one of the tenant's in-flight slots on this gateway (429 when they are all taken). A twin
    request in flight elsewhere is waited for at most `deadline_ms` (else the default deadline).
    """
    tenant = caller.tenant
    if not caller.quota_counted:
        await runtime.limits.consume_quota(tenant)
    headers = {"x-request-id": caller.request_id, "x-trace-id": caller.trace_id}
    if not idempotency_key:
        with runtime.in_flight.slot(tenant):
            result = await run()
        content = orjson.dumps(result)
        note_result(content)
        return Response(content, media_type=JSON, headers=headers)
    body_hash = content_hash({"route": route, "body": body.model_dump()})
    wait_s = (deadline_ms or runtime.gateway.default_deadline_ms) / 1000
    stored = await runtime.idempotency.begin(tenant.id, idempotency_key, body_hash, wait_s=wait_s)
    if stored is not None:
        note_result(stored.body)
        return Response(stored.body, status_code=stored.status, media_type=JSON,
                        headers={**stored.headers, "idempotent-replayed": "true"})
    try:
        with runtime.in_flight.slot(tenant):
            result = await run()
            content = orjson.dumps(result)
    except BaseException:
        await runtime.idempotency.abandon(tenant.id, idempotency_key, body_hash)
        raise
    await runtime.idempotency.complete(tenant.id, idempotency_key, body_hash, 200, content, headers)
    note_result(content)
    return Response(content, media_type=JSON, headers=headers)
