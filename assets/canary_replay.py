"""Replay: the same inputs through the stable and the canary version in-process, compared item by item.

Live traffic cannot compare two versions' outputs: each arm sees other inputs. The replay can, so
the canary guard judges output agreement here, per task:

    embed     cosine of the two embeddings of each text
    classify  label agreement of the two versions, and each version's accuracy where rows are labelled
    rerank    top-1 agreement and top-k overlap on (query, candidates) built from the evaluation texts
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from models.executor import BatchFailedError, OpResolver, run_workflow_batch
from models.workflows import parse_workflow

__all__ = ["REPLAY_TASKS", "Replay", "compare_outputs", "replay", "rerank_queries", "run_version"]

_INPUTS = {
    "embed": ({"text": "str"}, {"text": "$input.text"}, {"embedding": "$probe.embedding"}),
    "classify": ({"text": "str"}, {"text": "$input.text"}, {"label": "$probe.label", "scores": "$probe.scores"}),
    "rerank": ({"query": "str", "documents": {"type": "list[str]", "max_items": 256}},
               {"query": "$input.query", "documents": "$input.documents"}, {"results": "$probe.results"}),
}
REPLAY_TASKS = frozenset(_INPUTS)


@dataclass
class Replay:
    """Per-item comparisons of the two versions on the same inputs (lists are aligned, one entry per item)."""

    task: str
    n: int = 0
    cosines: list[float] = field(default_factory=list)  # embed
    agree: list[bool] = field(default_factory=list)  # classify: same label; rerank: same top-1
    topk_overlap: list[float] = field(default_factory=list)  # rerank: |top-k ∩ top-k| / k
    correct_stable: list[bool] = field(default_factory=list)  # classify, labelled rows only
    correct_canary: list[bool] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def rerank_queries(rows: Sequence[dict], candidates: int = 8) -> list[dict]:
    """(query, candidates) pairs from evaluation texts: a text's first words against it and its neighbours."""
    texts = [r["text"] for r in rows if r.get("text")]
    k = min(candidates, len(texts))
    out = []
    for i, text in enumerate(texts):
        query = " ".join(text.split()[:6])
        docs = [texts[(i + j) % len(texts)] for j in range(k)]
        shift = i % k  # the matching text is not always first
        out.append({"query": query, "documents": docs[shift:] + docs[:shift]})
    return out


def run_version(task: str, model: str, version: str, inputs: Sequence[dict], resolve: OpResolver,
                *, batch_size: int = 64) -> list[dict | None]:
    """`inputs` (the task's input fields) through one version of `model` in-process; None where an item failed.

    Raises `BatchFailedError` when every item fails.
    """
    input_types, step_inputs, output = _INPUTS[task]
    spec = parse_workflow({
        "name": f"canary-probe-{task}", "version": 1, "input": input_types,
        "steps": [{"id": "probe", "model": model, "task": task, "inputs": step_inputs, "retry": {"attempts": 1}}],
        "output": output,
    })
    rows = run_workflow_batch(spec, list(inputs), resolve, {model: version}, batch_size=batch_size).rows
    return [r.output for r in rows]


def compare_outputs(task: str, base: Sequence[dict | None], cand: Sequence[dict | None],
                    labels: Sequence[str | None] | None = None, *, top_k: int = 3, result: Replay | None = None
                    ) -> Replay:
    """Compare aligned baseline and candidate outputs item by item (a missing baseline is skipped, a
    missing candidate output disagrees); see the module docstring."""
    result = result or Replay(task)
    for i, (b, c_out) in enumerate(zip(base, cand)):
        if b is None:
            continue  # the baseline failed on this item: nothing to compare with
        result.n += 1
        if task == "embed":
            result.cosines.append(_cosine(b["embedding"], c_out["embedding"]) if c_out else 0.0)
        elif task == "classify":
            result.agree.append(c_out is not None and c_out["label"] == b["label"])
            label = labels[i] if labels is not None else None
            if label is not None:
                result.correct_stable.append(b["label"] == label)
                result.correct_canary.append(c_out is not None and c_out["label"] == label)
        else:
            top_b = [r["index"] for r in b["results"][:top_k]]
            top_c = [r["index"] for r in c_out["results"][:top_k]] if c_out else []
            result.agree.append(bool(top_c) and bool(top_b) and top_b[0] == top_c[0])
            result.topk_overlap.append(len(set(top_b) & set(top_c)) / max(1, len(top_b)))
    return result


def replay(task: str, model: str, stable: str, canary: str, rows: Sequence[dict], resolve: OpResolver,
           *, batch_size: int = 64, top_k: int = 3, candidates: int = 8) -> Replay:
    """Run `rows` through both versions of `model` and compare them; see the module docstring.

    A stable version that fails every row raises (the evaluation cannot be trusted); a canary that
    fails every row, or a row, counts as disagreeing on it.
    """
    result = Replay(task)
    if task not in _INPUTS:
        result.notes.append(f"no replay comparison for task {task!r}")
        return result
    if not rows:
        result.notes.append("no evaluation rows")
        return result
    inputs = rerank_queries(rows, candidates) if task == "rerank" else [{"text": r["text"]} for r in rows]
    base = run_version(task, model, stable, inputs, resolve, batch_size=batch_size)
    try:
        cand: list[dict | None] = run_version(task, model, canary, inputs, resolve, batch_size=batch_size)
    except BatchFailedError as exc:
        cand = [None] * len(inputs)
        result.notes.append(f"canary failed on every evaluation row: {exc}")
    labels = [r.get("label") for r in rows] if task == "classify" else None
    return compare_outputs(task, base, cand, labels, top_k=top_k, result=result)


def _cosine(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return 0.0  # another output space: no agreement at all
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / denom) if denom else 0.0
