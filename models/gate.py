"""The offline gate: a version takes canary traffic only with a passing offline evaluation, or when forced.

A passing evaluation is any of:

    metrics     the version's own `metrics["evaluation"]["passed"] is True`
                ({"method": "reference" | "labelled", "metric", "value", "threshold", "passed"}, as `tandem init` writes)
    labelled    a classifier trained by `tandem models train` (holdout `accuracy` in its metrics, no
                `evaluation`): it passes when its accuracy is at most `MAX_ACCURACY_DROP` below the stable
                version's, or when there is no stable accuracy to compare with
    replay      the newest `replay_evaluations` row of (model, version) passed (`tandem replay`)

`tandem models canary` and `POST /v1/admin/models/{name}/canary` call `require_evaluation`; forcing past
the gate takes a reason, recorded in `registry_events`. Shadows are not gated: a shadow's answers never
reach a caller, and shadowing is one way to gather the evidence. The canary guard reports the same
evaluation (`gate_verdict`) and rolls back a canary whose offline evaluation failed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from models._registry_state import ModelVersion
from models.errors import InvalidRegistryOperation, UnevaluatedVersionError, UnknownVersionError

__all__ = ["MAX_ACCURACY_DROP", "GateVerdict", "OfflineEvaluation", "decide", "gate_verdict", "latest_replay",
           "require_evaluation"]

MAX_ACCURACY_DROP = 0.02
REPLAY_TABLE = "replay_evaluations"


class _Lake(Protocol):
    def read(self, name: str, filter: Any = None, columns: Any = None) -> pa.Table: ...


class _Registry(Protocol):
    def get(self, name: str, version: str) -> ModelVersion: ...

    def resolve(self, name: str, ref: str = "stable") -> ModelVersion: ...


@dataclass(frozen=True)
class OfflineEvaluation:
    """One offline evaluation of a version: where it comes from, whether it passed, and what it says."""

    source: str  # metrics | labelled | replay
    passed: bool
    detail: str
    record: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class GateVerdict:
    """The gate's answer for (model, version): passed when any evaluation passed."""

    model: str
    version: str
    evaluations: tuple[OfflineEvaluation, ...]

    @property
    def passed(self) -> bool:
        return any(e.passed for e in self.evaluations)

    @property
    def summary(self) -> str:
        if not self.evaluations:
            return "no offline evaluation"
        return "; ".join(f"{e.source}: {'passed' if e.passed else 'failed'} ({e.detail})" for e in self.evaluations)

    def as_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "summary": self.summary,
                "evaluations": [{"source": e.source, "passed": e.passed, "detail": e.detail} for e in self.evaluations]}


def decide(mv: ModelVersion, stable: ModelVersion | None, replay: dict | None) -> GateVerdict:
    """The gate's decision from the version, the stable version (None when there is none) and its newest replay."""
    if stable is not None and stable.version == mv.version:  # it serves all traffic already; the registry says so
        return GateVerdict(mv.name, mv.version, (OfflineEvaluation("stable", True, "the stable version"),))
    found: list[OfflineEvaluation] = []
    ev = mv.metrics.get("evaluation")
    if isinstance(ev, dict) and "passed" in ev:
        found.append(OfflineEvaluation("metrics", ev["passed"] is True, _describe(ev), ev))
    elif mv.task == "classify" and isinstance(mv.metrics.get("accuracy"), int | float):
        found.append(_labelled(mv, stable))
    if replay is not None:
        found.append(OfflineEvaluation("replay", bool(replay["passed"]), _describe_replay(replay), replay))
    return GateVerdict(mv.name, mv.version, tuple(found))


def _labelled(mv: ModelVersion, stable: ModelVersion | None) -> OfflineEvaluation:
    acc = float(mv.metrics["accuracy"])
    base = stable.metrics.get("accuracy") if stable is not None and stable.version != mv.version else None
    if not isinstance(base, int | float):
        rec = {"method": "labelled", "metric": "accuracy", "value": acc, "threshold": None, "passed": True}
        why = "no stable version" if stable is None else f"stable {stable.version} has no accuracy to compare with"
        return OfflineEvaluation("labelled", True, f"holdout accuracy {acc:.3f}; {why}", rec)
    threshold = float(base) - MAX_ACCURACY_DROP
    passed = acc >= threshold - 1e-12
    rec = {"method": "labelled", "metric": "accuracy", "value": acc, "threshold": threshold, "passed": passed}
    return OfflineEvaluation("labelled", passed, f"holdout accuracy {acc:.3f} vs stable {stable.version}'s "
                             f"{float(base):.3f} (at most {MAX_ACCURACY_DROP} below)", rec)


def _describe(ev: dict) -> str:
    parts = [f"{ev.get('method', '?')} {ev.get('metric', 'metric')}"]
    if ev.get("value") is not None:
        parts.append(f"{ev['value']:.4g}" if isinstance(ev["value"], int | float) else str(ev["value"]))
    if ev.get("threshold") is not None:
        parts.append(f"threshold {ev['threshold']}")
    return " ".join(parts)


def _describe_replay(row: dict) -> str:
    agreement = f"agreement {row['agreement']:.4f}" if row.get("agreement") is not None else "no agreement"
    reasons = json.loads(row["reasons"]) if row.get("reasons") else []
    return (f"replay {row['replay_id'][:12]}: {row['n_replayed']} replayed, {row['n_skipped']} skipped, {agreement}"
            + (f"; {reasons[0]}" if reasons and not row["passed"] else ""))


def latest_replay(lake: _Lake, model: str, version: str) -> dict | None:
    """The newest `replay_evaluations` row of (model, version), or None."""
    rows = lake.read(REPLAY_TABLE, filter=(pc.field("model") == model) & (pc.field("candidate_version") == version)
                     ).to_pylist()
    return max(rows, key=lambda r: (r["evaluated_at"], r["replay_id"])) if rows else None


def gate_verdict(registry: _Registry, lake: _Lake, model: str, version: str) -> GateVerdict:
    """`decide` on what the registry and the lake hold now."""
    mv = registry.resolve(model, version)
    try:
        stable = registry.resolve(model, "stable")
    except UnknownVersionError:
        stable = None
    return decide(mv, stable, latest_replay(lake, model, mv.version))


def require_evaluation(registry: _Registry, lake: _Lake, model: str, version: str, *, force: bool = False,
                       reason: str | None = None) -> tuple[GateVerdict, str | None]:
    """Refuse (`UnevaluatedVersionError`) a version without a passing evaluation unless forced with a reason.

    Returns the verdict and the reason to record: the caller's, prefixed when the gate was forced.
    """
    if force and not (reason and reason.strip()):
        raise InvalidRegistryOperation(
            "forcing past the offline gate needs a reason, recorded in the registry history: "
            "--force --reason \"why it may take traffic unevaluated\" (admin API: \"force\": true, \"reason\": \"...\")")
    verdict = gate_verdict(registry, lake, model, version)
    if verdict.passed:
        return verdict, reason
    if force:
        return verdict, f"forced past the offline gate ({verdict.summary}): {reason.strip()}"
    v = verdict.version
    raise UnevaluatedVersionError(
        f"{model}@{v} has no passing offline evaluation ({verdict.summary}); evaluate it on logged traffic with "
        f"`tandem replay {model} --candidate {v}`, or send it traffic anyway with --force --reason \"...\" "
        "(admin API: \"force\": true, \"reason\": \"...\")")
