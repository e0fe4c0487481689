"""What the request log holds for one model: the inputs its calls got and the answers they gave.

`plan_items` turns `requests` rows into replay items, one per model call instance:

    single-model route (no workflow)  the logged input is the call's input: `{"instances": [...]}` (predict),
                                      `{"input": text | [texts]}` (embeddings) or the instance itself (rerank);
                                      the answers are `output["predictions"]`, the output itself, or (embed)
                                      the row's `embeddings` vectors
    workflow step                     the step's input is rebuilt from the request input when every step input
                                      is a `$input.FIELD` reference or a literal; the answer is read back through
                                      the workflow's `output` mapping (embedding vectors from `embeddings`)

Anything else is skipped and counted by reason, never guessed: a policy that did not keep the input
(hash, drop), a call that did not answer or was answered by a fallback or by the candidate itself, a step
fed by upstream outputs, an output that does not carry the step's answer. Framework-free.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from models.workflows import StepSpec, WorkflowSpec, is_ref, parse_ref

__all__ = ["KEPT_POLICIES", "Plan", "ReplayItem", "plan_items"]

KEPT_POLICIES = frozenset({"keep", "redact"})
_FIELDS = {"embed": ("text",), "classify": ("text",), "rerank": ("query", "documents")}


@dataclass(frozen=True)
class ReplayItem:
    """One logged model call instance: its input (task fields), the answer logged and who gave it."""

    request_id: str
    step: str
    version: str
    input: dict[str, Any]
    answer: dict[str, Any]
    latency_ms: float | None


@dataclass
class Plan:
    """The items to replay, what was skipped (reason -> count) and the versions that answered."""

    items: list[ReplayItem] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)
    requests: int = 0

    @property
    def baseline_versions(self) -> list[str]:
        return sorted({i.version for i in self.items})


def plan_items(rows: Sequence[Mapping[str, Any]], model: str, task: str, candidate: str,
               workflows: Mapping[str, WorkflowSpec]) -> Plan:
    """Replay items for `model` from `requests` rows (see the module docstring); rows without a call of
    `model` are ignored, the rest either give items or count in `skipped`."""
    plan = Plan()
    for row in rows:
        calls = [s for s in json.loads(row.get("steps") or "[]") if s.get("model") == model]
        if not calls:
            continue
        plan.requests += 1
        policy = row.get("pii_policy")
        if policy not in KEPT_POLICIES:
            plan.skipped[f"input not kept (pii policy {policy})"] += len(calls)
            continue
        if row.get("input") is None:
            plan.skipped["no input logged"] += len(calls)
            continue
        for call in calls:
            reason = _unusable(call, candidate)
            if reason is None:
                pairs, reason = _pairs(row, call, task, workflows)
            if reason is not None:
                plan.skipped[reason] += 1
                continue
            plan.items += [ReplayItem(row["request_id"], call.get("step") or model, str(call["version"]), inp, ans,
                                      row.get("latency_ms")) for inp, ans in pairs]
    return plan


def _unusable(call: Mapping[str, Any], candidate: str) -> str | None:
    if call.get("status") != "ok":
        return f"the call did not answer (status {call.get('status')})"
    if call.get("arm") == "fallback":
        return "answered by a fallback, not a version of the model"
    if call.get("version") is None:
        return "no version logged for the call"
    if str(call["version"]) == candidate:
        return "answered by the candidate itself"
    return None


def _pairs(row: Mapping[str, Any], call: Mapping[str, Any], task: str, workflows: Mapping[str, WorkflowSpec]
           ) -> tuple[list[tuple[dict, dict]], str | None]:
    inp, out = json.loads(row["input"]), json.loads(row["output"]) if row.get("output") else None
    vectors = row.get("embeddings")
    if out is None and not vectors:
        return [], "no output logged"
    if row.get("workflow") is None:
        instances, answers = _single_route(task, inp, out or {}, vectors)
    else:
        spec = workflows.get(row["workflow"])
        if spec is None:
            return [], f"workflow {row['workflow']!r} is not defined here"
        step = next((s for s in spec.steps if s.id == call.get("step")), None)
        if step is None:
            return [], f"workflow {spec.name!r} has no step {call.get('step')!r}"
        rebuilt, why = _step_input(spec, step, inp)
        if why:
            return [], why
        instances, answers = [rebuilt], [_step_answer(spec, step, out or {}, vectors)]
    if len(instances) != len(answers):
        return [], "the logged output does not align with the logged input"
    pairs = []
    for instance, answer in zip(instances, answers):
        x, y = _task_input(task, instance), _task_answer(task, answer)
        if x is None:
            return [], f"the logged input lacks the {task} fields {list(_FIELDS[task])}"
        if y is None:
            return [], "the logged output does not carry the model's answer"
        pairs.append((x, y))
    return pairs, None


def _single_route(task: str, inp: Any, out: Mapping[str, Any], vectors: list | None) -> tuple[list, list]:
    if isinstance(inp, dict) and isinstance(inp.get("instances"), list):
        instances = inp["instances"]
    elif task == "embed" and isinstance(inp, dict) and "input" in inp:
        texts = inp["input"] if isinstance(inp["input"], list) else [inp["input"]]
        instances = [{"text": t} for t in texts]
    else:
        instances = [inp]
    if isinstance(out.get("predictions"), list):
        answers = list(out["predictions"])
    elif isinstance(out.get("data"), list):  # OpenAI-style embeddings
        answers = list(out["data"])
    else:
        answers = [out] if out else [{} for _ in instances]
    if task == "embed" and vectors:
        answers = [{**(a or {}), "embedding": v} for a, v in zip(answers + [{}] * len(vectors), vectors)]
    return instances, answers


def _step_input(spec: WorkflowSpec, step: StepSpec, request_input: Any) -> tuple[dict, str | None]:
    if step.for_each is not None:
        return {}, f"step {step.id!r} of workflow {spec.name!r} runs for each item; its calls are not logged one by one"
    if not isinstance(request_input, dict):
        return {}, "the logged input is not an object"
    upstream = [v for v in step.inputs.values() if is_ref(v) and parse_ref(v).kind != "input"]
    if upstream:
        return {}, (f"step {step.id!r} of workflow {spec.name!r} takes upstream outputs ({', '.join(upstream)}); "
                    "its input is not in the log")
    return {k: request_input.get(parse_ref(v).name) if is_ref(v) else v for k, v in step.inputs.items()}, None


def _step_answer(spec: WorkflowSpec, step: StepSpec, out: Mapping[str, Any], vectors: list | None) -> dict:
    answer: dict[str, Any] = {}
    for key, raw in spec.output.items():
        ref = parse_ref(raw)
        if ref.kind == "step" and ref.name == step.id and not ref.star:
            if ref.field is None and isinstance(out.get(key), dict):
                answer.update(out[key])
            elif ref.field is not None and key in out and out[key] is not None:
                answer[ref.field] = out[key]
            if ref.field == "embedding" and vectors:
                answer["embedding"] = vectors[0]
    return answer


def _task_input(task: str, instance: Any) -> dict | None:
    if not isinstance(instance, dict) or any(instance.get(f) in (None, "") for f in _FIELDS[task]):
        return None
    if task == "rerank":
        docs = [d.get("text") if isinstance(d, dict) else d for d in instance["documents"]]
        return {"query": instance["query"], "documents": docs} if all(isinstance(d, str) for d in docs) else None
    return {"text": instance["text"]}


def _task_answer(task: str, answer: Any) -> dict | None:
    if not isinstance(answer, dict):
        return None
    if task == "embed":
        vec = answer.get("embedding")
        return {"embedding": [float(v) for v in vec]} if vec else None
    if task == "classify":
        return {"label": answer["label"], "scores": answer.get("scores")} if answer.get("label") is not None else None
    results = answer.get("results")
    if not results or not all(isinstance(r, dict) and "index" in r for r in results):
        return None
    return {"results": results}
