"""Canary evaluation: each active canary against its stable version, on live traffic and on a labelled set.

Live traffic (the `predictions` log over a window): error rate, p95 latency and the distance
between the arms' outputs (total variation of labels; PSI of embedding means / top scores).
Replay (in-process, through the batch executor): classification accuracy of both versions on
labelled documents (or the demo corpus); for embeddings, the mean cosine agreement of the canary
with stable. The verdict goes to `canary_evaluations`; the blocking check `canary_guardrails`
fails the run when any canary breached a guardrail, and the canary-guard sensor acts on the table.
"""

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import numpy as np
import pyarrow.compute as pc

from assets.resources import LakeResource, ModelLoader, RegistryResource
from assets.stats import p95, parse_summaries, psi, tv_distance
from assets.training import labelled_documents
from lakehouse import Lake
from models.corpus import generate_demo_corpus
from models.executor import BatchFailedError, OpResolver, run_workflow_batch
from models.registry import AliasState
from models.workflows import parse_workflow


class CanaryConfig(dg.Config):
    """The live-traffic window and the guardrails a canary must stay within."""

    window_minutes: int = 60
    min_requests: int = 20  # per arm; below it the live guardrails are not applied (not enough evidence)
    max_error_rate_increase: float = 0.02
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 25.0
    max_output_distance: float = 0.25
    eval_size: int = 200
    max_accuracy_drop: float = 0.02
    min_embedding_agreement: float = 0.98
    batch_size: int = 64


@dataclass
class Arm:
    """One arm's live traffic: requests, errors, latencies and output summaries."""

    requests: int
    errors: int
    latencies: list[float]
    summaries: list[dict[str, Any]]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


def live_arms(lake: Lake, model: str, stable: str, canary: str, start: datetime, end: datetime) -> dict[str, Arm]:
    """The stable and canary arms of `model`'s logged calls in [start, end] (skipped calls left out)."""
    flt = ((pc.field("model") == model) & (pc.field("day") >= start.date()) & (pc.field("ts") >= start)
           & (pc.field("ts") <= end) & (pc.field("status") != "skipped"))
    rows = lake.read("predictions", filter=flt,
                     columns=["version", "arm", "status", "latency_ms", "output_summary"]).to_pylist()
    arms = {}
    for arm, version in (("stable", stable), ("canary", canary)):
        mine = [r for r in rows if r["version"] == version and r["arm"] == arm]
        ok = [r for r in mine if r["status"] == "ok"]
        arms[arm] = Arm(
            requests=len(mine), errors=sum(r["status"] == "error" for r in mine),
            latencies=[r["latency_ms"] for r in ok if r["latency_ms"] is not None],
            summaries=parse_summaries(r["output_summary"] for r in ok),
        )
    return arms


def output_distance(stable: list[dict], canary: list[dict]) -> float | None:
    """TV distance of labels when the outputs are labels, else PSI of the main numeric summary."""
    for key, distance in (("label", tv_distance), ("mean", psi), ("top_score", psi)):
        a = [s[key] for s in stable if s.get(key) is not None]
        b = [s[key] for s in canary if s.get(key) is not None]
        if a and b:
            return distance(a, b)
    return None


_PROBE_OUTPUT = {"classify": {"label": "$probe.label"}, "embed": {"embedding": "$probe.embedding"}}


def replay_quality(
    task: str, model: str, stable: str, canary: str, rows: list[dict], resolve: OpResolver, batch_size: int
) -> tuple[float | None, float | None, list[str]]:
    """(stable quality, canary quality, notes) on `rows`: accuracy for classify, cosine agreement for embed."""
    if task not in _PROBE_OUTPUT or not rows:
        return None, None, [f"no offline quality measure for task {task!r}" if rows else "no evaluation rows"]
    spec = parse_workflow({
        "name": f"canary-probe-{task}", "version": 1, "input": {"text": "str"},
        "steps": [{"id": "probe", "model": model, "task": task, "inputs": {"text": "$input.text"},
                   "retry": {"attempts": 1}}],
        "output": _PROBE_OUTPUT[task],
    })
    inputs = [{"text": r["text"]} for r in rows]
    base = run_workflow_batch(spec, inputs, resolve, {model: stable}, batch_size=batch_size)
    try:
        cand = run_workflow_batch(spec, inputs, resolve, {model: canary}, batch_size=batch_size).rows
        notes = []
    except BatchFailedError as exc:
        cand, notes = [None] * len(rows), [f"canary failed on every evaluation row: {exc}"]
    if task == "classify":
        def accuracy(results):
            return float(np.mean([r is not None and r.output is not None and r.output["label"] == row["label"]
                                  for r, row in zip(results, rows)]))
        return accuracy(base.rows), accuracy(cand), notes
    agreement = [
        _cosine(b.output["embedding"], c.output["embedding"]) if b.output and c is not None and c.output else 0.0
        for b, c in zip(base.rows, cand)
    ]
    return 1.0, float(np.mean(agreement)), notes


def _cosine(a: list[float], b: list[float]) -> float:
    va, vb = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    denom = float(np.linalg.norm(va) * np.linalg.norm(vb))
    return float(va @ vb / denom) if denom else 0.0


def verdict(task: str, arms: dict[str, Arm], distance: float | None, q_stable: float | None,
            q_canary: float | None, cfg: CanaryConfig) -> tuple[bool, list[str]]:
    """(passed, reasons): every breached guardrail is a reason; notes about missing evidence are too."""
    breaches, notes = [], []
    s, c = arms["stable"], arms["canary"]
    if min(s.requests, c.requests) < cfg.min_requests:
        notes.append(f"live: {c.requests} canary / {s.requests} stable requests (< {cfg.min_requests}); "
                     "live guardrails not applied")
    else:
        if c.error_rate - s.error_rate > cfg.max_error_rate_increase:
            breaches.append(f"error rate {c.error_rate:.3f} vs stable {s.error_rate:.3f} "
                            f"(max increase {cfg.max_error_rate_increase})")
        ps, pcn = p95(s.latencies), p95(c.latencies)
        if ps is not None and pcn is not None and pcn > ps * cfg.max_p95_ratio + cfg.p95_slack_ms:
            breaches.append(f"p95 latency {pcn:.1f} ms vs stable {ps:.1f} ms "
                            f"(max {cfg.max_p95_ratio}x + {cfg.p95_slack_ms} ms)")
        if distance is not None and distance > cfg.max_output_distance:
            breaches.append(f"output distance {distance:.3f} > {cfg.max_output_distance}")
    if q_stable is not None and q_canary is not None:
        if task == "classify" and q_stable - q_canary > cfg.max_accuracy_drop:
            breaches.append(f"accuracy {q_canary:.3f} vs stable {q_stable:.3f} (max drop {cfg.max_accuracy_drop})")
        if task == "embed" and q_canary < cfg.min_embedding_agreement:
            breaches.append(f"cosine agreement with stable {q_canary:.4f} < {cfg.min_embedding_agreement}")
    return not breaches, breaches + notes


def evaluation_rows(lake: Lake, task: str, size: int, seed: int = 1) -> list[dict]:
    """Labelled documents for the replay, or the demo corpus when the lake has too few."""
    rows = labelled_documents(lake, size)
    return rows if len(rows) >= min(size, 20) else generate_demo_corpus(size, seed=seed)


def evaluate_canary(
    lake: Lake, state: AliasState, task: str, resolve: OpResolver, cfg: CanaryConfig, run_id: str, now: datetime
) -> dict[str, Any]:
    """One `canary_evaluations` row for `state`'s active canary."""
    start = now - timedelta(minutes=cfg.window_minutes)
    arms = live_arms(lake, state.name, state.stable, state.canary, start, now)
    distance = output_distance(arms["stable"].summaries, arms["canary"].summaries)
    q_s, q_c, notes = replay_quality(task, state.name, state.stable, state.canary,
                                     evaluation_rows(lake, task, cfg.eval_size), resolve, cfg.batch_size)
    passed, reasons = verdict(task, arms, distance, q_s, q_c, cfg)
    return {
        "eval_id": uuid.uuid4().hex, "model": state.name, "stable_version": state.stable,
        "canary_version": state.canary, "canary_weight": state.canary_weight,
        "window_start": start, "window_end": now,
        "stable_requests": arms["stable"].requests, "canary_requests": arms["canary"].requests,
        "stable_error_rate": arms["stable"].error_rate, "canary_error_rate": arms["canary"].error_rate,
        "stable_p95_ms": p95(arms["stable"].latencies), "canary_p95_ms": p95(arms["canary"].latencies),
        "output_distance": distance, "quality_stable": q_s, "quality_canary": q_c,
        "quality_delta": q_c - q_s if q_s is not None and q_c is not None else None,
        "passed": passed, "reasons": json.dumps(reasons + notes) if notes or reasons else None,
        "run_id": run_id, "evaluated_at": now,
    }


@dg.asset(group_name="control", kinds={"delta", "pytorch"})
def canary_evaluation(
    context: dg.AssetExecutionContext, config: CanaryConfig, lake: LakeResource, registry: RegistryResource,
    models: ModelLoader,
) -> dg.MaterializeResult:
    """Every active canary compared with its stable version on live traffic and a labelled replay."""
    reg, the_lake = registry.registry(), lake.lake()
    tasks = {m.name: m.task for m in reg.list_models()}
    active = [st for st in reg.states().values() if st.canary is not None and st.stable is not None]
    now = datetime.now(UTC)
    rows = [evaluate_canary(the_lake, st, tasks[st.name], models.resolver(registry), config, context.run.run_id, now)
            for st in sorted(active, key=lambda s: s.name)]
    if rows:
        the_lake.append("canary_evaluations", rows)
    for r in rows:
        context.log.info(f"{r['model']} canary {r['canary_version']}: passed={r['passed']} {r['reasons'] or ''}")
    return dg.MaterializeResult(metadata={
        "canaries": len(rows),
        "failed": [f"{r['model']}@{r['canary_version']}" for r in rows if not r["passed"]],
        "passed": [f"{r['model']}@{r['canary_version']}" for r in rows if r["passed"]],
    })


@dg.asset_check(asset=canary_evaluation, blocking=True)
def canary_guardrails(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """Fails (and blocks anything downstream) when a canary evaluated in this run breached a guardrail."""
    rows = lake.lake().read("canary_evaluations", filter=pc.field("run_id") == context.run.run_id).to_pylist()
    failed = [r for r in rows if not r["passed"]]
    metadata: dict[str, Any] = {"evaluated": len(rows), "failed": len(failed)}
    for r in rows:
        metadata[f"{r['model']}@{r['canary_version']}"] = {
            k: r[k] for k in ("passed", "canary_weight", "stable_requests", "canary_requests", "stable_error_rate",
                              "canary_error_rate", "stable_p95_ms", "canary_p95_ms", "output_distance",
                              "quality_stable", "quality_canary", "quality_delta")
        } | {"reasons": json.loads(r["reasons"]) if r["reasons"] else []}
    description = "; ".join(f"{r['model']}@{r['canary_version']}: {r['reasons']}" for r in failed) or None
    return dg.AssetCheckResult(passed=not failed, severity=dg.AssetCheckSeverity.ERROR,
                               metadata=metadata, description=description)
