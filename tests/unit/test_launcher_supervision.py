"""`tandem up`'s supervisor with stand-in processes: restarts, giving up, optional children."""

from __future__ import annotations

import sys

import pytest

from orchestration import launcher
from orchestration.launcher import Child, _supervise, _wait_healthy, stop_children


def _child(name: str, code: str, **kw) -> Child:
    return Child(name, [sys.executable, "-c", code], {}, "", **kw)


@pytest.fixture(autouse=True)
def fast_backoff(monkeypatch):
    monkeypatch.setattr(launcher, "MAX_BACKOFF_S", 0.05)


def test_a_critical_child_that_keeps_crashing_is_given_up_on_and_stops_the_platform_with_exit_code_1():
    lines: list[str] = []
    crashing = _child("gateway", "raise SystemExit(3)", critical=True)
    steady = _child("model server x", "import time; time.sleep(60)")
    children = [crashing, steady]
    for c in children:
        c.start()
    try:
        assert _supervise(children, lines.append, poll_s=0.01) == 1
    finally:
        stop_children(children, lines.append, grace_s=5)
    assert sum("gateway exited with code 3; restarting it" in line for line in lines) == launcher.MAX_CRASHES - 1
    assert any("giving up on it (stopping the platform)" in line for line in lines)
    assert steady.proc.returncode is not None  # stopped by stop_children, not left behind


def test_an_optional_child_that_dies_while_starting_does_not_stop_the_start_and_is_restarted():
    lines: list[str] = []
    dagster = _child("dagster daemon", "raise SystemExit(2)", optional=True)
    gateway = _child("gateway", "import time; time.sleep(60)", critical=True)
    for c in (dagster, gateway):
        c.start()
    try:
        import time

        time.sleep(0.5)
        _wait_healthy([dagster, gateway], lines.append, timeout_s=5)
        assert any("dagster daemon exited with code 2 while starting" in line for line in lines)
        assert dagster.restart_at is not None and gateway.healthy
    finally:
        stop_children([dagster, gateway], lines.append, grace_s=5)


def test_a_required_child_that_dies_while_starting_fails_the_start():
    server = _child("model server x", "raise SystemExit(4)")
    server.start()
    server.proc.wait()
    with pytest.raises(launcher.LauncherError, match="model server x exited with code 4 while starting"):
        _wait_healthy([server], lambda _: None, timeout_s=5)


def test_a_server_starts_with_stable_and_tenant_pins_and_leaves_canary_and_shadow_to_the_registry(tmp_path):
    from models.registry import AliasState, ModelSummary
    from models.settings import TandemSettings
    from models.tenancy import TenantStore
    from orchestration.launcher import served_versions

    settings = TandemSettings(home=tmp_path)
    TenantStore(settings.tenants_file).create("acme", scopes={"predict"}, model_pins={"embedder": "1"})
    summary = ModelSummary("embedder", "embed", ["1", "2", "3", "4"],
                           AliasState("embedder", stable="2", canary="3", canary_weight=0.1, shadow="4"))
    assert served_versions(settings, summary) == ["2", "1"]
