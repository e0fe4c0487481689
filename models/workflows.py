"""Workflow specs: named, versioned DAGs of model steps, loaded from YAML and checked against
the task contracts before anything runs.

The same spec drives both executors. The online engine walks `spec.levels()` (steps in one
level are independent and run concurrently), builds each step's model payloads with
`step_instances(step, context)` and the response with `assemble_output(spec, context)`; the
batch executor does the same per row of an Arrow batch. `context` is
`{"input": request, "<step id>": output dict | list of dicts (for_each) | None (skipped)}`.

    name: search
    version: 1
    input: {query: str, documents: {type: list[str], max_items: 256}}
    steps:
      - {id: embed_query, model: embedder, task: embed, inputs: {text: $input.query}}
      - id: embed_documents
        model: embedder
        task: embed
        for_each: $input.documents
        inputs: {text: $item}
      ...
    output: {query_embedding: $embed_query.embedding}
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal

import annotated_types as at
import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from models._workflow_refs import (
    INPUT_TYPES,
    Ref,
    is_ref,
    list_item,
    merge_constraints,
    parse_ref,
)
from models._workflow_run import assemble_output, step_instances
from models.errors import WorkflowError
from models.fallbacks import EMBED_MODEL_TASK
from models.schemas import TASKS, Task

__all__ = [
    "BUILTIN_WORKFLOWS",
    "Fallback",
    "InputField",
    "RetryPolicy",
    "StepSpec",
    "WorkflowSpec",
    "assemble_output",
    "load_workflow",
    "load_workflows",
    "parse_workflow",
    "step_instances",
]

BUILTIN_WORKFLOWS = Path(__file__).parent / "workflows"
"""The workflows Tandem ships (classify, enrich, search)."""

_ID = r"^[A-Za-z_][A-Za-z0-9_]*$"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def __getstate__(self) -> dict[Any, Any]:
        # Drop cached_property values (e.g. the generated input model class, which cannot be
        # pickled) so specs can cross process boundaries (Dagster, multiprocessing).
        state = super().__getstate__()
        state["__dict__"] = {k: v for k, v in state["__dict__"].items() if k in type(self).model_fields}
        return state


class InputField(_Spec):
    """One request field: its type, whether it is required and, for lists, a size cap."""

    type: Literal["str", "int", "float", "bool", "list[str]", "list[float]"]
    required: bool = True
    max_items: int | None = Field(default=None, ge=1)
    description: str | None = None

    @model_validator(mode="after")
    def _max_items_for_lists(self) -> InputField:
        if self.max_items is not None and not self.type.startswith("list"):
            raise ValueError(f"max_items only applies to list types, not {self.type}")
        return self

    @property
    def python_type(self) -> Any:
        return INPUT_TYPES[self.type]


class RetryPolicy(_Spec):
    """How often a step is attempted (attempts=2 means one retry) and the exponential backoff."""

    attempts: int = Field(default=2, ge=1, le=10)
    backoff_ms: int = Field(default=25, ge=0)
    max_backoff_ms: int = Field(default=400, ge=0)

    def backoff_before(self, attempt: int) -> float:
        """Milliseconds to wait before attempt number `attempt` (2, 3, ...)."""
        return float(min(self.max_backoff_ms, self.backoff_ms * 2 ** max(attempt - 2, 0)))


class Fallback(_Spec):
    """What answers when a step's attempts are exhausted.

    Either another version and/or model of the same task (`model`, `version`), or a built-in that
    needs no server of the step's model (`builtin`, see `models.fallbacks`): `cosine_rank` (rerank)
    calls nothing; `nearest_label` (classify) calls the embed model `model` (version `version`,
    default its stable one) and chooses among `labels` (a list, or label -> the text embedded for it).
    """

    model: str | None = None
    version: str | None = None
    builtin: Literal["cosine_rank", "nearest_label"] | None = None
    labels: list[str] | dict[str, str] | None = None

    @field_validator("version", mode="before")
    @classmethod
    def _version_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) and not isinstance(v, bool) else v

    @model_validator(mode="after")
    def _something_to_fall_back_to(self) -> Fallback:
        if self.builtin is None:
            if self.model is None and self.version is None:
                raise ValueError("a fallback needs a model, a version or both (or a builtin)")
            if self.labels is not None:
                raise ValueError("labels only apply to builtin: nearest_label")
        elif self.builtin == "cosine_rank":
            given = [k for k in ("model", "version", "labels") if getattr(self, k) is not None]
            if given:
                raise ValueError(
                    f"builtin cosine_rank takes no {given[0]}: it orders the documents by the step's own "
                    "query_embedding and document_embeddings inputs"
                )
        elif self.builtin == "nearest_label":
            if self.model is None:
                raise ValueError("builtin nearest_label needs the embed model it calls, e.g. model: embedder")
            labels = list(self.labels or [])
            if len(labels) < 2:
                raise ValueError("builtin nearest_label needs labels: at least two, e.g. [sports, finance]")
            if len(set(labels)) != len(labels) or any(not str(x).strip() for x in labels):
                raise ValueError("nearest_label labels must be unique and non-empty")
            if isinstance(self.labels, dict) and any(not p.strip() for p in self.labels.values()):
                raise ValueError("nearest_label label prompts must be non-empty")
        return self

    @property
    def model_task(self) -> str | None:
        """The task `model` must serve: the step's own (None) or the built-in's (e.g. embed)."""
        return EMBED_MODEL_TASK.get(self.builtin) if self.builtin else None


class StepSpec(_Spec):
    """One model call (or one batch of calls with `for_each`) in a workflow."""

    id: str = Field(pattern=_ID)
    model: str
    task: str
    inputs: dict[str, Any] = Field(default_factory=dict)
    for_each: str | None = None
    timeout_ms: int = Field(default=2000, ge=1)
    retry: RetryPolicy = Field(default_factory=RetryPolicy)
    fallback: Fallback | None = None
    optional: bool = False

    @field_validator("inputs")
    @classmethod
    def _parse_refs(cls, inputs: dict[str, Any]) -> dict[str, Any]:
        for value in inputs.values():
            if is_ref(value):
                parse_ref(value)
        return inputs

    @field_validator("for_each")
    @classmethod
    def _for_each_is_ref(cls, v: str | None) -> str | None:
        if v is not None:
            if not is_ref(v):
                raise ValueError(f"for_each must reference a list ($input.FIELD or $STEP.FIELD), got {v!r}")
            parse_ref(v)
        return v

    @cached_property
    def refs(self) -> dict[str, Ref]:
        """The inputs that are references (the rest are literals), by task input field."""
        return {k: parse_ref(v) for k, v in self.inputs.items() if is_ref(v)}

    @cached_property
    def for_each_ref(self) -> Ref | None:
        return parse_ref(self.for_each) if self.for_each else None

    @property
    def dependencies(self) -> set[str]:
        """The ids of the steps whose outputs this step reads."""
        refs = [*self.refs.values(), *([self.for_each_ref] if self.for_each_ref else [])]
        return {r.name for r in refs if r.kind == "step" and r.name}

    @property
    def contract(self) -> Task:
        return TASKS[self.task]


class WorkflowSpec(_Spec):
    """A named, versioned DAG of steps with typed request fields and a declared output."""

    name: str = Field(pattern=_NAME)
    version: int = Field(ge=1)
    description: str = ""
    deadline_ms: int = Field(default=5000, ge=1)
    input: dict[str, InputField] = Field(default_factory=dict)
    steps: list[StepSpec] = Field(min_length=1)
    output: dict[str, str] = Field(min_length=1)

    @field_validator("input", mode="before")
    @classmethod
    def _shorthand_types(cls, v: Any) -> Any:
        if isinstance(v, dict):
            return {k: {"type": t} if isinstance(t, str) else t for k, t in v.items()}
        return v

    @field_validator("output")
    @classmethod
    def _outputs_are_refs(cls, output: dict[str, str]) -> dict[str, str]:
        for key, value in output.items():
            if not is_ref(value):
                raise ValueError(f"output {key!r} must be a reference such as $STEP.FIELD, got {value!r}")
            parse_ref(value)
        return output

    @model_validator(mode="after")
    def _check_graph_and_types(self) -> WorkflowSpec:
        from models._workflow_check import check_spec

        check_spec(self)
        return self

    def step(self, step_id: str) -> StepSpec:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise WorkflowError(f"workflow {self.name!r} has no step {step_id!r}; steps: {self._step_ids()}")

    def levels(self) -> list[list[StepSpec]]:
        """Topological layers: every step's dependencies are in earlier layers."""
        return [list(layer) for layer in self._levels]

    def parallel_steps(self) -> frozenset[str]:
        """Ids of the steps that may run at the same time as another step (neither needs the other,
        directly or through other steps); e.g. both steps of `enrich`, neither of a chain."""
        return self._parallel_steps

    def models(self) -> set[str]:
        """Every registry model a run may call, fallbacks included."""
        names = {s.model for s in self.steps}
        return names | {s.fallback.model for s in self.steps if s.fallback and s.fallback.model}

    def input_model(self) -> type[BaseModel]:
        """The request body's pydantic model (extra fields forbidden).

        Besides the declared types it carries the length/bound constraints of the task fields
        each request field feeds (e.g. `text` min length 1), so bad requests fail at the edge.
        """
        return self._input_model

    def output_model(self) -> type[BaseModel]:
        """The response's pydantic model; fields that an optional step may leave out are nullable."""
        return self._output_model

    def check_models(self, model_tasks: Mapping[str, str]) -> None:
        """Check each step's model (and fallback model) exists with the step's task (a built-in
        fallback's model: the task the built-in needs, e.g. embed for nearest_label).

        `model_tasks` maps model name -> task, e.g. `{s.name: s.task for s in registry.list_models()}`.
        """
        for s in self.steps:
            fb_task = (s.fallback and s.fallback.model_task) or s.task
            for role, model, task in (("model", s.model, s.task),
                                      ("fallback model", s.fallback and s.fallback.model, fb_task)):
                if not model:
                    continue
                where = f"workflow {self.name!r}, step {s.id!r}"
                if model not in model_tasks:
                    raise WorkflowError(f"{where}: {role} {model!r} is not registered")
                if model_tasks[model] != task:
                    raise WorkflowError(
                        f"{where}: {role} {model!r} serves task {model_tasks[model]!r}, "
                        f"but the step needs {task!r}"
                    )

    def _step_ids(self) -> str:
        return ", ".join(s.id for s in self.steps)

    @cached_property
    def _levels(self) -> tuple[tuple[StepSpec, ...], ...]:
        done: set[str] = set()
        layers: list[tuple[StepSpec, ...]] = []
        pending = list(self.steps)
        while pending:
            layer = tuple(s for s in pending if s.dependencies <= done)
            layers.append(layer)  # non-empty: check_spec refused cycles
            done |= {s.id for s in layer}
            pending = [s for s in pending if s.id not in done]
        return tuple(layers)

    @cached_property
    def _parallel_steps(self) -> frozenset[str]:
        upstream: dict[str, set[str]] = {}
        for layer in self._levels:
            for s in layer:
                upstream[s.id] = {d for dep in s.dependencies for d in (dep, *upstream[dep])}
        return frozenset(
            a for a in upstream
            if any(b != a and b not in upstream[a] and a not in upstream[b] for b in upstream)
        )

    @cached_property
    def _input_model(self) -> type[BaseModel]:
        from models._workflow_check import request_constraints

        item_meta, list_meta = request_constraints(self)
        fields: dict[str, Any] = {}
        for key, f in self.input.items():
            tp = f.python_type
            item_constraints = merge_constraints(item_meta.get(key, []))
            if item_constraints:
                tp = list[Annotated[list_item(tp), *item_constraints]]
            meta = list(list_meta.get(key, []))
            if f.max_items is not None:
                meta.append(at.MaxLen(f.max_items))
            tp = Annotated[tp, *merge_constraints(meta)] if meta else tp
            if f.required:
                fields[key] = (tp, Field(description=f.description))
            else:
                fields[key] = (tp | None, Field(default=None, description=f.description))
        return create_model(f"{_camel(self.name)}Input", __config__=ConfigDict(extra="forbid"), **fields)

    @cached_property
    def _output_model(self) -> type[BaseModel]:
        from models._workflow_check import output_types

        fields = {k: (tp, ...) for k, tp in output_types(self).items()}
        return create_model(f"{_camel(self.name)}Output", **fields)


# --- loading ----------------------------------------------------------------------------


def parse_workflow(source: str | Mapping[str, Any], *, origin: str | None = None) -> WorkflowSpec:
    """Validate a spec given as YAML text or an already-parsed mapping."""
    where = f" ({origin})" if origin else ""
    if isinstance(source, str):
        try:
            data = yaml.safe_load(source)
        except yaml.YAMLError as e:
            hint = ""
            if "flow mapping" in str(e) or "flow sequence" in str(e):
                hint = ' (inside { } quote values containing [ ] or commas, e.g. {type: "list[str]"})'
            raise WorkflowError(f"workflow{where} is not valid YAML{hint}: {e}") from None
    else:
        data = source
    if not isinstance(data, Mapping):
        raise WorkflowError(f"workflow{where} must be a mapping with name, version, input, steps, output")
    try:
        return WorkflowSpec.model_validate(dict(data))
    except ValidationError as e:
        raise WorkflowError(_describe(e, data, where)) from None
    except WorkflowError as e:
        if origin:
            raise WorkflowError(f"{e}{where}") from None
        raise


def load_workflow(path: Path | str) -> WorkflowSpec:
    """Load one YAML spec file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise WorkflowError(f"cannot read workflow file {path}: {e}") from None
    return parse_workflow(text, origin=str(path))


def load_workflows(directory: Path | str = BUILTIN_WORKFLOWS) -> dict[str, WorkflowSpec]:
    """Load every `*.yaml` in `directory`, keyed by workflow name (names must be unique)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise WorkflowError(f"workflow directory {directory} does not exist")
    specs: dict[str, WorkflowSpec] = {}
    origins: dict[str, Path] = {}
    for path in sorted(directory.glob("*.yaml")):
        spec = load_workflow(path)
        if spec.name in specs:
            raise WorkflowError(
                f"workflow {spec.name!r} is defined twice: in {origins[spec.name]} and in {path}"
            )
        specs[spec.name], origins[spec.name] = spec, path
    return specs


def _describe(error: ValidationError, data: Mapping[str, Any], where: str) -> str:
    name = data.get("name", "?")
    steps = data.get("steps") if isinstance(data.get("steps"), list) else []
    lines = []
    for err in error.errors():
        loc = list(err["loc"])
        subject = ""
        if len(loc) >= 2 and loc[0] == "steps" and isinstance(loc[1], int) and loc[1] < len(steps):
            raw = steps[loc[1]]
            sid = raw.get("id") if isinstance(raw, Mapping) else None
            subject = f", step {sid!r}" if sid else f", step #{loc[1] + 1}"
            loc = loc[2:]
        path = ".".join(str(p) for p in loc)
        msg = re.sub(r"^Value error, ", "", err["msg"])
        lines.append(f"workflow {name!r}{subject}: {path + ': ' if path else ''}{msg}")
    return "; ".join(lines) + where


def _camel(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[-_]", name))
