"""Async jobs (scope `jobs`): submit bulk work, poll its status, page through its results.

Jobs and their inputs are persisted in Delta (`jobs`, `job_inputs`) before the 202 is sent,
so a job survives a gateway restart; a Dagster sensor turns each queued job into a run.
"""

from __future__ import annotations

from datetime import date
from typing import Annotated, Any

import pyarrow.compute as pc
from fastapi import APIRouter, Depends, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from models.errors import TandemModelError
from models.jobs import JobConflictError, get_job, job_results_page, submit_job
from online.gateway.api_models import problem_responses
from online.gateway.deps import Caller, IdempotencyKey, RuntimeDep, scoped
from online.gateway.execution import validate
from online.gateway.problems import Conflict, InvalidInput, NotFound, PayloadTooLarge

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
JobsCaller = Annotated[Caller, Depends(scoped("jobs"))]
MAX_JOB_INPUTS = 100_000


class DocumentsRef(BaseModel):
    model_config = ConfigDict(extra="forbid")
    day: date = Field(description="Score every document of this day's partition.")


class JobRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"workflow": "classify", "inputs": [{"text": "first"}, {"text": "second"}]},
        {"workflow": "enrich", "documents": {"day": "2026-01-04"}},
    ]})

    workflow: str
    inputs: list[dict[str, Any]] | None = Field(default=None, description="The workflow inputs, one per item.")
    documents: DocumentsRef | None = Field(default=None, description="Or: a day of the `documents` table.")


class JobStatus(BaseModel):
    job_id: str
    tenant: str
    workflow: str
    status: str = Field(description="queued | running | succeeded | failed")
    n_inputs: int
    n_done: int
    progress: float
    attempts: int
    error: str | None
    submitted_at: Any
    updated_at: Any
    links: dict[str, str]


def _status(job: dict) -> dict:
    return {
        **{k: job[k] for k in ("job_id", "tenant", "workflow", "status", "n_inputs", "n_done", "attempts",
                               "error", "submitted_at", "updated_at")},
        "progress": round(job["n_done"] / job["n_inputs"], 4) if job["n_inputs"] else 1.0,
        "links": {"self": f"/v1/jobs/{job['job_id']}", "results": f"/v1/jobs/{job['job_id']}/results"},
    }


@router.post("", status_code=202, response_model=JobStatus, summary="Submit an async job",
             responses=problem_responses(401, 403, 404, 409, 413, 415, 422, 429))
def submit(body: JobRequest, caller: JobsCaller, runtime: RuntimeDep, response: Response,
           idempotency_key: IdempotencyKey = None) -> dict:
    """Persist the job and its inputs, answer 202 with its id; a Dagster run does the work."""
    spec = runtime.workflow(body.workflow)
    caller.tenant.require_workflow(body.workflow)
    if (body.inputs is None) == (body.documents is None):
        raise InvalidInput([{"field": "body", "message": "give exactly one of `inputs` or `documents`"}])
    raw = body.inputs if body.inputs is not None else _documents(runtime, body.documents.day)
    if not raw:
        raise InvalidInput([{"field": "inputs", "message": "the job has no inputs"}])
    if len(raw) > MAX_JOB_INPUTS:
        raise PayloadTooLarge(f"{len(raw)} inputs; a job takes at most {MAX_JOB_INPUTS} — split it")
    model = spec.input_model()
    inputs = [validate(model, item, f"inputs.{i}") for i, item in enumerate(raw)]
    runtime.quotas.consume(caller.tenant)
    try:
        job = submit_job(runtime.lake, caller.tenant.id, body.workflow, inputs, idempotency_key,
                         privacy=runtime.privacy)
    except JobConflictError as exc:
        raise Conflict(str(exc)) from None
    response.headers["Location"] = f"/v1/jobs/{job['job_id']}"
    return _status(job)


def _documents(runtime, day: date) -> list[dict]:
    table = runtime.lake.read("documents", filter=pc.field("day") == day, columns=["doc_id", "text"])
    return [{"text": t} for t in table.column("text").to_pylist()]


def _owned(runtime, caller: Caller, job_id: str) -> dict:
    try:
        job = get_job(runtime.lake, job_id)
    except TandemModelError:
        job = None
    if job is None or job["tenant"] != caller.tenant.id:
        raise NotFound(f"no job {job_id!r} for this tenant")
    return job


@router.get("/{job_id}", response_model=JobStatus, summary="Status and progress of a job",
            responses=problem_responses(401, 403, 404))
def status(job_id: str, caller: JobsCaller, runtime: RuntimeDep) -> dict:
    """Queued, running, succeeded or failed, with progress and the failure reason."""
    return _status(_owned(runtime, caller, job_id))


@router.get("/{job_id}/results", summary="A page of a job's results",
            responses=problem_responses(401, 403, 404, 422))
def results(job_id: str, caller: JobsCaller, runtime: RuntimeDep,
            offset: Annotated[int, Query(ge=0)] = 0, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
    """Results by input index: status, output, error and the model versions used."""
    job = _owned(runtime, caller, job_id)
    page = job_results_page(runtime.lake, job_id, offset, limit)
    nxt = offset + len(page)
    return {"job_id": job_id, "status": job["status"], "offset": offset, "results": page,
            "next_offset": nxt if nxt < job["n_inputs"] and len(page) == limit else None}
