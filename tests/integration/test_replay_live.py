"""Replay over traffic the real gateway logged: requests sent over HTTP land in `requests`, and
`tandem replay` runs them through a candidate, as a user runs it (tiny models, real processes)."""

from __future__ import annotations

import subprocess
import sys

import httpx
import pytest

from lakehouse import Lake
from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import ROOT, Cluster, base_env, tiny_platform_home

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A home whose gateway logged 40 classify and 30 embedding requests (keep) and 10 of each (hash)."""
    home = tiny_platform_home(tmp_path_factory.mktemp("replay-live"))
    settings = TandemSettings(home=home)
    tenants = TenantStore(settings.tenants_file)
    keys = {p: tenants.create(f"t-{p}", rate_per_s=1000, burst=1000, pii=p)[1] for p in ("keep", "hash")}
    env = base_env(home, TANDEM_GATEWAY_LOG_FLUSH_S="0.3")
    c = Cluster(home, env)
    try:
        url = c.start_servers_and_gateway({"embedder": "1", "classifier": "1", "reranker": "1"}, home)
        with httpx.Client(base_url=url, timeout=30) as http:
            for policy, n in (("keep", 40), ("hash", 10)):
                auth = {"Authorization": f"Bearer {keys[policy]}"}
                for i in range(n):
                    text = f"{policy} request {i} about the match and the market"
                    assert http.post("/v1/models/classifier/predict", json={"instances": [{"text": text}]},
                                     headers=auth).status_code == 200
                    if i < n * 3 // 4:
                        assert http.post("/v1/embeddings", json={"model": "embedder", "input": [text, text[::-1]]},
                                         headers=auth).status_code == 200
    finally:
        c.stop_all()  # the gateway writes what it buffered as it stops
    reg = Platform.open(settings).registry
    reg.register("classifier", "classify", write_tiny_artifact(home / "src" / "c2", "tiny-classify"), version="2")
    reg.register("classifier", "classify", write_tiny_artifact(home / "src" / "c3", "tiny-classify", salt="v3"),
                 version="3")
    reg.register("embedder", "embed", write_tiny_artifact(home / "src" / "e2", "tiny-embed"), version="2")
    return home


def tandem(home, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "orchestration.cli", *args], cwd=ROOT, env=base_env(home),
                          capture_output=True, text=True, timeout=300)


def test_the_gateway_logs_what_replay_needs_and_a_candidate_is_judged_on_it(logged):
    rows = Lake(TandemSettings(home=logged).lake_root).sql(
        "SELECT tenant, count(*) AS n FROM requests GROUP BY tenant ORDER BY tenant", []).to_pylist()
    assert rows == [{"tenant": "t-hash", "n": 17}, {"tenant": "t-keep", "n": 70}]

    same = tandem(logged, "replay", "classifier", "--candidate", "2")
    assert same.returncode == 0, same.stdout + same.stderr
    assert "items replayed" in same.stdout and "passed: classifier@2 may take canary traffic" in same.stdout
    assert "skipped 10: input not kept (pii policy hash)" in same.stdout
    other = tandem(logged, "replay", "classifier", "--candidate", "3")
    assert other.returncode == 1 and "not passed" in other.stdout, other.stdout + other.stderr
    embed = tandem(logged, "replay", "embedder", "--candidate", "2", "--tenant", "t-keep")
    assert embed.returncode == 0, embed.stdout + embed.stderr

    rows = Lake(TandemSettings(home=logged).lake_root).sql(
        "SELECT model, candidate_version, passed, n_replayed FROM replay_evaluations ORDER BY evaluated_at",
        []).to_pylist()
    assert [(r["model"], r["candidate_version"], r["passed"], r["n_replayed"]) for r in rows] == [
        ("classifier", "2", True, 40), ("classifier", "3", False, 40), ("embedder", "2", True, 60)]
    # the replay is the evaluation the offline gate asks for
    assert tandem(logged, "models", "canary", "classifier", "2", "--weight", "0.1",
                  "--reason", "replayed").returncode == 0
    refused = tandem(logged, "models", "canary", "classifier", "3", "--weight", "0.1")
    assert refused.returncode == 1 and "tandem replay classifier --candidate 3" in refused.stderr
