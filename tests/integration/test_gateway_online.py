"""The online path for real: LitServe model-server processes, the gateway process, httpx over TCP.

Models are the deterministic tiny ones (a 150 ms sleep per batch for embed and classify, so
parallelism and deadlines are observable); every other part is the production code.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import httpx
import pytest

from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env

pytestmark = pytest.mark.integration
LABELS = ["sports", "tech", "finance"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    src = home / "src"
    reg.register("embedder", "embed", write_tiny_artifact(src / "e1", "tiny-embed", dim=8, delay_ms=150), version="1")
    reg.register("embedder", "embed", write_tiny_artifact(src / "e2", "tiny-embed", dim=8, delay_ms=150, salt="v2"),
                 version="2")
    reg.register("classifier", "classify",
                 write_tiny_artifact(src / "c1", "tiny-classify", labels=LABELS, delay_ms=150), version="1")
    reg.register("reranker", "rerank", write_tiny_artifact(src / "r1", "tiny-rerank", dim=8), version="1")
    for name in ("embedder", "classifier", "reranker"):
        reg.promote(name, "1", actor="test")

    tenants = TenantStore(settings.tenants_file)
    keys = {}
    for tid, kw in {
        "acme": dict(scopes={"predict", "admin", "jobs"}, rate_per_s=1000, burst=1000),
        "limited": dict(scopes={"predict"}, rate_per_s=0.2, burst=1),
        "quota": dict(scopes={"predict"}, rate_per_s=100, burst=100, daily_quota=2),
        "jobsonly": dict(scopes={"jobs"}),
        "narrow": dict(scopes={"predict"}, workflows=["classify"]),
        "pinned": dict(scopes={"predict"}, model_pins={"embedder": "2"}),
    }.items():
        _, keys[tid] = tenants.create(tid, **kw)

    env = base_env(home, TANDEM_GATEWAY_REGISTRY_POLL_S="0.5", TANDEM_GATEWAY_BREAKER_RESET_S="1",
                   TANDEM_GATEWAY_BREAKER_FAILURES="3", TANDEM_GATEWAY_LOG_FLUSH_S="0.3",
                   TANDEM_GATEWAY_MAX_BODY_BYTES="65536")
    c = Cluster(home, env)
    try:
        c.url = c.start_servers_and_gateway({"embedder": "1,2", "classifier": "1", "reranker": "1"}, home)
        c.keys = keys
        c.registry = reg
        yield c
    finally:
        c.stop_all()


def call(c, path, body=None, tenant="acme", headers=None, method="POST"):
    hdrs = {"Authorization": f"Bearer {c.keys[tenant]}"} if tenant else {}
    hdrs.update(headers or {})
    return httpx.request(method, c.url + path, json=body, headers=hdrs, timeout=30)


def run(c, workflow, inp, **kw):
    return call(c, f"/v1/workflows/{workflow}/run", {"input": inp}, **kw)


def test_readyz_reports_every_model_server_healthy(cluster):
    r = httpx.get(cluster.url + "/readyz")
    assert r.status_code == 200, r.text
    assert set(r.json()["model_servers"]) == {"embedder", "classifier", "reranker"}


def test_each_shipped_workflow_runs(cluster):
    r = run(cluster, "classify", {"text": "the striker scored"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"]["label"] in LABELS
    step = body["metadata"]["steps"][0]
    assert (step["model"], step["version"], step["arm"]) == ("classifier", "1", "stable")

    r = run(cluster, "search", {"query": "q", "documents": ["a", "b", "c"]})
    assert r.status_code == 200, r.text
    assert sorted(x["index"] for x in r.json()["output"]["results"]) == [0, 1, 2]
    # the documented shape (docs/workflows.md, docs/gateway.md): ranked results, nothing else
    assert set(r.json()["output"]) == {"results"}
    assert all(set(x) == {"index", "document", "score"} for x in r.json()["output"]["results"])
    assert [s["step"] for s in r.json()["metadata"]["steps"]] == ["embed_query", "embed_documents", "rerank"]


def test_enrich_branches_run_in_parallel(cluster):
    r = run(cluster, "enrich", {"text": "parallel branches " + str(time.time())})
    assert r.status_code == 200, r.text
    meta = r.json()["metadata"]
    steps = {s["step"]: s for s in meta["steps"]}
    assert len(r.json()["output"]["embedding"]) == 8 and r.json()["output"]["label"] in LABELS
    # Sequential steps would take at least the sum of both; overlapping ones take about the longer.
    assert meta["latency_ms"] < steps["embed"]["latency_ms"] + steps["classify"]["latency_ms"]


def test_repeated_input_is_served_from_the_cache(cluster):
    inp = {"text": "cache me " + str(time.time())}
    first = run(cluster, "classify", inp).json()
    second = run(cluster, "classify", inp).json()
    assert first["metadata"]["steps"][0]["cached"] is False
    assert second["metadata"]["steps"][0]["cached"] is True
    assert second["output"] == first["output"]


@pytest.mark.parametrize(
    ("tenant", "path", "body", "headers", "status", "needle"),
    [
        (None, "/v1/workflows/classify/run", {"input": {"text": "x"}}, {}, 401, "Authorization"),
        ("jobsonly", "/v1/workflows/classify/run", {"input": {"text": "x"}}, {}, 403, "predict"),
        ("narrow", "/v1/workflows/enrich/run", {"input": {"text": "x"}}, {}, 403, "enrich"),
        ("acme", "/v1/workflows/nope/run", {"input": {"text": "x"}}, {}, 404, "nope"),
        ("acme", "/v1/models/nope/predict", {"instances": [{"text": "x"}]}, {}, 404, "nope"),
        ("acme", "/v1/workflows/classify/run", {"input": {}}, {}, 422, "input.text"),
        ("acme", "/v1/workflows/classify/run", {"input": {"text": 5}}, {}, 422, "input.text"),
        ("acme", "/v1/workflows/classify/run", {"inputs": {"text": "x"}}, {}, 422, "input"),
        ("acme", "/v1/workflows/classify/run", {"input": {"text": "x" * 70000}}, {}, 413, "limit"),
        ("acme", "/v1/workflows/classify/run", {"input": {"text": "x"}, "model_versions": {"classifier": "9"}},
         {}, 404, "version"),
        ("acme", "/v1/workflows/classify/run", {"input": {"text": "slow " + str(time.time())}},
         {"X-Deadline-Ms": "40"}, 504, "deadline"),
    ],
)
def test_errors_are_problem_documents_with_the_right_status(cluster, tenant, path, body, headers, status, needle):
    r = call(cluster, path, body, tenant=tenant, headers=headers)
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert needle in r.json()["detail"]


def test_rate_limit_and_quota_answer_429_with_retry_after(cluster):
    statuses = [run(cluster, "classify", {"text": "rl"}, tenant="limited").status_code for _ in range(3)]
    assert statuses[0] == 200 and 429 in statuses
    r = run(cluster, "classify", {"text": "rl"}, tenant="limited")
    assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1
    statuses = [run(cluster, "classify", {"text": "q"}, tenant="quota").status_code for _ in range(3)]
    assert statuses == [200, 200, 429]


def test_idempotency_key_replays_and_rejects_a_different_body(cluster):
    key = {"Idempotency-Key": f"k-{time.time()}"}
    body = {"text": "idem " + str(time.time())}
    first = run(cluster, "classify", body, headers=key)
    again = run(cluster, "classify", body, headers=key)
    assert first.status_code == again.status_code == 200
    assert again.json() == first.json()  # same request id: the stored answer, models not run again
    assert again.headers.get("idempotent-replayed") == "true"
    other = run(cluster, "classify", {"text": "different"}, headers=key)
    assert other.status_code == 409


def test_tenant_pin_and_explicit_pin_choose_the_version(cluster):
    r = call(cluster, "/v1/models/embedder/predict", {"instances": [{"text": "pin"}]}, tenant="pinned")
    assert r.json()["metadata"]["steps"][0]["version"] == "2"
    r = call(cluster, "/v1/models/embedder/predict", {"instances": [{"text": "pin"}], "version": "1"},
             tenant="pinned")
    assert r.json()["metadata"]["steps"][0]["version"] == "1"


def _versions_by_key(c, keys):
    out = {}
    for k in keys:
        r = call(c, "/v1/models/embedder/predict", {"instances": [{"text": f"canary {k}"}]},
                 headers={"X-Routing-Key": k})
        step = r.json()["metadata"]["steps"][0]
        out[k] = (step["version"], step["arm"])
    return out


def _eventually(check, timeout_s=5.0):
    deadline = time.monotonic() + timeout_s
    while True:
        if check():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)


def test_canary_is_sticky_and_weight_changes_apply_without_restart(cluster):
    keys = [f"user-{i}" for i in range(16)]
    r = call(cluster, "/v1/admin/models/embedder/canary",
             {"version": "2", "weight": 0.5, "reason": "routing test, no evaluation needed", "force": True})
    assert r.status_code == 200, r.text
    first = _versions_by_key(cluster, keys)
    assert _versions_by_key(cluster, keys) == first  # sticky per routing key
    assert {v for v, _ in first.values()} == {"1", "2"}
    assert {a for _, a in first.values()} == {"stable", "canary"}

    cluster.registry.set_canary("embedder", "2", 1.0, actor="test")  # out of band: via the registry
    assert _eventually(lambda: {v for v, _ in _versions_by_key(cluster, keys[:4]).values()} == {"2"})
    cluster.registry.rollback("embedder", actor="test", reason="test rollback")
    assert _eventually(lambda: {v for v, _ in _versions_by_key(cluster, keys[:4]).values()} == {"1"})


def test_shadow_gets_a_copy_without_touching_the_response(cluster):
    r = call(cluster, "/v1/admin/models/embedder/shadow", {"version": "2"})
    assert r.status_code == 200, r.text
    try:
        r = call(cluster, "/v1/models/embedder/predict", {"instances": [{"text": "shadowed " + str(time.time())}]})
        assert r.status_code == 200
        step = r.json()["metadata"]["steps"][0]
        assert (step["version"], step["arm"]) == ("1", "stable")
        request_id = r.json()["metadata"]["request_id"]

        def shadow_logged():
            rows = cluster.registry._lake.sql(
                "SELECT arm, version FROM predictions WHERE request_id = ?", [request_id]).to_pylist()
            return {("stable", "1"), ("shadow", "2")} <= {(x["arm"], x["version"]) for x in rows}

        assert _eventually(shadow_logged, timeout_s=10)
    finally:
        call(cluster, "/v1/admin/models/embedder/shadow", {"version": None})


def test_openai_client_and_rerank_route(cluster):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=cluster.url + "/v1", api_key=cluster.keys["acme"])
    res = client.embeddings.create(model="embedder", input=["hello", "world"])
    assert len(res.data) == 2 and len(res.data[0].embedding) == 8
    r = call(cluster, "/v1/rerank", {"query": "q", "documents": ["a", {"text": "b"}], "top_n": 1})
    assert r.status_code == 200, r.text
    assert len(r.json()["results"]) == 1 and "relevance_score" in r.json()["results"][0]


def test_traceparent_is_continued_and_metrics_are_exposed(cluster):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    r = run(cluster, "classify", {"text": "trace"}, headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert r.json()["metadata"]["trace_id"] == trace_id
    text = httpx.get(cluster.url + "/metrics").text
    assert 'tandem_requests_total{' in text and 'tenant="acme"' in text
    assert "tandem_step_latency_seconds_bucket" in text


def test_predictions_land_in_delta_and_tandem_sql_reads_them(cluster):
    def logged():
        out = subprocess.run(
            [sys.executable, "-m", "orchestration.cli", "sql",
             "SELECT workflow, count(*) AS n FROM predictions WHERE tenant = 'acme' GROUP BY workflow",
             "--format", "json"], env=cluster.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return {r["workflow"]: r["n"] for r in json.loads(out.stdout)}

    assert _eventually(lambda: {"classify", "enrich", "search"} <= set(logged()), timeout_s=10)


def test_killed_model_server_gives_503_opens_the_breaker_and_recovers(cluster):
    # classify falls back to the embedder when the classifier is down: both must be down for a 503.
    servers = [cluster.procs["server-classifier"], cluster.procs["server-embedder"]]
    for server in servers:
        server.stop()
    try:
        r = run(cluster, "classify", {"text": "down " + str(time.time())})
        assert r.status_code == 503, r.text
        assert "classifier" in r.json()["detail"] and int(r.headers["retry-after"]) >= 1
        assert "127.0.0.1" not in r.text  # no internal addresses in what callers see
        r = run(cluster, "classify", {"text": "down again " + str(time.time())})
        assert r.status_code == 503
        assert "circuit open" in r.json()["detail"]
        assert 'tandem_breaker_state{endpoint="classifier"}' in httpx.get(cluster.url + "/metrics").text
    finally:
        for server in servers:
            server.start(cluster.home)
        for server in servers:
            server.wait_healthy()
    assert _eventually(lambda: run(cluster, "classify", {"text": "back " + str(time.time())}).status_code == 200,
                       timeout_s=10)


def test_async_job_end_to_end_through_the_gateway_and_dagster(cluster):
    import dagster as dg

    from assets import async_job_results
    from assets.resources import build_resources
    from orchestration.definitions import async_job
    from orchestration.sensors import make_async_jobs_sensor

    inputs = [{"text": f"async item {i}"} for i in range(5)]
    r = call(cluster, "/v1/jobs", {"workflow": "classify", "inputs": inputs}, headers={"Idempotency-Key": "job-1"})
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    again = call(cluster, "/v1/jobs", {"workflow": "classify", "inputs": inputs}, headers={"Idempotency-Key": "job-1"})
    assert again.json()["job_id"] == job_id
    assert call(cluster, "/v1/jobs", {"workflow": "classify", "inputs": inputs[:1]},
                headers={"Idempotency-Key": "job-1"}).status_code == 409
    bad = call(cluster, "/v1/jobs", {"workflow": "classify", "inputs": [{"text": "ok"}, {}]})
    assert bad.status_code == 422 and "inputs.1.text" in bad.json()["detail"]
    assert call(cluster, f"/v1/jobs/{job_id}", method="GET").json()["status"] == "queued"
    assert call(cluster, f"/v1/jobs/{job_id}", tenant="jobsonly", method="GET").status_code == 404

    resources = build_resources(home=str(cluster.home))
    with dg.instance_for_test() as instance:
        with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
            result = make_async_jobs_sensor(async_job)(ctx)
        (request,) = [q for q in result.run_requests if q.partition_key == job_id]
        for add in result.dynamic_partitions_requests:
            instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
        run = dg.materialize([async_job_results], partition_key=job_id, resources=resources, instance=instance,
                             tags=request.tags)
        assert run.success

    status = call(cluster, f"/v1/jobs/{job_id}", method="GET").json()
    assert (status["status"], status["n_done"], status["progress"]) == ("succeeded", 5, 1.0)
    page = call(cluster, f"/v1/jobs/{job_id}/results?limit=3", method="GET").json()
    assert [x["idx"] for x in page["results"]] == [0, 1, 2] and page["next_offset"] == 3
    assert all(x["output"]["label"] in LABELS for x in page["results"])
    rest = call(cluster, f"/v1/jobs/{job_id}/results?offset=3", method="GET").json()
    assert [x["idx"] for x in rest["results"]] == [3, 4] and rest["next_offset"] is None


def test_a_bad_canary_is_caught_by_dagster_and_the_running_gateway_returns_to_stable(cluster):
    """Live traffic through the gateway -> canary_evaluation fails its blocking check -> the guard
    sensor rolls the canary back -> the running gateway sends every key to stable again."""
    from concurrent.futures import ThreadPoolExecutor
    from datetime import UTC, datetime

    import dagster as dg

    from assets import canary_evaluation, canary_guardrails
    from assets.resources import build_resources
    from orchestration.sensors import make_canary_guard_sensor

    lake = cluster.registry._lake
    lake.append("documents", [
        {"doc_id": f"eval{i}", "day": datetime.now(UTC).date(), "text": f"evaluation text number {i}",
         "label": None, "source": "test", "attributes": None, "ingested_at": datetime.now(UTC)}
        for i in range(40)])
    # v2 is the tiny embedder with another salt: its vectors disagree with v1's.
    assert call(cluster, "/v1/admin/models/embedder/canary",
                {"version": "2", "weight": 0.5, "force": True, "reason": "the guard must catch it"}).status_code == 200
    keys = [f"live-{i}" for i in range(80)]
    assert _eventually(lambda: {v for v, _ in _versions_by_key(cluster, keys[:8]).values()} == {"1", "2"})
    with ThreadPoolExecutor(16) as pool:
        arms = list(pool.map(lambda k: _versions_by_key(cluster, [k])[k][1], keys))
    assert arms.count("canary") >= 20 and arms.count("stable") >= 20
    time.sleep(1.5)  # let the gateway's prediction log flush

    resources = build_resources(home=str(cluster.home))
    with dg.instance_for_test() as instance:
        run = dg.materialize([canary_evaluation, canary_guardrails], resources=resources, instance=instance,
                             run_config={"ops": {"canary_evaluation": {"config": {"eval_size": 40}}}},
                             raise_on_error=False)
        assert run.success  # a guard decision is a check outcome, not a failed run
        (check,) = run.get_asset_check_evaluations()
        assert not check.passed and "cosine agreement" in " ".join(check.metadata["embedder@2"].value["reasons"])
        with dg.build_sensor_context(instance=instance, resources=resources) as ctx:
            make_canary_guard_sensor()(ctx)

    assert cluster.registry.state("embedder").canary is None
    assert _eventually(lambda: {a for _, a in _versions_by_key(cluster, keys[:16]).values()} == {"stable"})


def test_the_admin_canary_route_refuses_an_unevaluated_version_with_409_unless_forced_with_a_reason(cluster):
    from assets.offline_replay import ReplayFilters, evaluate_candidate
    from models.workflows import load_workflows
    from orchestration.cli_replay import _resolver
    from tests.integration.requests_support import request_rows

    path = "/v1/admin/models/embedder/canary"
    before = len(cluster.registry.history("embedder"))
    r = call(cluster, path, {"version": "2", "weight": 0.1})
    assert r.status_code == 409 and r.json()["type"] == "urn:tandem:problem:unevaluated-version"
    assert "`tandem replay embedder --candidate 2`" in r.json()["detail"] and '"force": true' in r.json()["detail"]
    assert call(cluster, path, {"version": "2", "weight": 0.1, "force": True}).status_code == 422  # no reason

    # A real replay of logged traffic: v2 (another salt) disagrees with v1, so the gate still refuses, naming it.
    platform = Platform.open(TandemSettings(home=cluster.home))
    resolve = _resolver(platform)
    platform.lake.append("requests", request_rows(resolve, model="embedder", task="embed", version="1",
                                                  texts=[f"gate text {i}" for i in range(30)], tenant="gate-test"))
    platform.lake.append("replay_evaluations", [evaluate_candidate(
        platform.lake, platform.registry, resolve, load_workflows(), "embedder", "2", ReplayFilters(tenant="gate-test"))])
    r = call(cluster, path, {"version": "2", "weight": 0.1})
    assert r.status_code == 409 and "replay: failed" in r.json()["detail"]
    assert len(cluster.registry.history("embedder")) == before

    r = call(cluster, path, {"version": "2", "weight": 0.1, "force": True, "reason": "INC-9: needs live evidence"})
    assert r.status_code == 200, r.text
    event = cluster.registry.history("embedder", limit=1)[0]
    assert event.reason.startswith("forced past the offline gate (replay: failed") and event.reason.endswith("INC-9: needs live evidence")
    assert call(cluster, path, method="DELETE").status_code == 200


def test_the_prediction_routes_answer_every_outcome_as_documented(cluster):
    key = cluster.keys["acme"]
    auth = {"Authorization": f"Bearer {key}"}
    cases = [
        ("/v1/models/embedder/predict", {"instances": [{"text": "same everywhere"}]}, auth, 200),
        ("/v1/models/embedder/predict", {"instances": [{"text": "pinned"}], "version": "2"}, auth, 200),
        ("/v1/embeddings", {"model": "embedder", "input": ["a", "b"]}, auth, 200),
        ("/v1/rerank", {"model": "reranker", "query": "q", "documents": ["x", "y"], "top_n": 1}, auth, 200),
        ("/v1/workflows/enrich/run", {"input": {"text": "goal!"}}, auth, 200),
        ("/v1/workflows/classify/run", {"input": {"text": "x"}}, {}, 401),
        ("/v1/workflows/enrich/run", {"input": {"text": "x"}},
         {"Authorization": f"Bearer {cluster.keys['narrow']}"}, 403),  # workflow not allowed
        ("/v1/models/embedder/predict", {"instances": [{"text": "x"}]},
         {"X-API-Key": cluster.keys["jobsonly"]}, 403),  # scope
        ("/v1/models/nope/predict", {"instances": [{"text": "x"}]}, auth, 404),
        ("/v1/workflows/nope/run", {"input": {"text": "x"}}, auth, 404),
        ("/v1/models/embedder/predict", {"instances": [{"txt": "x"}]}, auth, 422),  # instance field
        ("/v1/models/embedder/predict", {"instances": []}, auth, 422),  # body field
        ("/v1/models/embedder/predict", {"instances": [{"text": "x"}], "extra": 1}, auth, 422),
        ("/v1/embeddings", {"model": "classifier", "input": "x"}, auth, 422),  # not an embedder
        ("/v1/workflows/classify/run", {"input": {"text": "x"}}, {**auth, "X-Deadline-Ms": "soon"}, 422),
        ("/v1/models/embedder/predict", {"instances": [{"text": "x"}] * 300}, auth, 413),  # instances
    ]
    for path, body, headers, status in cases:
        r = httpx.post(cluster.url + path, json=body, headers=headers, timeout=30)
        assert r.status_code == status, (path, body, r.text)
        assert r.headers.get("x-request-id"), path
        if status == 200:
            assert r.headers["content-type"] == "application/json", path
        else:
            assert r.headers["content-type"] == "application/problem+json", (path, r.text)
            assert r.json()["status"] == status
    json_auth = {**auth, "Content-Type": "application/json"}
    for bad, headers, status in ((b"{not json", json_auth, 422), (b"", auth, 422), (b"{NaN}", json_auth, 422),
                                 (b'{"instances": []}', auth, 415),
                                 (b'{"instances": []}', {**auth, "Content-Type": "text/plain"}, 415)):
        r = httpx.post(cluster.url + "/v1/models/embedder/predict", content=bad, headers=headers)
        assert r.status_code == status, r.text
        assert r.headers["content-type"] == "application/problem+json"
        assert r.json()["detail"]
