"""Fixtures for hostile-input and fuzz tests: a TANDEM_HOME with tiny models and tenants, served by the
gateway in-process (both request paths) or as real processes (model servers + gateway) over TCP."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.app import create_app
from online.gateway.runtime import DEPLOYMENTS_FILE
from online.gateway.settings import GatewaySettings
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env, gateway, model_server

LABELS = ["sports", "tech", "finance"]
TENANTS = {
    "acme": dict(scopes={"predict", "admin", "jobs"}, rate_per_s=10_000, burst=10_000),
    "slow": dict(scopes={"predict", "admin", "jobs"}, rate_per_s=0.001, burst=1),
}


@dataclass
class Home:
    path: Path
    settings: TandemSettings
    keys: dict[str, str]


def make_home(path: Path) -> Home:
    """A home with embedder 1 (stable) and 2, classifier 1, reranker 1, and the tenants above."""
    settings = TandemSettings(home=path)
    reg = Platform.open(settings).registry
    src = path / "src"
    reg.register("embedder", "embed", write_tiny_artifact(src / "e1", "tiny-embed", dim=8), version="1")
    reg.register("embedder", "embed", write_tiny_artifact(src / "e2", "tiny-embed", dim=8, salt="v2"), version="2")
    reg.register("classifier", "classify", write_tiny_artifact(src / "c1", "tiny-classify", labels=LABELS),
                 version="1")
    reg.register("reranker", "rerank", write_tiny_artifact(src / "r1", "tiny-rerank", dim=8), version="1")
    for name in ("embedder", "classifier", "reranker"):
        reg.promote(name, "1", actor="test")
    store = TenantStore(settings.tenants_file)
    keys = {tid: store.create(tid, **kw)[1] for tid, kw in TENANTS.items()}
    return Home(path, settings, keys)


@pytest.fixture(scope="module")
def home(tmp_path_factory) -> Home:
    return make_home(tmp_path_factory.mktemp("home"))


@pytest.fixture(scope="module")
def client(home: Home):
    """The gateway in-process (no model servers)."""
    app = create_app(home.settings, GatewaySettings(log_enabled=False,
                                                    max_body_bytes=64 << 10, max_job_body_bytes=1 << 20))
    with TestClient(app, raise_server_exceptions=False) as c:
        c.runtime = app.state.runtime
        yield c


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    """Model-server processes and a gateway process on free ports, stopped by PID at the end."""
    h = make_home(tmp_path_factory.mktemp("cluster"))
    env = base_env(h.path, TANDEM_GATEWAY_LOG_FLUSH_S="0.5", TANDEM_GATEWAY_REGISTRY_POLL_S="0.5")
    c = Cluster(h.path, env)
    servers = {"embedder": "1,2", "classifier": "1", "reranker": "1"}
    try:
        procs = [c.add(model_server(env, h.path, name, versions)).start(h.path) for name, versions in servers.items()]
        for p in procs:
            p.wait_healthy()
        urls = {name: c.procs[f"server-{name}"].health.removesuffix("/health") for name in servers}
        (h.path / DEPLOYMENTS_FILE).write_text(json.dumps(urls))
        gw = c.add(gateway(env, h.path)).start(h.path)
        gw.wait_healthy()
        c.url = gw.health.removesuffix("/healthz")
        c.keys = h.keys
        c.pid = gw.proc.pid
        yield c
    finally:
        c.stop_all()
