"""Load-time checks of a workflow spec against the task contracts.

Every error is a `WorkflowError` naming the workflow and the step (or output field), so a bad
spec is refused when it is loaded, not when the first request reaches the faulty step.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from models._workflow_refs import RESERVED, Ref, accepts, list_item, non_none, parse_ref, type_name
from models.errors import WorkflowError
from models.fallbacks import BUILTINS
from models.schemas import TASKS

if TYPE_CHECKING:
    from models.workflows import StepSpec, WorkflowSpec


def check_spec(spec: WorkflowSpec) -> None:
    """Raise WorkflowError on the first problem: ids, tasks, fields, references, types, cycles."""
    seen: set[str] = set()
    for step in spec.steps:
        where = _where(spec, step)
        if step.id in seen:
            raise WorkflowError(f"{where}: duplicate step id; step ids must be unique")
        if step.id in RESERVED:
            raise WorkflowError(f"{where}: {step.id!r} is reserved for references; rename the step")
        if step.task not in TASKS:
            raise WorkflowError(
                f"{where}: unknown task {step.task!r}; known tasks: {', '.join(sorted(TASKS))}"
            )
        seen.add(step.id)
    for step in spec.steps:
        _check_step(spec, step)
    _check_acyclic(spec)
    output_types(spec)


def _check_step(spec: WorkflowSpec, step: StepSpec) -> None:
    where = _where(spec, step)
    fields = step.contract.input.model_fields
    unknown = sorted(set(step.inputs) - set(fields))
    if unknown:
        raise WorkflowError(
            f"{where}: unknown input field {unknown[0]!r} for task {step.task!r}; its fields: {', '.join(fields)}"
        )
    missing = [k for k, f in fields.items() if f.is_required() and k not in step.inputs]
    if missing:
        raise WorkflowError(f"{where}: missing required input {missing[0]!r} of task {step.task!r}")
    item_type = None
    if step.for_each_ref is not None:
        ref = step.for_each_ref
        if ref.kind == "item":
            raise WorkflowError(f"{where}: for_each cannot iterate over $item")
        list_type, _ = ref_type(spec, ref, where, step)
        item_type = list_item(list_type)
        if item_type is None:
            raise WorkflowError(
                f"{where}: for_each over a non-list: {ref.raw} is {type_name(list_type)}, not a list"
            )
    _check_fallback(spec, step)
    for key, value in step.inputs.items():
        target = fields[key]
        ref = step.refs.get(key)
        if ref is None:
            _check_literal(spec, where, key, value, target)
            continue
        src, may_be_absent = ref_type(spec, ref, where, step, item_type)
        if not accepts(target.annotation, src):
            raise WorkflowError(
                f"{where}: type mismatch for input {key!r}: task {step.task!r} expects "
                f"{type_name(target.annotation)} but {ref.raw} is {type_name(src)}"
            )
        if may_be_absent and target.is_required():
            raise WorkflowError(
                f"{where}: input {key!r} is required by task {step.task!r} but {ref.raw} is an optional "
                "request field; make the field required"
            )


def _check_fallback(spec: WorkflowSpec, step: StepSpec) -> None:
    fb = step.fallback
    if fb is None or fb.builtin is None:
        return
    where = _where(spec, step)
    if BUILTINS[fb.builtin] != step.task:
        raise WorkflowError(
            f"{where}: builtin fallback {fb.builtin!r} answers task {BUILTINS[fb.builtin]!r}, "
            f"not {step.task!r}"
        )
    if fb.builtin == "cosine_rank":
        missing = [k for k in ("query_embedding", "document_embeddings") if k not in step.refs]
        if missing:
            raise WorkflowError(
                f"{where}: builtin fallback 'cosine_rank' orders by the upstream embeddings; give the step "
                f"a {missing[0]!r} input from an embed step (e.g. $embed_query.embedding)"
            )


def _check_literal(spec: WorkflowSpec, where: str, key: str, value: Any, field: FieldInfo) -> None:
    # A reference missing its "$" would otherwise silently become a constant string.
    heads = "|".join(re.escape(n) for n in (*RESERVED, *(s.id for s in spec.steps)))
    if isinstance(value, str) and re.match(rf"^({heads})(\[\*\])?(\.|$)", value):
        raise WorkflowError(f"{where}: input {key!r} is the literal {value!r}; did you mean ${value}?")
    annotation, metadata = field.annotation, field.metadata
    try:
        TypeAdapter(Annotated[annotation, *metadata] if metadata else annotation).validate_python(value)
    except ValidationError as e:
        msg = e.errors()[0]["msg"]
        raise WorkflowError(
            f"{where}: literal {value!r} for input {key!r} is not {type_name(annotation)}: {msg}"
        ) from None


def ref_type(
    spec: WorkflowSpec, ref: Ref, where: str, step: StepSpec | None = None, item_type: Any = None
) -> tuple[Any, bool]:
    """(the referenced value's type, whether it may be absent from the request)."""
    if ref.kind == "input":
        if ref.name not in spec.input:
            known = ", ".join(spec.input) or "(none)"
            raise WorkflowError(f"{where}: {ref.raw} names unknown input field {ref.name!r}; inputs: {known}")
        f = spec.input[ref.name]
        return f.python_type, not f.required
    if ref.kind == "item":
        if step is None or step.for_each is None:
            raise WorkflowError(f"{where}: $item is only allowed inside a for_each step")
        if item_type is None:  # the for_each list itself is being typed
            raise WorkflowError(f"{where}: for_each cannot iterate over $item")
        if ref.field is None:
            return item_type, False
        if not (isinstance(item_type, type) and issubclass(item_type, BaseModel)):
            raise WorkflowError(
                f"{where}: {ref.raw}: the items are {type_name(item_type)}, which has no fields"
            )
        return _field_type(where, ref, item_type), False
    steps = {s.id: s for s in spec.steps}
    if ref.name not in steps:
        raise WorkflowError(
            f"{where}: {ref.raw} references unknown step {ref.name!r}; steps: {', '.join(steps)}"
        )
    source = steps[ref.name]
    if step is not None and source.id == step.id:
        raise WorkflowError(
            f"{where}: {ref.raw} references the step itself (a cycle: {step.id} -> {step.id})"
        )
    if ref.star and source.for_each is None:
        raise WorkflowError(
            f"{where}: {ref.raw}: [*] needs {source.id!r} to be a for_each step; use ${source.id}.FIELD"
        )
    if source.for_each is not None and ref.field and not ref.star:
        raise WorkflowError(
            f"{where}: {ref.raw}: {source.id!r} is a for_each step with one output per item; "
            f"use ${source.id}[*].{ref.field}"
        )
    out_model = source.contract.output
    tp = _field_type(where, ref, out_model, task=source.task) if ref.field else out_model
    return (list[tp] if source.for_each is not None else tp), False


def _field_type(where: str, ref: Ref, model: type[BaseModel], task: str | None = None) -> Any:
    if ref.field not in model.model_fields:
        owner = f"task {task!r} output" if task else model.__name__
        raise WorkflowError(
            f"{where}: {ref.raw}: {owner} has no field {ref.field!r}; its fields: {', '.join(model.model_fields)}"
        )
    return model.model_fields[ref.field].annotation


def _check_acyclic(spec: WorkflowSpec) -> None:
    deps = {s.id: sorted(s.dependencies) for s in spec.steps}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for dep in deps[node]:
            if state.get(dep) == 1:
                cycle = path[path.index(dep) :] + [dep]
                raise WorkflowError(
                    f"workflow {spec.name!r}, step {node!r}: steps form a cycle: {' -> '.join(cycle)}"
                )
            if dep not in state:
                visit(dep)
        path.pop()
        state[node] = 2

    for s in spec.steps:
        if s.id not in state:
            visit(s.id)


def output_types(spec: WorkflowSpec) -> dict[str, Any]:
    """Each output field's type; nullable when an optional request field or step may leave it empty."""
    skippable = _skippable_steps(spec)
    types = {}
    for key, raw in spec.output.items():
        where = f"workflow {spec.name!r}, output {key!r}"
        ref = parse_ref(raw)
        if ref.kind == "item":
            raise WorkflowError(f"{where}: $item is only allowed inside a for_each step")
        tp, may_be_absent = ref_type(spec, ref, where)
        types[key] = tp | None if may_be_absent or ref.name in skippable else tp
    return types


def _skippable_steps(spec: WorkflowSpec) -> set[str]:
    """Steps that are optional, or whose required inputs (or for_each list) read a skippable step."""
    skippable: set[str] = set()
    for layer in spec.levels():
        for s in layer:
            fields = s.contract.input.model_fields
            needed = [r for k, r in s.refs.items() if fields[k].is_required()]
            needed += [s.for_each_ref] if s.for_each_ref else []
            if s.optional or any(r.kind == "step" and r.name in skippable for r in needed):
                skippable.add(s.id)
    return skippable


def request_constraints(spec: WorkflowSpec) -> tuple[dict[str, list[Any]], dict[str, list[Any]]]:
    """Constraints the request fields inherit from the task fields they feed directly.

    Returns (per-item constraints of list fields iterated by for_each into `$item`,
    constraints of whole fields), both keyed by request field.
    """
    per_item: dict[str, list[Any]] = {}
    whole: dict[str, list[Any]] = {}
    for step in spec.steps:
        fields = step.contract.input.model_fields
        fe = step.for_each_ref
        for key, ref in step.refs.items():
            target = fields[key]
            if ref.kind == "input" and _same_type(spec.input[ref.name].python_type, target.annotation):
                whole.setdefault(ref.name, []).extend(target.metadata)
            elif ref.kind == "item" and ref.field is None and fe is not None and fe.kind == "input":
                item = list_item(spec.input[fe.name].python_type)
                if _same_type(item, target.annotation):
                    per_item.setdefault(fe.name, []).extend(target.metadata)
    return per_item, whole


def _same_type(src: Any, target: Any) -> bool:
    return any(src == t for t in non_none(target))


def _where(spec: WorkflowSpec, step: StepSpec) -> str:
    return f"workflow {spec.name!r}, step {step.id!r}"
