"""The request record through the real gateway: a row per request, readable by id before and after the
flush, tenant-scoped, and free of the PII a tenant's policy forbids (every file and every string column)."""

from __future__ import annotations

import httpx
import pytest

from lakehouse import Lake
from models.settings import TandemSettings
from online.gateway.tenants import TenantStore
from tests.integration.conftest import Cluster, base_env, gateway, tiny_platform_home

pytestmark = pytest.mark.integration

POLICIES = ("keep", "redact", "hash", "drop")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tiny_platform_home(tmp_path_factory.mktemp("home"))
    tenants = TenantStore(TandemSettings(home=home).tenants_file)
    keys = {}
    for policy in POLICIES:
        _, keys[policy] = tenants.create(f"t-{policy}", scopes={"predict", "jobs"}, rate_per_s=1000, burst=1000,
                                         pii=policy)
    _, keys["other"] = tenants.create("t-other", scopes={"predict"}, rate_per_s=1000, burst=1000)
    _, keys["slow"] = tenants.create("t-slow", scopes={"predict"}, rate_per_s=1000, burst=1000,
                                     daily_quota=1)
    # A long flush interval: records stay in the gateway's buffer until it stops (which writes them).
    env = base_env(home, TANDEM_GATEWAY_LOG_FLUSH_S="600")
    c = Cluster(home, env)
    try:
        c.url = c.start_servers_and_gateway({"embedder": "1", "classifier": "1", "reranker": "1"}, home)
        c.keys = keys
        yield c
    finally:
        c.stop_all()


def post(c, path, body, tenant):
    return httpx.post(c.url + path, json=body, headers={"Authorization": f"Bearer {c.keys[tenant]}"}, timeout=30)


def record(c, request_id, tenant):
    return httpx.get(f"{c.url}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {c.keys[tenant]}"},
                     timeout=30)


def restart_gateway(c) -> None:
    """Stop the gateway (it writes what it buffered) and start a fresh one on the same home."""
    c.procs["gateway"].stop()
    gw = c.add(gateway(c.env, c.home)).start(c.home)
    gw.wait_healthy()
    c.url = gw.health.removesuffix("/healthz")


def send_every_route(c, tenant: str, text: str) -> dict[str, httpx.Response]:
    return {
        "predict": post(c, "/v1/models/classifier/predict", {"instances": [{"text": text}]}, tenant),
        "embeddings": post(c, "/v1/embeddings", {"model": "embedder", "input": [text, "plain words"]}, tenant),
        "rerank": post(c, "/v1/rerank", {"model": "reranker", "query": text, "documents": [text, "other words"],
                                         "return_documents": True}, tenant),
        "workflow": post(c, "/v1/workflows/classify/run", {"input": {"text": text}}, tenant),
    }


def test_every_route_leaves_a_record_readable_by_id_before_and_after_the_flush(cluster):
    answers = send_every_route(cluster, "keep", "a text about sports and teams")
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 200)
    bad = post(cluster, "/v1/models/classifier/predict", {"instances": [{"txt": "x"}]}, "keep")
    missing = post(cluster, "/v1/models/nope/predict", {"instances": [{"text": "x"}]}, "keep")
    unauth = httpx.post(cluster.url + "/v1/embeddings", json={"model": "embedder", "input": "x"}, timeout=30)
    assert (bad.status_code, missing.status_code, unauth.status_code) == (422, 404, 401)
    post(cluster, "/v1/embeddings", {"model": "embedder", "input": "x"}, "slow")
    limited = post(cluster, "/v1/embeddings", {"model": "embedder", "input": "x"}, "slow")
    assert limited.status_code == 429

    def check(stage: str):
        got = {k: record(cluster, r.headers["x-request-id"], "keep") for k, r in answers.items()}
        assert {k: r.status_code for k, r in got.items()} == dict.fromkeys(got, 200), (stage, got)
        recs = {k: r.json() for k, r in got.items()}
        assert recs["embeddings"]["output"]["data"][0]["embedding"] == pytest.approx(
            answers["embeddings"].json()["data"][0]["embedding"], rel=1e-6)
        assert recs["predict"]["output"]["predictions"] == answers["predict"].json()["predictions"]
        assert [(x["index"], x["relevance_score"]) for x in recs["rerank"]["output"]["results"]] == [
            (x["index"], x["relevance_score"]) for x in answers["rerank"].json()["results"]]
        assert recs["workflow"]["output"]["output"] == answers["workflow"].json()["output"]
        assert recs["workflow"]["workflow"] == "classify" and recs["workflow"]["steps"][0]["model"] == "classifier"
        assert all(r["status"] == "ok" and r["http_status"] == 200 and r["kind"] == "sync" for r in recs.values())
        assert recs["predict"]["input"] == {"name": "classifier", "instances": [{"text": "a text about sports and teams"}]}
        for resp, status, slug in ((bad, 422, "invalid-input"), (missing, 404, "not-found")):
            rec = record(cluster, resp.headers["x-request-id"], "keep").json()
            assert (rec["status"], rec["http_status"], rec["problem_type"]) == (
                "error", status, "urn:tandem:problem:" + slug), (stage, rec)
        rec = record(cluster, limited.headers["x-request-id"], "slow").json()
        assert (rec["status"], rec["http_status"], rec["problem_type"]) == (
            "error", 429, "urn:tandem:problem:quota-exceeded")
        assert record(cluster, unauth.headers["x-request-id"], "keep").status_code == 404
        # another tenant's id answers exactly like a missing one
        theirs = record(cluster, answers["predict"].headers["x-request-id"], "other")
        nobody = record(cluster, "no-such-request", "other")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.headers["content-type"] == "application/problem+json"
        assert theirs.json()["detail"].replace(answers["predict"].headers["x-request-id"], "ID") == \
            nobody.json()["detail"].replace("no-such-request", "ID")

    lake = Lake(TandemSettings(home=cluster.home).lake_root)
    assert lake.version("requests") is None  # nothing flushed yet: answered from the buffer
    check("buffered")
    restart_gateway(cluster)
    assert lake.read("requests").num_rows >= 8
    check("lake")
