"""Running a workflow spec: building each step's model payloads and the response.

Pure functions over a `context` dict, shared by the online engine and the batch executor.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from models._workflow_refs import Ref, parse_ref
from models.errors import WorkflowError

if TYPE_CHECKING:
    from models.workflows import StepSpec, WorkflowSpec

_SKIPPED = object()


def step_instances(step: StepSpec, context: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """The model payload(s) for `step`: one dict, or one per item for a for_each step.

    Returns None when a required input (or the for_each list) comes from a skipped step, so
    the caller skips or fails the step. Optional inputs whose value is None, or whose step was
    skipped, are left out so the task's default applies.
    """
    fields = step.contract.input.model_fields
    shared: dict[str, Any] = {}
    per_item: dict[str, Ref] = {}
    for key, value in step.inputs.items():
        ref = step.refs.get(key)
        if ref is not None and ref.kind == "item":
            per_item[key] = ref
            continue
        resolved = _resolve(ref, context, step.id) if ref is not None else value
        if resolved is _SKIPPED:
            if fields[key].is_required():
                return None
            continue
        if resolved is not None:
            shared[key] = resolved
    if step.for_each_ref is None:
        return [shared]
    items = _resolve(step.for_each_ref, context, step.id)
    if items is _SKIPPED:
        return None
    out = []
    for item in items or []:
        payload = dict(shared)
        for key, ref in per_item.items():
            value = _get(item, ref.field) if ref.field else item
            if value is not None:
                payload[key] = value
        out.append(payload)
    return out


def assemble_output(spec: WorkflowSpec, context: Mapping[str, Any]) -> dict[str, Any]:
    """The workflow's response: each output reference resolved (None when its step was skipped)."""
    out = {}
    for key, raw in spec.output.items():
        value = _resolve(parse_ref(raw), context, f"output {key!r}")
        out[key] = None if value is _SKIPPED else _plain(value)
    return out


def _resolve(ref: Ref, context: Mapping[str, Any], who: str) -> Any:
    if ref.kind == "input":
        return (context.get("input") or {}).get(ref.name)
    if ref.kind == "item":  # only reached through outputs, which the loader refuses
        raise WorkflowError(f"{who}: $item has no value outside a for_each step")
    if ref.name not in context:
        raise WorkflowError(f"{who} reads {ref.raw} but step {ref.name!r} has not run yet")
    out = context[ref.name]
    if out is None:
        return _SKIPPED
    if ref.star:
        return [_get(o, ref.field) for o in out] if ref.field else list(out)
    return _get(out, ref.field) if ref.field else out


def _get(obj: Any, field: str) -> Any:
    return getattr(obj, field) if isinstance(obj, BaseModel) else obj[field]


def _plain(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.model_dump()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
