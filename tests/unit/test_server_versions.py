"""A model server's versions follow the registry: load on a new alias, release after grace, report in /info."""

from __future__ import annotations

import pytest

from online.servers.deployment import DeploymentSpec, VersionSpec
from online.servers.versions import ServedVersions, merged_status


def _spec(version: str) -> VersionSpec:
    return VersionSpec(version=version, artifact_uri=f"file:///a/{version}", sha256=version * 64)


def _served(tmp_path, clock, fail=()):
    dep = DeploymentSpec(model="m", task="embed", versions=(_spec("1"),), artifacts_root=str(tmp_path))
    loads: list[str] = []

    def load(spec: VersionSpec):
        if spec.version in fail:
            raise RuntimeError(f"broken artifact {spec.version}")
        loads.append(spec.version)
        return f"op-{spec.version}"

    served = ServedVersions(dep, load, status_dir=str(tmp_path), clock=lambda: clock[0])
    served.load_initial()
    return served, loads


def test_a_version_that_gains_an_alias_is_loaded_and_reported(tmp_path):
    clock = [0.0]
    served, loads = _served(tmp_path, clock)
    served.sync({"stable": _spec("1"), "canary": _spec("2")}, "1", release_grace_s=60)
    assert served.ops == {"1": "op-1", "2": "op-2"} and loads == ["1", "2"]
    status = merged_status(str(tmp_path), workers=1)
    assert status["loaded"] == ["1", "2"] and status["loading"] == [] and status["failed"] == {}


def test_a_version_that_loses_its_alias_is_released_only_after_the_grace_period(tmp_path):
    clock = [0.0]
    served, _ = _served(tmp_path, clock)
    served.sync({"stable": _spec("1"), "canary": _spec("2")}, "1", release_grace_s=30)
    served.sync({"stable": _spec("1")}, "1", release_grace_s=30)  # rolled back
    assert "2" in served.ops  # requests already routed to it still finish
    clock[0] = 29.0
    served.sync({"stable": _spec("1")}, "1", release_grace_s=30)
    assert "2" in served.ops
    clock[0] = 31.0
    served.sync({"stable": _spec("1")}, "1", release_grace_s=30)
    assert served.ops == {"1": "op-1"}
    assert merged_status(str(tmp_path), workers=1)["loaded"] == ["1"]


def test_versions_the_server_started_with_are_never_released(tmp_path):
    clock = [0.0]
    served, _ = _served(tmp_path, clock)
    served.sync({"stable": _spec("2")}, "2", release_grace_s=0)
    clock[0] = 1000.0
    served.sync({"stable": _spec("2")}, "2", release_grace_s=0)
    assert set(served.ops) == {"1", "2"} and served.default == "2"


def test_a_version_that_fails_to_load_is_reported_and_the_rest_keep_serving(tmp_path):
    clock = [0.0]
    served, loads = _served(tmp_path, clock, fail={"3"})
    served.sync({"stable": _spec("1"), "canary": _spec("3")}, "1", release_grace_s=60)
    served.sync({"stable": _spec("1"), "canary": _spec("3")}, "1", release_grace_s=60)
    assert served.ops == {"1": "op-1"} and loads == ["1"]  # not retried on every poll
    status = merged_status(str(tmp_path), workers=1)
    assert status["loaded"] == ["1"] and "broken artifact 3" in status["failed"]["3"]


def test_with_several_workers_a_version_counts_as_loaded_only_when_every_worker_has_it(tmp_path):
    (tmp_path / "worker-1.json").write_text('{"loaded": ["1", "2"], "loading": null, "failed": {}}')
    (tmp_path / "worker-2.json").write_text('{"loaded": ["1"], "loading": "2", "failed": {}}')
    status = merged_status(str(tmp_path), workers=2)
    assert status["loaded"] == ["1"] and status["loading"] == ["2"]
    assert merged_status(str(tmp_path), workers=3)["loaded"] == []  # one worker not reporting yet


@pytest.mark.parametrize("status_dir", [None])
def test_no_status_dir_means_nothing_reported(status_dir):
    assert merged_status(status_dir, workers=1)["loaded"] == []
