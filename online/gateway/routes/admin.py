"""Admin routes (scope `admin`): the registry operations of `tandem models`, over HTTP."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Query

from models.gate import require_evaluation
from online.gateway.api_models import AliasBody, CanaryBody, ReasonBody, problem_responses
from online.gateway.deps import AdminCaller, RuntimeDep
from online.gateway.problems import InvalidInput
from online.gateway.runtime import Runtime

router = APIRouter(prefix="/v1/admin/models", tags=["admin"], responses=problem_responses(401, 403, 404, 409, 413, 415, 422, 429))


def _actor(caller: AdminCaller) -> str:
    return f"tenant:{caller.tenant.id}"


def _changed(runtime: Runtime, state) -> dict:
    runtime.refresh_registry()  # this gateway applies its own change at once; others within a poll
    return asdict(state)


@router.get("", summary="List models with their versions and aliases")
def list_models(caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Every registered model: task, versions, stable/canary/shadow."""
    return {"models": [asdict(m) for m in runtime.registry.list_models()]}


@router.get("/{name}", summary="Show one model's versions")
def show_model(name: str, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """A model's versions (immutable records) and its current aliases."""
    return {"state": asdict(runtime.registry.state(name)),
            "versions": [asdict(v) for v in runtime.registry.versions(name)]}


@router.get("/{name}/history", summary="Alias history of a model")
def history(name: str, caller: AdminCaller, runtime: RuntimeDep,
            limit: Annotated[int, Query(ge=1, le=1000)] = 50) -> dict:
    """Registry events, newest first: who moved which alias, when and why."""
    return {"events": [asdict(e) for e in runtime.registry.history(name, limit=limit)]}


@router.post("/{name}/promote", summary="Promote a version to stable")
def promote(name: str, body: AliasBody, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Make `version` the stable version (refused if its schema does not match the task)."""
    if body.version is None:
        raise InvalidInput([{"field": "body.version", "message": "required to promote"}])
    return _changed(runtime, runtime.registry.promote(name, body.version, actor=_actor(caller), reason=body.reason))


@router.post("/{name}/canary", summary="Set the canary version and its traffic weight")
def canary(name: str, body: CanaryBody, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Route `weight` (0..1) of traffic, sticky by routing key, to `version` (409 without a passing offline
    evaluation unless `force` with a `reason`)."""
    if body.force and not (body.reason and body.reason.strip()):
        raise InvalidInput([{"field": "body.reason", "message": "required with force: why the version may take "
                                                                "traffic without a passing offline evaluation"}])
    _, why = require_evaluation(runtime.registry, runtime.lake, name, body.version, force=body.force,
                                reason=body.reason)
    return _changed(runtime, runtime.registry.set_canary(name, body.version, body.weight, actor=_actor(caller),
                                                         reason=why))


@router.delete("/{name}/canary", summary="Clear the canary")
def clear_canary(name: str, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Send all traffic back to stable."""
    return _changed(runtime, runtime.registry.clear_canary(name, actor=_actor(caller), reason="cleared via API"))


@router.post("/{name}/shadow", summary="Set or clear the shadow version")
def shadow(name: str, body: AliasBody, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Copy traffic to `version` off the response path (null clears it)."""
    return _changed(runtime, runtime.registry.set_shadow(name, body.version, actor=_actor(caller),
                                                         reason=body.reason))


@router.post("/{name}/rollback", summary="Roll back")
def rollback(name: str, body: ReasonBody, caller: AdminCaller, runtime: RuntimeDep) -> dict:
    """Clear an active canary, or else move stable back to the previous stable version."""
    return _changed(runtime, runtime.registry.rollback(name, actor=_actor(caller), reason=body.reason))
