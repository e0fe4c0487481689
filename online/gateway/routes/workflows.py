"""Workflow routes: list, describe and run a workflow synchronously."""

from __future__ import annotations

import time

from fastapi import APIRouter, Response

from online.gateway.api_models import RunRequest, RunResponse, problem_responses
from online.gateway.deps import CallerDep, RuntimeDep
from online.gateway.execution import Call, metadata, request_context, respond, validate
from online.gateway.pipeline import PredictCall, pipeline_route
from online.gateway.problems import redact_step_errors
from online.gateway.record import note_body, note_steps

router = APIRouter(prefix="/v1/workflows", tags=["workflows"])


@router.get("", summary="List the workflows this tenant may run")
def list_workflows(caller: CallerDep, runtime: RuntimeDep) -> dict:
    """Names, versions, descriptions and steps of the workflows open to the caller."""
    allowed = [spec for name, spec in sorted(runtime.workflows.items()) if caller.tenant.allows_workflow(name)]
    return {"workflows": [_describe(spec) for spec in allowed]}


@router.get("/{name}", summary="Describe one workflow")
def get_workflow(name: str, caller: CallerDep, runtime: RuntimeDep) -> dict:
    """The workflow's input schema, steps and their dependencies."""
    spec = runtime.workflow(name)
    caller.tenant.require_workflow(name)
    return {**_describe(spec), "input_schema": spec.input_model().model_json_schema()}


async def run_workflow_core(call: Call, name: str, body: RunRequest) -> Response:
    runtime, caller = call.runtime, call.caller
    note_body(body, name)
    spec = runtime.workflow(name)
    caller.tenant.require_workflow(name)
    payload = validate(spec.input_model(), {**body.input, **(body.params or {})}, "input")
    ctx = request_context(runtime, caller, deadline_ms=call.deadline_ms, spec=spec, pins=body.model_versions)

    async def run() -> dict:
        started = time.perf_counter()
        output, reports = await runtime.engine.run(spec, payload, ctx)
        note_steps(reports, spec.name, spec.version)
        return {"output": output, "metadata": redact_step_errors(metadata(ctx, reports, started))}

    return await respond(runtime, caller, call.idempotency_key, body, f"workflow:{name}", run,
                         deadline_ms=call.deadline_ms)


@pipeline_route(router, "/{name}/run", response_model=RunResponse, summary="Run a workflow synchronously",
                responses=problem_responses(401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504))
async def run_workflow(name: str, body: RunRequest, call: PredictCall) -> RunResponse:
    """Run every step of the workflow (independent steps in parallel) and return its output."""
    return await run_workflow_core(call, name, body)


def _describe(spec) -> dict:
    return {
        "name": spec.name, "version": spec.version, "description": spec.description,
        "deadline_ms": spec.deadline_ms,
        "steps": [{"id": s.id, "model": s.model, "task": s.task, "depends_on": sorted(s.dependencies),
                   "optional": s.optional} for s in spec.steps],
    }
