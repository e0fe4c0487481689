"""The model registry: immutable versions plus an append-only log of alias moves.

Two Delta tables hold everything (see `lakehouse.catalog`): `model_versions` (one row per
immutable version, inserted only if its (name, version) is absent) and `registry_events`
(stable / canary + weight / shadow moves). A model's current state is the fold of its events
(`fold_events`); a rollback is one more event. Reads are cached per table version, so a gateway
polling `states()` every second costs two `lake.version` calls until something changes.

Writes are optimistic: checks such as "the canary must differ from stable" run against the
state just read, and concurrent writers never lose each other's rows because versions go in
with `insert_if_absent` and events are appends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa

from models._registry_state import (
    ALIASES,
    AliasState,
    ModelSummary,
    ModelVersion,
    RegistryEvent,
    check_name,
    event_from_row,
    event_order,
    event_to_row,
    fold_events,
    listing,
    new_event_id,
    next_version,
    stable_trail,
    utc,
    version_from_row,
    version_sort_key,
    version_to_row,
)
from models.errors import (
    InvalidRegistryOperation,
    RegistryError,
    SchemaHashMismatchError,
    UnknownModelError,
    UnknownVersionError,
)
from models.schemas import task_schema_hash

__all__ = [
    "AliasState",
    "ModelSummary",
    "ModelVersion",
    "Registry",
    "RegistryEvent",
    "RegistryToken",
    "fold_events",
    "stable_trail",
]

VERSIONS_TABLE = "model_versions"
EVENTS_TABLE = "registry_events"
_MAX_REGISTER_ATTEMPTS = 64

RegistryToken = tuple[int | None, int | None]
"""(model_versions version, registry_events version): changes whenever either table does."""

_HINTS = {
    "stable": "promote one with `tandem models promote {name} VERSION`",
    "canary": "start one with `tandem models canary {name} VERSION --weight 0.1`",
    "shadow": "set one with `tandem models shadow {name} VERSION`",
}


class RegistryLake(Protocol):
    """The part of `lakehouse.Lake` the registry uses."""

    def append(self, name: str, data: list[dict] | pa.Table) -> int: ...

    def insert_if_absent(self, name: str, data: list[dict] | pa.Table, keys: Any = None) -> int: ...

    def read(self, name: str, filter: Any = None, columns: Any = None) -> pa.Table: ...

    def version(self, name: str) -> int | None: ...


class RegistryStore(Protocol):
    """The part of `models.artifacts.ArtifactStore` the registry uses."""

    def put(self, src_dir: Path) -> Any: ...  # -> ArtifactRef(uri, sha256)


class Registry:
    """Register immutable model versions and move their aliases (stable, canary, shadow)."""

    def __init__(
        self,
        lake: RegistryLake,
        store: RegistryStore,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._lake = lake
        self._store = store
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.RLock()
        self._versions_cache: tuple[int | None, dict[str, list[ModelVersion]]] | None = None
        self._events_cache: tuple[int | None, list[RegistryEvent], dict[str, AliasState]] | None = None

    # --- versions -----------------------------------------------------------------------

    def register(
        self,
        name: str,
        task: str,
        artifact_dir: Path | str,
        *,
        version: str | int | None = None,
        metrics: dict[str, Any] | None = None,
        lineage: dict[str, Any] | None = None,
        training_data_hash: str | None = None,
        description: str | None = None,
        actor: str = "cli",
        schema_hash: str | None = None,
    ) -> ModelVersion:
        """Store the artifact and record a new immutable version of `name`.

        `version=None` takes the next integer ("1", "2", ...), or returns the existing version
        when one already holds the same artifact (so reruns of `tandem init` are no-ops).
        Re-registering an explicit version with the same artifact returns it; with a different
        artifact it is refused. A differing `schema_hash` is refused before anything is written.
        """
        check_name("model name", name)
        if version is not None:
            version = check_name("version", str(version))
        contract = task_schema_hash(task)
        if schema_hash is not None and schema_hash != contract:
            raise SchemaHashMismatchError(
                f"cannot register {name!r}: its schema hash {schema_hash} differs from task {task!r}'s "
                f"current contract {contract}; rebuild the artifact against the current "
                "models.schemas contract"
            )
        self._check_task(name, task, self._versions().get(name, []))
        ref = self._store.put(Path(artifact_dir))
        for _ in range(_MAX_REGISTER_ATTEMPTS):
            existing = {mv.version: mv for mv in self._versions().get(name, [])}
            self._check_task(name, task, existing.values())
            if version is not None and version in existing:
                return self._same_artifact_or_refuse(existing[version], ref.sha256)
            if version is None:
                same = [mv for mv in existing.values() if mv.sha256 == ref.sha256]
                if same:
                    return same[-1]
            mv = ModelVersion(
                name=name,
                version=version if version is not None else next_version(existing),
                task=task,
                artifact_uri=ref.uri,
                sha256=ref.sha256,
                schema_hash=contract,
                training_data_hash=training_data_hash,
                metrics=dict(metrics or {}),
                lineage=dict(lineage or {}),
                description=description,
                created_by=actor,
                created_at=utc(self._clock()),
            )
            if self._lake.insert_if_absent(VERSIONS_TABLE, [version_to_row(mv)], keys=["name", "version"]):
                return mv
            # Another writer took (name, version) first: re-read and decide again.
        raise RegistryError(
            f"could not register {name!r} after {_MAX_REGISTER_ATTEMPTS} attempts; too many concurrent writers"
        )

    def list_models(self) -> list[ModelSummary]:
        """Every registered model with its versions (oldest first) and alias state."""
        states = self.states()
        return [
            ModelSummary(
                name=name,
                task=mvs[0].task,
                versions=[mv.version for mv in mvs],
                state=states.get(name, AliasState(name)),
            )
            for name, mvs in sorted(self._versions().items())
        ]

    def versions(self, name: str) -> list[ModelVersion]:
        """A model's versions, oldest first."""
        return list(self._model(name))

    def get(self, name: str, version: str) -> ModelVersion:
        """One exact version (no aliases)."""
        for mv in self._model(name):
            if mv.version == str(version):
                return mv
        raise UnknownVersionError(
            f"model {name!r} has no version {version!r}; versions: {listing(self._model(name))}"
        )

    def resolve(self, name: str, ref: str = "stable") -> ModelVersion:
        """`ref` is "stable", "canary", "shadow", "latest" or a version string."""
        mvs = self._model(name)
        if ref == "latest":
            return mvs[-1]
        if ref in ALIASES:
            target = getattr(self.state(name), ref)
            if target is None:
                hint = _HINTS[ref].format(name=name)
                raise UnknownVersionError(f"model {name!r} has no {ref} version; {hint}")
            return self.get(name, target)
        for mv in mvs:
            if mv.version == str(ref):
                return mv
        raise UnknownVersionError(
            f"model {name!r} has no version or alias {ref!r}; versions: {listing(mvs)}; "
            "aliases: stable, canary, shadow, latest"
        )

    # --- alias state --------------------------------------------------------------------

    def state(self, name: str) -> AliasState:
        """Where `name`'s aliases point now."""
        self._model(name)
        return self.states()[name]

    def states(self) -> dict[str, AliasState]:
        """Every model's alias state (the fold of all events); cheap while nothing changes."""
        folded = dict(self._events()[1])
        for name in self._versions():
            folded.setdefault(name, AliasState(name=name))
        return folded

    def history(self, name: str | None = None, limit: int | None = None) -> list[RegistryEvent]:
        """Alias events, newest first; all models when `name` is None."""
        if name is not None:
            self._model(name)
        events = [e for e in reversed(self._events()[0]) if name is None or e.name == name]
        return events[:limit] if limit is not None else events

    def table_versions(self) -> dict[str, int | None]:
        """The Delta versions of the registry's two tables (None while a table does not exist)."""
        return {
            VERSIONS_TABLE: self._lake.version(VERSIONS_TABLE),
            EVENTS_TABLE: self._lake.version(EVENTS_TABLE),
        }

    def changed_since(self, token: RegistryToken | None) -> tuple[bool, RegistryToken]:
        """`(changed, new_token)`: pass None the first time, then the token you got back."""
        v = self.table_versions()
        new: RegistryToken = (v[VERSIONS_TABLE], v[EVENTS_TABLE])
        return new != token, new

    # --- alias moves --------------------------------------------------------------------

    def promote(self, name: str, version: str, *, actor: str, reason: str | None = None) -> AliasState:
        """Make `version` (or an alias such as "canary") stable; promoting the canary ends it."""
        mv = self._target(name, version)
        return self._append(name, "stable", mv.version, None, actor, reason)

    def set_canary(
        self, name: str, version: str, weight: float, *, actor: str, reason: str | None = None
    ) -> AliasState:
        """Send `weight` (in [0, 1]) of `name`'s traffic to `version` instead of stable."""
        if isinstance(weight, bool) or not isinstance(weight, int | float) or not 0.0 <= weight <= 1.0:
            raise InvalidRegistryOperation(f"canary weight must be a number in [0, 1], got {weight!r}")
        mv = self._target(name, version)
        stable = self.state(name).stable
        if stable is None:
            raise InvalidRegistryOperation(
                f"model {name!r} has no stable version for a canary to be compared with; "
                f"{_HINTS['stable'].format(name=name)}"
            )
        if mv.version == stable:
            raise InvalidRegistryOperation(
                f"version {mv.version!r} is already stable for {name!r}; a canary must be another version"
            )
        return self._append(name, "canary", mv.version, float(weight), actor, reason)

    def clear_canary(self, name: str, *, actor: str, reason: str | None = None) -> AliasState:
        """End the canary: all traffic goes back to stable."""
        self._model(name)
        return self._append(name, "canary", None, None, actor, reason)

    def set_shadow(
        self, name: str, version: str | None, *, actor: str, reason: str | None = None
    ) -> AliasState:
        """Mirror traffic to `version` (responses discarded); None stops shadowing."""
        if version is None:
            self._model(name)
            return self._append(name, "shadow", None, None, actor, reason)
        mv = self._target(name, version)
        if mv.version == self.state(name).stable:
            raise InvalidRegistryOperation(
                f"version {mv.version!r} is already stable for {name!r}; shadowing it would duplicate every call"
            )
        return self._append(name, "shadow", mv.version, None, actor, reason)

    def rollback(self, name: str, *, actor: str, reason: str | None = None) -> AliasState:
        """Clear an active canary; with none, move stable back to the previous stable version."""
        state = self.state(name)
        if state.canary is not None:
            why = f"rollback: canary {state.canary} cleared" + (f": {reason}" if reason else "")
            return self._append(name, "canary", None, None, actor, why)
        trail = stable_trail(self._events()[0], name)
        if len(trail) < 2:
            raise InvalidRegistryOperation(
                f"model {name!r} has no canary and no previous stable version to roll back to "
                f"(stable is {state.stable!r})"
            )
        mv = self._target(name, trail[-2])
        why = f"rollback: stable {state.stable} -> {mv.version}" + (f": {reason}" if reason else "")
        return self._append(name, "stable", mv.version, None, actor, why)

    # --- internals ----------------------------------------------------------------------

    def _append(
        self, name: str, alias: str, version: str | None, weight: float | None, actor: str, reason: str | None
    ) -> AliasState:
        event = RegistryEvent(
            event_id=new_event_id(),
            name=name,
            alias=alias,
            version=version,
            weight=weight,
            actor=actor,
            reason=reason,
            at=utc(self._clock()),
        )
        self._lake.append(EVENTS_TABLE, [event_to_row(event)])
        return self.state(name)

    def _target(self, name: str, ref: str) -> ModelVersion:
        """The version an alias is about to point at, refused if its contract is stale."""
        mv = self.resolve(name, ref)
        contract = task_schema_hash(mv.task)
        if mv.schema_hash != contract:
            raise SchemaHashMismatchError(
                f"model {name!r} version {mv.version!r} has schema hash {mv.schema_hash} but task "
                f"{mv.task!r}'s current contract hash is {contract}; refused before any traffic "
                "reaches it. Register a version built against the current contract."
            )
        return mv

    def _model(self, name: str) -> list[ModelVersion]:
        versions = self._versions()
        if name not in versions:
            known = ", ".join(sorted(versions)) or "(none yet)"
            raise UnknownModelError(f"no model named {name!r}; registered models: {known}")
        return versions[name]

    @staticmethod
    def _check_task(name: str, task: str, existing: Iterable[ModelVersion]) -> None:
        other = [mv for mv in existing if mv.task != task]
        if other:
            raise InvalidRegistryOperation(
                f"model {name!r} is a {other[0].task!r} model (versions {listing(other)}); "
                f"a {task!r} version needs another model name"
            )

    @staticmethod
    def _same_artifact_or_refuse(mv: ModelVersion, sha256: str) -> ModelVersion:
        if mv.sha256 == sha256:
            return mv
        raise InvalidRegistryOperation(
            f"model {mv.name!r} version {mv.version!r} already exists with artifact sha256 {mv.sha256}; "
            f"versions are immutable, so this artifact ({sha256}) needs a new version"
        )

    def _versions(self) -> dict[str, list[ModelVersion]]:
        with self._lock:
            # Read the version before the data: data newer than its key only costs a re-read.
            v = self._lake.version(VERSIONS_TABLE)
            if self._versions_cache is None or self._versions_cache[0] != v:
                by_name: dict[str, dict[str, ModelVersion]] = {}
                rows = sorted(
                    (version_from_row(r) for r in self._lake.read(VERSIONS_TABLE).to_pylist()),
                    key=lambda mv: (
                        mv.created_at or datetime.min.replace(tzinfo=UTC),
                        version_sort_key(mv.version),
                    ),
                )
                for mv in rows:  # on a duplicate (name, version) the first written wins
                    by_name.setdefault(mv.name, {}).setdefault(mv.version, mv)
                self._versions_cache = (v, {n: list(d.values()) for n, d in by_name.items()})
            return self._versions_cache[1]

    def _events(self) -> tuple[list[RegistryEvent], dict[str, AliasState]]:
        with self._lock:
            v = self._lake.version(EVENTS_TABLE)
            if self._events_cache is None or self._events_cache[0] != v:
                events = sorted(
                    (event_from_row(r) for r in self._lake.read(EVENTS_TABLE).to_pylist()), key=event_order
                )
                self._events_cache = (v, events, fold_events(events))
            return self._events_cache[1], self._events_cache[2]
