"""The canary guard's judgement: each evaluation's decision from its evidence, and the ladder's next move.

An evaluation decides one of three things (the `decision` column of `canary_evaluations`):

    rollback  a guardrail is breached with evidence at the stated confidence
    hold      no breach, but not enough evidence yet (too few live calls per arm, too small a replay)
    pass      every guardrail that applies has its minimum sample and holds

Guardrails (`CanaryConfig`):
    live error rate   one-sided pooled two-proportion z-test per arm (canary worse than stable), breached
                      when p < 1 - confidence AND the increase exceeds `max_error_rate_increase`;
                      needs `min_requests` model calls in each arm
    live p95 latency  canary p95 <= `max_p95_ratio` x stable p95 + `p95_slack_ms`; needs `min_requests`
                      answered calls in each arm
    replay agreement  same inputs through both versions (assets.canary_replay): embeddings' mean cosine,
                      classifier label agreement, reranker top-1 agreement and top-k overlap; breached
                      when the upper confidence bound is below the minimum; needs `min_replay` items
    replay accuracy   classifiers on labelled rows: breached when the paired accuracy drop is significant
                      (its lower confidence bound > 0) AND larger than `max_accuracy_drop`

The ladder (`canary_decision`, used by the check's report and by the guard sensor): the newest
evaluation says rollback -> roll back; otherwise `passes_required` passing evaluations since the last
alias move (holds neither count nor break the streak) -> the next ladder weight, or promote past the top.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow.compute as pc

from assets.canary_replay import Replay
from assets.stats import mean_bounds, p95, two_proportion_test, wilson_bounds
from lakehouse import Lake
from models.registry import AliasState

__all__ = ["Arm", "CanaryDecision", "Judgement", "canary_decision", "evaluation_decision", "evaluations_since",
           "judge", "judge_replay"]


class Guardrails(Protocol):
    """The thresholds `judge` reads (`assets.canary.CanaryConfig` has them)."""

    confidence: float
    min_requests: int
    max_error_rate_increase: float
    max_p95_ratio: float
    p95_slack_ms: float
    min_replay: int
    max_accuracy_drop: float
    min_label_agreement: float
    min_embedding_agreement: float
    min_top1_agreement: float
    min_topk_overlap: float


@dataclass
class Arm:
    """One arm's live model calls: how many, how many failed, and the answered calls' latencies."""

    requests: int
    errors: int
    latencies: list[float]

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None


@dataclass
class Judgement:
    """An evaluation's decision, why, and the numbers behind it (stored and shown in the check)."""

    decision: str  # rollback | hold | pass
    breaches: list[str] = field(default_factory=list)
    holds: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    evidence: dict[str, Any] = field(default_factory=dict)

    @property
    def reasons(self) -> list[str]:
        return self.breaches + self.holds + self.notes


def judge(arms: dict[str, Arm], rep: Replay, cfg: Guardrails) -> Judgement:
    """Decide rollback / hold / pass from the live arms and the replay; see the module docstring."""
    j = Judgement("pass", notes=list(rep.notes))
    ev = j.evidence
    ev["confidence"] = cfg.confidence
    _judge_live(arms, cfg, j)
    _judge_replay(rep, cfg, j)
    j.decision = "rollback" if j.breaches else "hold" if j.holds else "pass"
    return j


def judge_replay(rep: Replay, cfg: Guardrails) -> Judgement:
    """Decide from a replay alone (the offline gate before traffic): its agreement and accuracy guardrails."""
    j = Judgement("pass", notes=list(rep.notes))
    j.evidence["confidence"] = cfg.confidence
    _judge_replay(rep, cfg, j)
    j.decision = "rollback" if j.breaches else "hold" if j.holds else "pass"
    return j


def _judge_live(arms: dict[str, Arm], cfg: Guardrails, j: Judgement) -> None:
    s, c = arms["stable"], arms["canary"]
    ev, alpha = j.evidence, 1.0 - cfg.confidence
    ev.update(stable_requests=s.requests, canary_requests=c.requests, stable_errors=s.errors, canary_errors=c.errors)
    if min(s.requests, c.requests) < cfg.min_requests:
        j.holds.append(f"live: {c.requests} canary / {s.requests} stable model calls (< {cfg.min_requests} per arm): "
                       "not enough evidence for the error rate")
    else:
        p = two_proportion_test(s.errors, s.requests, c.errors, c.requests)
        ev["error_rate_p_value"] = p
        increase = c.error_rate - s.error_rate
        if p < alpha and increase > cfg.max_error_rate_increase:
            j.breaches.append(f"error rate {c.error_rate:.3f} vs stable {s.error_rate:.3f} over {c.requests}/"
                              f"{s.requests} calls (one-sided p={p:.2g} < {alpha:.2g}, increase > "
                              f"{cfg.max_error_rate_increase})")
    ps, pc_ = p95(s.latencies), p95(c.latencies)
    ev.update(stable_p95_ms=ps, canary_p95_ms=pc_, stable_answered=len(s.latencies), canary_answered=len(c.latencies))
    if min(len(s.latencies), len(c.latencies)) < cfg.min_requests:
        j.holds.append(f"live: {len(c.latencies)} canary / {len(s.latencies)} stable answered calls "
                       f"(< {cfg.min_requests} per arm): not enough evidence for p95 latency")
    elif pc_ > ps * cfg.max_p95_ratio + cfg.p95_slack_ms:
        j.breaches.append(f"p95 latency {pc_:.1f} ms vs stable {ps:.1f} ms "
                          f"(max {cfg.max_p95_ratio}x + {cfg.p95_slack_ms} ms)")


def _judge_replay(rep: Replay, cfg: Guardrails, j: Judgement) -> None:
    ev = j.evidence
    ev["replay_rows"] = rep.n
    if rep.task not in ("embed", "classify", "rerank"):
        return  # noted by the replay itself
    if rep.n < cfg.min_replay:
        j.holds.append(f"replay: {rep.n} comparable items (< {cfg.min_replay}): not enough evidence of agreement")
        return
    if rep.task == "embed":
        _floor(j, "cosine agreement with stable", "agreement", rep.cosines, cfg.min_embedding_agreement, cfg)
    elif rep.task == "rerank":
        _floor(j, "top-1 agreement with stable", "agreement", rep.agree, cfg.min_top1_agreement, cfg)
        _floor(j, "top-k overlap with stable", "topk_overlap", rep.topk_overlap, cfg.min_topk_overlap, cfg)
    else:
        _floor(j, "label agreement with stable", "agreement", rep.agree, cfg.min_label_agreement, cfg)
        _accuracy(rep, cfg, j)


def _floor(j: Judgement, what: str, key: str, values: Sequence[float], minimum: float, cfg: Guardrails) -> None:
    """Breach when even the upper confidence bound of the mean is below `minimum`."""
    if values and all(isinstance(v, bool) for v in values):
        mean = sum(values) / len(values)
        upper = wilson_bounds(sum(values), len(values), cfg.confidence)[1]
    else:
        mean, _, upper = mean_bounds(values, cfg.confidence)
    j.evidence[key], j.evidence[f"{key}_upper"] = mean, upper
    if upper < minimum:
        j.breaches.append(f"{what} {mean:.4f} (upper {cfg.confidence:.0%} bound {upper:.4f}) < {minimum} "
                          f"over {len(values)} replayed items")


def _accuracy(rep: Replay, cfg: Guardrails, j: Judgement) -> None:
    n = len(rep.correct_stable)
    if n < cfg.min_replay:
        j.notes.append(f"replay: {n} labelled items (< {cfg.min_replay}): accuracy not judged")
        return
    # Paired: the same items through both versions, so the drop's variance is that of per-item differences.
    diffs = [float(a) - float(b) for a, b in zip(rep.correct_stable, rep.correct_canary)]
    drop, lower, _ = mean_bounds(diffs, cfg.confidence)
    acc_s, acc_c = sum(rep.correct_stable) / n, sum(rep.correct_canary) / n
    j.evidence.update(accuracy_stable=acc_s, accuracy_canary=acc_c, accuracy_drop=drop, accuracy_drop_lower=lower)
    if lower > 0 and drop > cfg.max_accuracy_drop:
        j.breaches.append(f"accuracy {acc_c:.3f} vs stable {acc_s:.3f} on {n} labelled items (drop {drop:.3f} > "
                          f"{cfg.max_accuracy_drop}, lower {cfg.confidence:.0%} bound {lower:.3f} > 0)")


# --- the ladder ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class CanaryDecision:
    """What the guard does for one model: hold, rollback, advance (to `weight`) or promote."""

    action: str
    weight: float | None
    evaluation: dict
    reason: str


def evaluation_decision(ev: dict, min_canary_requests: int) -> str:
    """rollback | hold | pass of one `canary_evaluations` row (rows written before `decision` existed too)."""
    decision = ev.get("decision")
    if decision:
        return decision
    if not ev["passed"]:
        return "rollback"
    return "pass" if (ev.get("canary_requests") or 0) >= min_canary_requests else "hold"


def canary_decision(
    state: AliasState, evaluations: Sequence[dict], ladder: Sequence[float], passes_required: int,
    min_canary_requests: int,
) -> CanaryDecision | None:
    """Decide from the evaluations of `state`'s canary made since its last alias move (oldest first).

    The newest says rollback → rollback. Otherwise the passing evaluations since the newest rollback
    verdict count (holds neither count nor break the streak); `passes_required` of them move the weight to
    the next ladder step above the current one, or promote past the top. `min_canary_requests` applies
    only to rows written before the `decision` column (their `passed` did not weigh the evidence).
    """
    if not evaluations:
        return None
    latest = evaluations[-1]
    where = f"evaluation {latest['eval_id']} (run {latest['run_id']})"
    if evaluation_decision(latest, min_canary_requests) == "rollback":
        reasons = "; ".join(json.loads(latest["reasons"])) if latest["reasons"] else "guardrail breached"
        return CanaryDecision("rollback", None, latest, f"canary guard: {where} failed: {reasons}")
    streak = 0
    for ev in reversed(evaluations):
        decision = evaluation_decision(ev, min_canary_requests)
        if decision == "rollback":
            break
        streak += decision == "pass"
    if streak < passes_required:
        return CanaryDecision("hold", None, latest, f"{streak}/{passes_required} passing evaluations")
    why = f"canary guard: {streak} consecutive passing evaluations, last {where}"
    higher = [w for w in sorted(ladder) if w > state.canary_weight + 1e-9]
    if higher:
        return CanaryDecision("advance", higher[0], latest, why)
    return CanaryDecision("promote", None, latest, why)


def evaluations_since(lake: Lake, state: AliasState) -> list[dict]:
    """`state`'s canary evaluations against its current stable since the last alias move, oldest first."""
    flt = ((pc.field("model") == state.name) & (pc.field("canary_version") == state.canary)
           & (pc.field("stable_version") == state.stable))
    if state.updated_at is not None:
        flt = flt & (pc.field("evaluated_at") > state.updated_at)
    rows = lake.read("canary_evaluations", filter=flt).to_pylist()
    return sorted(rows, key=lambda r: (r["evaluated_at"], r["eval_id"]))
