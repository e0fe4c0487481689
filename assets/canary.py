"""Canary evaluation: each active canary against its stable version, on live traffic and on a same-input replay.

Live traffic (the `predictions` log over a window, one model call = one (request, step) of an arm):
error rate and p95 latency per arm. Replay (in-process, `assets.canary_replay`): output agreement on
the same inputs (embedding cosine, classifier labels and accuracy, reranker top-k). `assets.canary_guard`
turns the evidence into a decision (rollback | hold | pass) with its sample sizes and p-values, written
to `canary_evaluations`. The check `canary_guardrails` reports each canary's decision and the guard's next
move; it fails (WARN, not blocking) when a canary is to be rolled back, so the run itself fails only on a
real crash. The canary-guard sensor acts on the table.
"""

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import dagster as dg
import pyarrow.compute as pc

from assets.canary_guard import Arm, Judgement, canary_decision, evaluations_since, judge
from assets.canary_replay import Replay, replay
from assets.offline_replay import ReplayThresholds
from assets.resources import LakeResource, ModelLoader, RegistryResource
from assets.stats import parse_summaries, tv_distance
from assets.training import labelled_documents
from lakehouse import Lake
from models.corpus import generate_demo_corpus
from models.executor import OpResolver
from models.gate import GateVerdict, gate_verdict
from models.registry import AliasState

_REPLAY = ReplayThresholds()


class CanaryConfig(dg.Config):
    """The live-traffic window, the evidence a canary needs, and the guardrails it must stay within."""

    window_minutes: int = 60
    confidence: float = _REPLAY.confidence  # of every one-sided test and bound
    min_requests: int = 20  # model calls per arm; below it the decision is "hold" (not enough evidence)
    max_error_rate_increase: float = 0.02
    max_p95_ratio: float = 1.5
    p95_slack_ms: float = 25.0
    eval_size: int = 200
    # The replay guardrails default to the offline replay's, so `tandem replay` and the guard agree.
    min_replay: int = _REPLAY.min_replay  # replayed items; below it the decision is "hold"
    max_accuracy_drop: float = _REPLAY.max_accuracy_drop
    min_label_agreement: float = _REPLAY.min_label_agreement
    min_embedding_agreement: float = _REPLAY.min_embedding_agreement
    min_top1_agreement: float = _REPLAY.min_top1_agreement
    min_topk_overlap: float = _REPLAY.min_topk_overlap
    top_k: int = _REPLAY.top_k
    rerank_candidates: int = 8
    batch_size: int = 64
    # The guard sensor's ladder, so the check can report the move an evaluation leads to.
    ladder: list[float] = [0.05, 0.25, 0.5]  # noqa: RUF012 — pydantic copies field defaults
    passes_required: int = 2


def live_arms(lake: Lake, model: str, stable: str, canary: str, start: datetime, end: datetime
              ) -> tuple[dict[str, Arm], list[dict], list[dict]]:
    """The stable and canary arms of `model`'s logged calls in [start, end] (skipped and fallback rows left out).

    One model call is one (request, step) of an arm: a call's rows (one per instance) share its outcome.
    Also returns each arm's answered-call output summaries.
    """
    flt = ((pc.field("model") == model) & (pc.field("day") >= start.date()) & (pc.field("ts") >= start)
           & (pc.field("ts") <= end) & pc.field("arm").isin(["stable", "canary"])
           & pc.field("status").isin(["ok", "error"]))
    rows = lake.read("predictions", filter=flt, columns=["request_id", "step", "version", "arm", "status",
                                                          "latency_ms", "output_summary"]).to_pylist()
    arms, summaries = {}, {}
    for arm, version in (("stable", stable), ("canary", canary)):
        calls: dict[tuple, dict] = {}
        for r in rows:
            if r["version"] == version and r["arm"] == arm:
                key = (r["request_id"], r["step"])
                if key not in calls or r["status"] == "error":  # one failed instance fails the call
                    calls[key] = r
        ok = [r for r in calls.values() if r["status"] == "ok"]
        arms[arm] = Arm(requests=len(calls), errors=len(calls) - len(ok),
                        latencies=[r["latency_ms"] for r in ok if r["latency_ms"] is not None])
        summaries[arm] = parse_summaries(r["output_summary"] for r in ok)
    return arms, summaries["stable"], summaries["canary"]


def label_distance(stable: list[dict], canary: list[dict]) -> float | None:
    """TV distance of the arms' live labels: informational only (the arms see different inputs)."""
    a = [s["label"] for s in stable if s.get("label") is not None]
    b = [s["label"] for s in canary if s.get("label") is not None]
    return tv_distance(a, b) if a and b else None


def evaluation_rows(lake: Lake, task: str, size: int, seed: int = 1) -> list[dict]:
    """Labelled documents for the replay, or the demo corpus when the lake has too few."""
    rows = labelled_documents(lake, size)
    return rows if len(rows) >= min(size, 20) else generate_demo_corpus(size, seed=seed)


def evaluate_canary(
    lake: Lake, state: AliasState, task: str, resolve: OpResolver, cfg: CanaryConfig, run_id: str, now: datetime,
    gate: GateVerdict | None = None,
) -> dict[str, Any]:
    """One `canary_evaluations` row for `state`'s active canary: the evidence and the decision.

    `gate` is the canary's offline evaluation (models.gate): reported in the evidence; a canary whose
    offline evaluations all failed (it was forced past the gate) is held: never advanced nor promoted.
    """
    start = now - timedelta(minutes=cfg.window_minutes)
    arms, sum_s, sum_c = live_arms(lake, state.name, state.stable, state.canary, start, now)
    rep = replay(task, state.name, state.stable, state.canary, evaluation_rows(lake, task, cfg.eval_size), resolve,
                 batch_size=cfg.batch_size, top_k=cfg.top_k, candidates=cfg.rerank_candidates)
    j = judge(arms, rep, cfg)
    if gate is not None:
        j.evidence["offline_gate"] = gate.as_dict()
        if gate.evaluations and not gate.passed:
            j.holds.append(f"offline evaluation failed ({gate.summary}): held until "
                           f"`tandem replay {state.name} --candidate {state.canary}` passes")
            j.decision = "rollback" if j.breaches else "hold"
    row = evaluation_row(state, arms, rep, j, label_distance(sum_s, sum_c), start, now, run_id)
    # The move the guard sensor will make (same ladder), reported with the evidence.
    move = canary_decision(state, [*evaluations_since(lake, state), row], cfg.ladder, cfg.passes_required,
                           cfg.min_requests)
    row["guard_action"], row["next_weight"] = move.action, move.weight
    return row


def evaluation_row(state: AliasState, arms: dict[str, Arm], rep: Replay, j: Judgement, distance: float | None,
                   start: datetime, now: datetime, run_id: str) -> dict[str, Any]:
    """The `canary_evaluations` row of a judgement."""
    ev = j.evidence
    q_s, q_c = _quality(rep.task, ev)
    return {
        "eval_id": uuid.uuid4().hex, "model": state.name, "stable_version": state.stable,
        "canary_version": state.canary, "canary_weight": state.canary_weight,
        "window_start": start, "window_end": now,
        "stable_requests": arms["stable"].requests, "canary_requests": arms["canary"].requests,
        "stable_error_rate": arms["stable"].error_rate, "canary_error_rate": arms["canary"].error_rate,
        "stable_p95_ms": ev.get("stable_p95_ms"), "canary_p95_ms": ev.get("canary_p95_ms"),
        "output_distance": distance, "quality_stable": q_s, "quality_canary": q_c,
        "quality_delta": q_c - q_s if q_s is not None and q_c is not None else None,
        "passed": j.decision == "pass", "reasons": json.dumps(j.reasons) if j.reasons else None,
        "run_id": run_id, "evaluated_at": now,
        "decision": j.decision, "task": rep.task, "confidence": ev["confidence"],
        "error_rate_p_value": ev.get("error_rate_p_value"), "replay_rows": rep.n,
        "agreement": ev.get("agreement"), "agreement_upper": ev.get("agreement_upper"),
        "topk_overlap": ev.get("topk_overlap"), "accuracy_drop_lower": ev.get("accuracy_drop_lower"),
        "evidence": json.dumps(ev, sort_keys=True),
    }


def _quality(task: str, ev: dict) -> tuple[float | None, float | None]:
    if task == "classify":
        return ev.get("accuracy_stable"), ev.get("accuracy_canary")
    if task in ("embed", "rerank") and ev.get("agreement") is not None:
        return 1.0, ev["agreement"]  # agreement with stable: stable agrees with itself
    return None, None


@dg.asset(group_name="control", kinds={"delta", "pytorch"})
def canary_evaluation(
    context: dg.AssetExecutionContext, config: CanaryConfig, lake: LakeResource, registry: RegistryResource,
    models: ModelLoader,
) -> dg.MaterializeResult:
    """Every active canary compared with its stable version on live traffic and a same-input replay."""
    reg, the_lake = registry.registry(), lake.lake()
    tasks = {m.name: m.task for m in reg.list_models()}
    active = [st for st in reg.states().values() if st.canary is not None and st.stable is not None]
    now = datetime.now(UTC)
    rows = [evaluate_canary(the_lake, st, tasks[st.name], models.resolver(registry), config, context.run.run_id, now,
                            gate_verdict(reg, the_lake, st.name, st.canary))
            for st in sorted(active, key=lambda s: s.name)]
    if rows:
        the_lake.append("canary_evaluations", rows)
    for r in rows:
        context.log.info(f"{r['model']} canary {r['canary_version']}: {r['decision']} -> {r['guard_action']} "
                         f"{r['reasons'] or ''}")
    return dg.MaterializeResult(metadata={
        "canaries": len(rows),
        **{d: [f"{r['model']}@{r['canary_version']}" for r in rows if r["decision"] == d]
           for d in ("rollback", "hold", "pass")},
    })


_SHOWN = ("decision", "canary_weight", "stable_requests", "canary_requests", "stable_error_rate", "canary_error_rate",
          "error_rate_p_value", "stable_p95_ms", "canary_p95_ms", "replay_rows", "agreement", "agreement_upper",
          "topk_overlap", "quality_stable", "quality_canary", "quality_delta", "accuracy_drop_lower", "confidence",
          "guard_action", "next_weight")


@dg.asset_check(asset=canary_evaluation, blocking=False)
def canary_guardrails(context: dg.AssetCheckExecutionContext, lake: LakeResource) -> dg.AssetCheckResult:
    """Each canary's decision and the guard's move (hold, advance, promote, roll back); fails (WARN) on a rollback."""
    rows = lake.lake().read("canary_evaluations", filter=pc.field("run_id") == context.run.run_id).to_pylist()
    metadata: dict[str, Any] = {"evaluated": len(rows)}
    for r in rows:
        metadata[f"{r['model']}@{r['canary_version']}"] = {k: r[k] for k in _SHOWN} | {
            "reasons": json.loads(r["reasons"]) if r["reasons"] else [],
            "offline_gate": json.loads(r["evidence"] or "{}").get("offline_gate")}
    for action in ("rollback", "hold", "advance", "promote"):
        metadata[action] = sorted(f"{r['model']}@{r['canary_version']}" for r in rows if r["guard_action"] == action)
    description = "; ".join(f"{r['model']}@{r['canary_version']}: {r['guard_action']}"
                            + (f" ({'; '.join(json.loads(r['reasons']))})" if r["reasons"] else "")
                            for r in rows) or "no active canary"
    return dg.AssetCheckResult(passed=not metadata["rollback"], severity=dg.AssetCheckSeverity.WARN,
                               metadata=metadata, description=description[:2000])
