"""Replay logged requests through a candidate version before it takes traffic: the offline evaluation.

    requests ──assets.replay_log.plan_items──▶ items (a call's input, the answer logged, the version that gave it)
             ──candidate in-process (assets.canary_replay.run_version)──▶ its answers, timed per item
             ──canary_replay.compare_outputs + score distance──▶ canary_guard.judge_replay──▶ replay_evaluations

The statistics are the canary guard's: mean cosine (embed), label agreement (classify), top-1 agreement
and top-k overlap (rerank), each with its upper confidence bound; a replay passes when no guardrail is
breached and at least `min_replay` items were compared. Latency compares the candidate in-process per item
with the logged requests' latency over HTTP (indicative only: not the same path). Framework-free: the CLI
(`tandem replay`) and the Dagster asset (`replay_evaluation`) both call `evaluate_candidate`.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, date, datetime
from typing import Any

import numpy as np
import pyarrow.compute as pc

from assets.canary_guard import judge_replay
from assets.canary_replay import REPLAY_TASKS, compare_outputs, run_version
from assets.replay_log import Plan, ReplayItem, plan_items
from assets.stats import p95
from lakehouse import Lake
from models.executor import BatchFailedError, OpResolver
from models.registry import Registry
from models.workflows import WorkflowSpec

__all__ = ["ReplayFilters", "ReplayThresholds", "evaluate_candidate", "read_logged", "score_distance"]

_COLUMNS = ["request_id", "tenant", "day", "ts", "route", "workflow", "steps", "pii_policy", "input", "output",
            "embeddings", "latency_ms"]


@dataclass(frozen=True)
class ReplayFilters:
    """Which logged requests to replay: from `since` (a UTC day), of `tenant`, the newest `limit` of them."""

    since: date | None = None
    tenant: str | None = None
    limit: int | None = None


@dataclass(frozen=True)
class ReplayThresholds:
    """The replay guardrails; `assets.canary.CanaryConfig` takes its defaults from here."""

    confidence: float = 0.95
    min_replay: int = 30
    max_accuracy_drop: float = 0.02
    min_label_agreement: float = 0.85
    min_embedding_agreement: float = 0.98
    min_top1_agreement: float = 0.8
    min_topk_overlap: float = 0.8
    top_k: int = 3
    batch_size: int = 32


Progress = Callable[[int, int], None]


def read_logged(lake: Lake, filters: ReplayFilters) -> list[dict]:
    """`requests` rows matching the filters, newest first (the model is picked out by `plan_items`)."""
    flt = None
    if filters.tenant is not None:
        flt = pc.field("tenant") == filters.tenant
    if filters.since is not None:
        day = pc.field("day") >= filters.since
        flt = day if flt is None else flt & day
    rows = lake.read("requests", filter=flt, columns=_COLUMNS).to_pylist()
    return sorted(rows, key=lambda r: (r["ts"], r["request_id"]), reverse=True)


def score_distance(task: str, base: dict, cand: dict | None) -> float | None:
    """How far the candidate's scores are from the logged ones for one item (None when not comparable).

    embed: Euclidean distance of the vectors; classify: total-variation distance of the label scores;
    rerank: mean absolute score difference over the documents both ranked.
    """
    if cand is None:
        return None
    if task == "embed":
        a, b = np.asarray(base["embedding"], float), np.asarray(cand["embedding"], float)
        return float(np.linalg.norm(a - b)) if a.shape == b.shape else None
    if task == "classify":
        sa, sb = base.get("scores") or {}, cand.get("scores") or {}
        if not sa or not sb:
            return None
        return 0.5 * sum(abs(sa.get(k, 0.0) - sb.get(k, 0.0)) for k in set(sa) | set(sb))
    a = {r["index"]: r.get("score") for r in base["results"]}
    b = {r["index"]: r.get("score") for r in cand["results"]}
    common = [i for i in a if i in b and a[i] is not None and b[i] is not None]
    return float(np.mean([abs(a[i] - b[i]) for i in common])) if common else None


def evaluate_candidate(
    lake: Lake, registry: Registry, resolve: OpResolver, workflows: Mapping[str, WorkflowSpec], model: str,
    candidate: str, filters: ReplayFilters = ReplayFilters(), thresholds: ReplayThresholds = ReplayThresholds(),
    *, run_id: str | None = None, now: datetime | None = None, progress: Progress | None = None,
) -> dict[str, Any]:
    """Replay `model`'s logged calls through `candidate` and return the `replay_evaluations` row (not written)."""
    mv = registry.get(model, candidate)
    plan = _plan(lake, model, mv.task, mv.version, workflows, filters)
    notes: list[str] = []
    answers: list[dict | None] = []
    per_item_ms: list[float] = []
    if mv.task not in REPLAY_TASKS:
        notes.append(f"no replay comparison for task {mv.task!r}")
    else:
        answers, per_item_ms = _run(mv.task, model, mv.version, plan.items, resolve, thresholds.batch_size, notes,
                                    progress)
    rep = compare_outputs(mv.task, [i.answer for i in plan.items], answers, top_k=thresholds.top_k)
    rep.notes.extend(notes)
    j = judge_replay(rep, thresholds)
    distances = [d for i, a in zip(plan.items, answers) if (d := score_distance(mv.task, i.answer, a)) is not None]
    logged = [i.latency_ms for i in plan.items if i.latency_ms is not None]
    ev = j.evidence | {
        "requests_considered": plan.requests, "skipped": dict(plan.skipped),
        "candidate_failures": sum(a is None for a in answers), "thresholds": asdict(thresholds),
        "latency_note": "candidate: in-process per item; logged: the whole request over HTTP",
    }
    reasons = j.reasons + [f"skipped {n}: {why}" for why, n in sorted(plan.skipped.items())]
    filt = {"since": filters.since.isoformat() if filters.since else None, "tenant": filters.tenant,
            "limit": filters.limit}
    return {
        "replay_id": uuid.uuid4().hex, "model": model, "task": mv.task, "candidate_version": mv.version,
        "baseline_versions": json.dumps(plan.baseline_versions), "filters": json.dumps(filt),
        "tenant": filters.tenant, "n_replayed": rep.n, "n_skipped": sum(plan.skipped.values()),
        "skipped": json.dumps(dict(plan.skipped), sort_keys=True),
        "agreement": ev.get("agreement"), "agreement_upper": ev.get("agreement_upper"),
        "topk_overlap": ev.get("topk_overlap"),
        "score_distance": float(np.mean(distances)) if distances else None,
        "candidate_p50_ms": _p50(per_item_ms), "candidate_p95_ms": p95(per_item_ms) if per_item_ms else None,
        "logged_p50_ms": _p50(logged), "logged_p95_ms": p95(logged) if logged else None,
        "confidence": thresholds.confidence, "passed": j.decision == "pass",
        "reasons": json.dumps(reasons) if reasons else None, "run_id": run_id,
        "evaluated_at": now or datetime.now(UTC), "evidence": json.dumps(ev, sort_keys=True, default=str),
    }


def _plan(lake: Lake, model: str, task: str, candidate: str, workflows: Mapping[str, WorkflowSpec],
          filters: ReplayFilters) -> Plan:
    rows = read_logged(lake, filters)
    if filters.limit is not None:
        mentions = [r for r in rows if any(s.get("model") == model for s in json.loads(r.get("steps") or "[]"))]
        rows = mentions[: filters.limit]
    return plan_items(rows, model, task, candidate, workflows)


def _run(task: str, model: str, version: str, items: list[ReplayItem], resolve: OpResolver, batch_size: int,
         notes: list[str], progress: Progress | None) -> tuple[list[dict | None], list[float]]:
    """The candidate's answers (None where it failed) and its in-process time per item, batch by batch."""
    answers: list[dict | None] = []
    per_item: list[float] = []
    if items:
        resolve(model, version)  # load once before timing, so the first batch does not pay for it
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        began = time.perf_counter()
        try:
            out = run_version(task, model, version, [i.input for i in chunk], resolve, batch_size=batch_size)
        except BatchFailedError as exc:
            out = [None] * len(chunk)
            notes.append(f"the candidate failed a whole batch: {exc}")
        per_item += [(time.perf_counter() - began) * 1000 / len(chunk)] * len(chunk)
        answers += out
        if progress:
            progress(len(answers), len(items))
    return answers, per_item


def _p50(values: list[float]) -> float | None:
    return float(np.median(values)) if values else None
