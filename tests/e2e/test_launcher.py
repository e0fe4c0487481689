"""`tandem up`'s launcher on a home of tiny models: everything starts, answers, and stops by PID."""

from __future__ import annotations

import httpx
import pytest

from models.settings import TandemSettings
from orchestration.bootstrap import demo_key
from orchestration.launcher import EXAMPLES, run_platform, stop_children
from tests.integration.conftest import free_port, tiny_platform_home

pytestmark = pytest.mark.e2e


def test_up_starts_servers_and_gateway_prints_working_examples_and_stops_everything(tmp_path, monkeypatch):
    settings = TandemSettings(home=tiny_platform_home(tmp_path))
    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    port = free_port()
    lines: list[str] = []
    children = run_platform(settings, port=port, dagster_port=None, say=lines.append, block=False)
    assert isinstance(children, list)
    try:
        text = "\n".join(lines)
        assert f"http://127.0.0.1:{port}/docs" in text and demo_key(settings) in text
        for name, body in EXAMPLES.items():
            assert f"/v1/workflows/{name}/run" in text
            r = httpx.post(f"http://127.0.0.1:{port}/v1/workflows/{name}/run", json=body,
                           headers={"Authorization": f"Bearer {demo_key(settings)}"}, timeout=30)
            assert r.status_code == 200, r.text
        assert httpx.get(f"http://127.0.0.1:{port}/docs").status_code == 200
    finally:
        stop_children(children)
    assert all(c.proc.poll() is not None for c in children)
