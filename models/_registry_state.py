"""The registry's value types and the pure fold of alias events into alias state.

Nothing here touches Delta: `fold_events` and `stable_trail` take plain `RegistryEvent`s so they
are unit-tested without a lake, and the gateway could fold an event list it got any other way.
"""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from models.errors import InvalidRegistryOperation

ALIASES = ("stable", "canary", "shadow")
REFS = (*ALIASES, "latest")

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class ModelVersion:
    """One immutable, registered version of a model."""

    name: str
    version: str
    task: str
    artifact_uri: str
    sha256: str
    schema_hash: str
    training_data_hash: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict, hash=False)
    lineage: dict[str, Any] = field(default_factory=dict, hash=False)
    description: str | None = None
    created_by: str | None = None
    created_at: datetime | None = None


@dataclass(frozen=True)
class RegistryEvent:
    """One alias move: `version=None` clears the alias; canary events carry the traffic weight."""

    event_id: str
    name: str
    alias: str
    version: str | None
    weight: float | None
    actor: str
    reason: str | None
    at: datetime


@dataclass(frozen=True)
class AliasState:
    """Where a model's aliases point now: the fold of its events."""

    name: str
    stable: str | None = None
    canary: str | None = None
    canary_weight: float = 0.0
    shadow: str | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class ModelSummary:
    """A model's task, its versions (oldest first) and its alias state."""

    name: str
    task: str
    versions: list[str]
    state: AliasState


def event_order(event: RegistryEvent) -> tuple[datetime, str]:
    """The fold order: by time, ties broken by the (per-process increasing) event id."""
    return (event.at, event.event_id)


def fold_events(events: Iterable[RegistryEvent]) -> dict[str, AliasState]:
    """Fold alias events, in (at, event_id) order, into each model's current `AliasState`.

    Rules: a `stable` event sets stable and, when it promotes the current canary, clears the
    canary in the same step; a `canary` event sets canary and its weight (clearing resets the
    weight to 0); a `shadow` event sets the shadow. `version=None` clears the alias.
    """
    return {name: state for name, (state, _) in _fold(events).items()}


def stable_trail(events: Iterable[RegistryEvent], name: str) -> list[str]:
    """The stack of stable versions a rollback walks back through, oldest first.

    Promoting the version just below the top pops (it is a rollback, manual or not), promoting
    the current stable again changes nothing, and clearing stable empties the stack; anything
    else is pushed. So v1 -> v2 -> v3 then two rollbacks land on v2, then v1.
    """
    folded = _fold(e for e in events if e.name == name)
    return list(folded[name][1]) if name in folded else []


def _fold(events: Iterable[RegistryEvent]) -> dict[str, tuple[AliasState, list[str]]]:
    states: dict[str, AliasState] = {}
    trails: dict[str, list[str]] = {}
    for ev in sorted(events, key=event_order):
        st = states.get(ev.name) or AliasState(name=ev.name)
        trail = trails.setdefault(ev.name, [])
        if ev.alias == "stable":
            _push_stable(trail, ev.version)
            st = _replace(st, stable=ev.version, updated_at=ev.at)
            if ev.version is not None and st.canary == ev.version:
                st = _replace(st, canary=None, canary_weight=0.0)
        elif ev.alias == "canary":
            weight = float(ev.weight or 0.0) if ev.version is not None else 0.0
            st = _replace(st, canary=ev.version, canary_weight=weight, updated_at=ev.at)
        elif ev.alias == "shadow":
            st = _replace(st, shadow=ev.version, updated_at=ev.at)
        else:  # written by something newer than this code: skip rather than guess
            continue
        states[ev.name] = st
    return {name: (states[name], trails[name]) for name in states}


def _push_stable(trail: list[str], version: str | None) -> None:
    if version is None:
        trail.clear()
    elif trail and trail[-1] == version:
        return
    elif len(trail) >= 2 and trail[-2] == version:
        trail.pop()
    else:
        trail.append(version)


def _replace(state: AliasState, **changes: Any) -> AliasState:
    return AliasState(**{**state.__dict__, **changes})


# --- helpers shared by the registry -------------------------------------------------------

_id_lock = threading.Lock()
_last_ns = 0


def new_event_id() -> str:
    """A per-process strictly increasing id, so events written at the same `at` keep their order."""
    global _last_ns
    with _id_lock:
        _last_ns = max(time.time_ns(), _last_ns + 1)
        ns = _last_ns
    return f"{ns:020d}-{uuid.uuid4().hex[:12]}"


def utc(at: datetime) -> datetime:
    """Naive datetimes are taken as UTC; Delta stores microseconds."""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)
    return at.astimezone(UTC)


def check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidRegistryOperation(
            f"invalid {kind} {value!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if kind == "version" and value in REFS:
        raise InvalidRegistryOperation(f"{value!r} is an alias, not a valid version name; pick another")
    return value


def version_sort_key(version: str) -> tuple[int, int, str]:
    """Integer versions in numeric order first, then the rest alphabetically."""
    return (0, int(version), "") if version.isdigit() else (1, 0, version)


def version_from_row(row: dict[str, Any]) -> ModelVersion:
    return ModelVersion(
        name=row["name"],
        version=row["version"],
        task=row["task"],
        artifact_uri=row["artifact_uri"],
        sha256=row["sha256"],
        schema_hash=row["schema_hash"],
        training_data_hash=row.get("training_data_hash"),
        metrics=json.loads(row["metrics"]) if row.get("metrics") else {},
        lineage=json.loads(row["lineage"]) if row.get("lineage") else {},
        description=row.get("description"),
        created_by=row.get("created_by"),
        created_at=row.get("created_at"),
    )


def version_to_row(mv: ModelVersion) -> dict[str, Any]:
    return {
        "name": mv.name,
        "version": mv.version,
        "task": mv.task,
        "artifact_uri": mv.artifact_uri,
        "sha256": mv.sha256,
        "schema_hash": mv.schema_hash,
        "training_data_hash": mv.training_data_hash,
        "metrics": json.dumps(mv.metrics, sort_keys=True) if mv.metrics else None,
        "lineage": json.dumps(mv.lineage, sort_keys=True) if mv.lineage else None,
        "description": mv.description,
        "created_by": mv.created_by,
        "created_at": mv.created_at,
    }


def event_from_row(row: dict[str, Any]) -> RegistryEvent:
    return RegistryEvent(**{k: row.get(k) for k in RegistryEvent.__dataclass_fields__})


def event_to_row(ev: RegistryEvent) -> dict[str, Any]:
    return dict(ev.__dict__)


def next_version(existing: dict[str, ModelVersion]) -> str:
    return str(max((int(v) for v in existing if v.isdigit()), default=0) + 1)


def listing(mvs: Iterable[ModelVersion]) -> str:
    return ", ".join(mv.version for mv in mvs) or "(none)"
