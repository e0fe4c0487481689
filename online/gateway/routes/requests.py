"""The record of past requests: `GET /v1/requests/{id}` answers with a request's stored output."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field

from models.record import public_record, read_record
from online.gateway.api_models import problem_responses
from online.gateway.deps import CallerDep, RuntimeDep
from online.gateway.problems import NotFound

router = APIRouter(prefix="/v1/requests", tags=["requests"])


class RequestRecord(BaseModel):
    """One request as the record keeps it (the input as the tenant's PII policy allows)."""

    request_id: str
    tenant: str
    ts: str
    kind: str = Field(description="sync | job_item")
    route: str | None
    job_id: str | None = None
    item: int | None = None
    workflow: str | None
    workflow_version: int | None
    steps: list[dict[str, Any]] | None = Field(description="Each step's model, version, arm, status, cached.")
    status: str = Field(description="ok | degraded | error")
    problem_type: str | None
    http_status: int | None
    latency_ms: float | None
    trace_id: str | None
    pii_policy: str = Field(description="keep | redact | hash | drop: how `input` was stored")
    input: Any = Field(description="The request body as the PII policy allows (null for drop).")
    input_hash: str | None = Field(description="Keyed hash of the raw input: equal inputs share it.")
    output: Any = Field(description="The final answer (embedding vectors in place), null for an error.")


@router.get("/{request_id}", response_model=RequestRecord, summary="A past request and its answer",
            responses=problem_responses(401, 404, 503))
def get_request(request_id: str, caller: CallerDep, runtime: RuntimeDep) -> dict:
    """The stored output and metadata of one of the tenant's requests (its `x-request-id`, or
    `<job_id>:<item>` for an async-job item); any of the tenant's keys may read it."""
    tenant = caller.tenant.id
    if runtime.recorder is not None:
        found = runtime.recorder.get(tenant, request_id)
    else:
        found = read_record(runtime.lake, tenant, request_id)
        found = None if found is None else public_record(found)
    if found is None:
        raise NotFound(f"no request {request_id!r} for this tenant (records appear within seconds of the answer)")
    return found
