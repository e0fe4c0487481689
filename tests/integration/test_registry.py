"""The registry over real Delta tables and a real artifact store (tiny model artifacts)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from lakehouse.lake import Lake
from models.artifacts import ArtifactStore
from models.errors import (
    InvalidRegistryOperation,
    SchemaHashMismatchError,
    UnknownModelError,
    UnknownVersionError,
)
from models.registry import AliasState, Registry
from models.schemas import task_schema_hash
from models.testing import write_tiny_artifact

pytestmark = pytest.mark.integration


class StepClock:
    """Each call is one second after the previous one, so history order is deterministic."""

    def __init__(self) -> None:
        self.now = datetime(2026, 1, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def registry(lake: Lake, store: ArtifactStore) -> Registry:
    return Registry(lake, store, clock=StepClock())


@pytest.fixture
def artifact(tmp_path: Path):
    def make(salt: str, kind: str = "tiny-embed") -> Path:
        return write_tiny_artifact(tmp_path / "src" / f"{kind}-{salt}", kind, salt=salt)

    return make


@pytest.fixture
def three_versions(registry: Registry, artifact) -> Registry:
    for salt in "abc":
        registry.register("embedder", "embed", artifact(salt))
    return registry


def test_register_list_get_and_resolve_round_trip(registry: Registry, store: ArtifactStore, artifact):
    mv = registry.register(
        "embedder",
        "embed",
        artifact("a"),
        metrics={"recall@10": 0.9},
        lineage={"base": "tiny"},
        training_data_hash="d" * 64,
        description="first",
        actor="alice",
    )
    assert (mv.name, mv.version, mv.task, mv.schema_hash) == (
        "embedder",
        "1",
        "embed",
        task_schema_hash("embed"),
    )
    [summary] = registry.list_models()
    assert (summary.name, summary.task, summary.versions) == ("embedder", "embed", ["1"])
    assert summary.state == AliasState(name="embedder")
    stored = registry.get("embedder", "1")
    assert stored == mv
    assert (stored.metrics, stored.lineage, stored.created_by) == (
        {"recall@10": 0.9},
        {"base": "tiny"},
        "alice",
    )
    assert registry.resolve("embedder", "latest") == mv == registry.resolve("embedder", "1")
    assert (store.fetch(mv.artifact_uri, mv.sha256) / "manifest.json").is_file()


def test_auto_versions_count_up(registry: Registry, artifact):
    versions = [registry.register("embedder", "embed", artifact(s)).version for s in "abc"]
    assert versions == ["1", "2", "3"]
    assert [mv.version for mv in registry.versions("embedder")] == versions
    assert registry.resolve("embedder", "latest").version == "3"


def test_registering_the_same_artifact_again_returns_the_existing_version(registry: Registry, artifact):
    first = registry.register("embedder", "embed", artifact("a"))
    assert registry.register("embedder", "embed", artifact("a")) == first
    pinned = registry.register("embedder", "embed", artifact("b"), version="v2")
    assert registry.register("embedder", "embed", artifact("b"), version="v2") == pinned
    assert [mv.version for mv in registry.versions("embedder")] == ["1", "v2"]


def test_versions_are_immutable(registry: Registry, artifact):
    registry.register("embedder", "embed", artifact("a"), version="1")
    with pytest.raises(InvalidRegistryOperation, match="immutable"):
        registry.register("embedder", "embed", artifact("b"), version="1")


def test_a_model_keeps_one_task(registry: Registry, artifact):
    registry.register("embedder", "embed", artifact("a"))
    with pytest.raises(InvalidRegistryOperation, match="'embed' model"):
        registry.register("embedder", "classify", artifact("b", "tiny-classify"))


def test_register_refuses_a_schema_hash_that_is_not_the_tasks_contract(registry: Registry, artifact):
    with pytest.raises(SchemaHashMismatchError, match="differs from task 'embed'"):
        registry.register("embedder", "embed", artifact("a"), schema_hash="0" * 64)
    assert registry.list_models() == []


def test_resolve_errors_say_what_exists(three_versions: Registry):
    with pytest.raises(UnknownModelError, match="registered models: embedder"):
        three_versions.resolve("ranker")
    with pytest.raises(UnknownVersionError, match="versions: 1, 2, 3"):
        three_versions.resolve("embedder", "9")
    with pytest.raises(UnknownVersionError, match="tandem models promote embedder VERSION"):
        three_versions.resolve("embedder", "stable")


def test_promote_canary_and_shadow_move_the_aliases(three_versions: Registry):
    reg = three_versions
    assert reg.promote("embedder", "1", actor="alice").stable == "1"
    state = reg.set_canary("embedder", "2", 0.25, actor="alice", reason="int8")
    assert (state.stable, state.canary, state.canary_weight) == ("1", "2", 0.25)
    state = reg.set_shadow("embedder", "3", actor="bob")
    assert state.shadow == "3"
    assert [reg.resolve("embedder", a).version for a in ("stable", "canary", "shadow")] == ["1", "2", "3"]
    assert reg.states()["embedder"] == state
    state = reg.promote("embedder", "canary", actor="alice")
    assert (state.stable, state.canary, state.canary_weight, state.shadow) == ("2", None, 0.0, "3")
    assert reg.set_shadow("embedder", None, actor="bob").shadow is None


def test_canary_rules(three_versions: Registry):
    reg = three_versions
    with pytest.raises(InvalidRegistryOperation, match="no stable version"):
        reg.set_canary("embedder", "2", 0.1, actor="a")
    reg.promote("embedder", "1", actor="a")
    for weight in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidRegistryOperation, match=r"in \[0, 1\]"):
            reg.set_canary("embedder", "2", weight, actor="a")
    with pytest.raises(InvalidRegistryOperation, match="already stable"):
        reg.set_canary("embedder", "1", 0.1, actor="a")
    with pytest.raises(UnknownVersionError):
        reg.set_canary("embedder", "7", 0.1, actor="a")
    assert reg.clear_canary("embedder", actor="a").canary is None


def test_rollback_clears_the_canary_first_then_walks_back_stable(three_versions: Registry):
    reg = three_versions
    for v in ("1", "2", "3"):
        reg.promote("embedder", v, actor="a")
    reg.set_canary("embedder", "1", 0.5, actor="a")
    state = reg.rollback("embedder", actor="sensor", reason="error rate")
    assert (state.stable, state.canary, state.canary_weight) == ("3", None, 0.0)
    assert reg.rollback("embedder", actor="sensor").stable == "2"
    assert reg.rollback("embedder", actor="sensor").stable == "1"
    with pytest.raises(InvalidRegistryOperation, match="no previous stable"):
        reg.rollback("embedder", actor="sensor")
    assert reg.history("embedder", limit=1)[0].reason == "rollback: stable 2 -> 1"


def test_history_is_newest_first_and_records_who_and_why(three_versions: Registry):
    reg = three_versions
    reg.promote("embedder", "1", actor="alice", reason="first")
    reg.set_canary("embedder", "2", 0.1, actor="bob")
    reg.clear_canary("embedder", actor="carol", reason="flaky")
    history = reg.history("embedder")
    assert [(e.alias, e.version, e.weight, e.actor) for e in history] == [
        ("canary", None, None, "carol"),
        ("canary", "2", 0.1, "bob"),
        ("stable", "1", None, "alice"),
    ]
    assert history[0].reason == "flaky" and history[-1].reason == "first"
    assert history[0].at > history[1].at > history[2].at
    assert len(reg.history("embedder", limit=2)) == 2
    assert reg.history() == history


def test_promote_refuses_a_version_built_against_an_old_contract(three_versions: Registry, lake: Lake):
    good = three_versions.get("embedder", "1")
    lake.append(
        "model_versions",
        [{**good.__dict__, "version": "old", "schema_hash": "f" * 64, "metrics": None, "lineage": None}],
    )
    with pytest.raises(SchemaHashMismatchError) as info:
        three_versions.promote("embedder", "old", actor="alice")
    message = str(info.value)
    assert "'embedder' version 'old'" in message and "refused before any traffic reaches it" in message
    assert "f" * 64 in message and task_schema_hash("embed") in message
    three_versions.promote("embedder", "1", actor="alice")
    with pytest.raises(SchemaHashMismatchError):
        three_versions.set_canary("embedder", "old", 0.1, actor="alice")
    with pytest.raises(SchemaHashMismatchError):
        three_versions.set_shadow("embedder", "old", actor="alice")
    assert [e.version for e in three_versions.history("embedder")] == ["1"]  # nothing appended for "old"


def test_pollers_see_changes_made_by_another_registry(
    three_versions: Registry, lake: Lake, store: ArtifactStore
):
    gateway = Registry(lake, store)
    changed, token = gateway.changed_since(None)
    assert changed and gateway.state("embedder").stable is None
    assert gateway.changed_since(token) == (False, token)
    three_versions.promote("embedder", "2", actor="cli")
    changed, token = gateway.changed_since(token)
    assert changed
    assert gateway.states()["embedder"].stable == "2"
    assert gateway.table_versions() == {"model_versions": token[0], "registry_events": token[1]}


def test_concurrent_writers_lose_nothing(lake: Lake, store: ArtifactStore, artifact):
    sources = [artifact(f"w{i}") for i in range(8)]
    barrier = threading.Barrier(8)

    def writer(i: int) -> str:
        reg = Registry(Lake(lake.root), store)  # one registry per writer, like separate processes
        barrier.wait()
        mv = reg.register("embedder", "embed", sources[i], actor=f"w{i}")
        reg.set_shadow("embedder", mv.version, actor=f"w{i}", reason=f"writer {i}")
        return mv.version

    with ThreadPoolExecutor(max_workers=8) as pool:
        versions = list(pool.map(writer, range(8)))  # re-raises any writer's error
    reg = Registry(lake, store)
    assert sorted(versions, key=int) == [str(n) for n in range(1, 9)]
    assert sorted(mv.version for mv in reg.versions("embedder")) == sorted(versions)
    events = reg.history("embedder")
    assert sorted(e.actor for e in events) == sorted(f"w{i}" for i in range(8))
    assert {e.version for e in events} == set(versions)
    assert reg.state("embedder").shadow == events[0].version
