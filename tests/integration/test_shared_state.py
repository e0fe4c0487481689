"""Two real gateway processes on one real Redis (`TANDEM_STATE_URL`): limits, quotas and idempotency
hold across replicas and restarts; with Redis gone, limits fail open and idempotent requests get 503.

One LitServe process serves a tiny classifier (a 300 ms sleep per batch, so two requests with one
Idempotency-Key surely overlap). Everything is started on free ports and stopped by PID.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.runtime import DEPLOYMENTS_FILE
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env, free_port, gateway, model_server
from tests.redis_support import start_redis

pytestmark = pytest.mark.integration
TENANTS = {
    "steady": dict(rate_per_s=10, burst=10),
    "idem": dict(rate_per_s=1000, burst=1000),
    "quota": dict(rate_per_s=1000, burst=1000, daily_quota=3),
    "outage": dict(rate_per_s=1000, burst=1000, daily_quota=1),
    "greedy": dict(rate_per_s=1000, burst=1000, max_in_flight=2),
    "polite": dict(rate_per_s=1000, burst=1000),
}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    home = tmp_path_factory.mktemp("shared-state")
    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    reg.register("classifier", "classify",
                 write_tiny_artifact(home / "src" / "c1", "tiny-classify", labels=["a", "b"], delay_ms=300),
                 version="1")
    reg.promote("classifier", "1", actor="test")
    store = TenantStore(settings.tenants_file)
    keys = {tid: store.create(tid, **kw)[1] for tid, kw in TENANTS.items()}
    redis = start_redis(home / "redis")
    env = base_env(home, TANDEM_STATE_URL=redis.url, TANDEM_GATEWAY_REGISTRY_POLL_S="0.5",
                   TANDEM_GATEWAY_LOG_FLUSH_S="0.3", TANDEM_GATEWAY_STATE_TIMEOUT_S="0.3")
    c = Cluster(home, env)
    try:
        server = c.add(model_server(env, home, "classifier", "1")).start(home)
        server.wait_healthy()
        (home / DEPLOYMENTS_FILE).write_text(json.dumps({"classifier": server.health.removesuffix("/health")}))
        ports = [free_port(), free_port()]
        gws = [c.add(gateway(env, home, port, name=f"gateway-{i}")).start(home) for i, port in enumerate(ports)]
        for gw in gws:
            gw.wait_healthy()
        c.urls = [gw.health.removesuffix("/healthz") for gw in gws]
        c.keys, c.redis, c.registry, c.ports = keys, redis, reg, ports
        yield c
    finally:
        c.stop_all()
        redis.stop()


def run(url, key, text, headers=None, timeout=30.0):
    hdrs = {"Authorization": f"Bearer {key}", **(headers or {})}
    return httpx.post(f"{url}/v1/workflows/classify/run", json={"input": {"text": text}}, headers=hdrs,
                      timeout=timeout)


def test_one_rate_limit_across_two_replicas(pair):
    """10/s with a burst of 10 through both gateways for 10 s: ~110 accepted in all, not ~220."""
    counts: dict[int, int] = {}
    unexpected: list[str] = []
    lock = threading.Lock()
    stop_at = time.monotonic() + 10.0

    def hammer(url: str) -> None:
        with httpx.Client(headers={"Authorization": f"Bearer {pair.keys['steady']}"}, timeout=30) as client:
            i = 0
            while time.monotonic() < stop_at:
                i += 1
                r = client.post(f"{url}/v1/models/classifier/predict", json={"instances": [{"text": f"rate {i}"}]})
                with lock:
                    counts[r.status_code] = counts.get(r.status_code, 0) + 1
                    if r.status_code not in (200, 429):
                        unexpected.append(f"{r.status_code} {r.text[:300]}")
                if r.status_code == 429:
                    assert int(r.headers["retry-after"]) >= 1
                    time.sleep(0.1)  # a polite client; still ~60 requests/s offered in all

    # Each accepted request takes ~300 ms at the model; 6 clients per replica offer far more than 10/s
    # without saturating a 2-core machine (which would time model calls out, not test the limit).
    # The model route, not the `classify` workflow: its step timeout (1 s) is what a request queued
    # behind up to four 300 ms batches (two replicas, two merged calls in flight each) can pass on a
    # loaded box (accepted p50 687 ms, p90 904 ms, one 503 in a CI run); the limit is the same.
    with ThreadPoolExecutor(12) as pool:
        list(pool.map(hammer, pair.urls * 6))
    print(f"two replicas, 10 s at 10/s burst 10: {counts}")
    assert set(counts) <= {200, 429}, (counts, unexpected[:5])
    assert 80 <= counts.get(200, 0) <= 140, counts
    assert counts.get(429, 0) > 0


def test_one_idempotency_key_sent_to_both_replicas_at_once_runs_once(pair):
    key = {"Idempotency-Key": f"same-{time.time()}"}
    text = f"idempotent {time.time()}"
    with ThreadPoolExecutor(4) as pool:
        responses = list(pool.map(lambda url: run(url, pair.keys["idem"], text, key), pair.urls * 2))
    assert [r.status_code for r in responses] == [200] * 4, [r.text for r in responses]
    assert len({r.content for r in responses}) == 1  # one answer, replayed
    assert sum(r.headers.get("idempotent-replayed") == "true" for r in responses) == 3
    assert len({r.json()["metadata"]["request_id"] for r in responses}) == 1  # the runner's request id

    def logged() -> int:
        rows = pair.registry._lake.sql("SELECT count(*) AS n FROM predictions WHERE tenant = 'idem'", []).to_pylist()
        return rows[0]["n"]

    deadline = time.monotonic() + 10
    while logged() < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # let both gateways flush whatever else they might have logged
    assert logged() == 1  # the model ran once for the four requests


def test_the_daily_quota_holds_across_replicas_and_a_gateway_restart(pair):
    first, second = pair.urls
    assert run(first, pair.keys["quota"], "q1").status_code == 200
    assert run(second, pair.keys["quota"], "q2").status_code == 200
    gw = pair.procs["gateway-0"]
    gw.stop()
    restarted = pair.add(gateway(pair.env, pair.home, pair.ports[0], name="gateway-0")).start(pair.home)
    restarted.wait_healthy()
    assert run(first, pair.keys["quota"], "q3").status_code == 200
    for url in (first, second):
        r = run(url, pair.keys["quota"], "q4")
        assert r.status_code == 429, r.text
        assert r.json()["type"].endswith("quota-exceeded") and int(r.headers["retry-after"]) >= 1


def test_a_tenant_over_its_in_flight_cap_is_refused_while_another_is_served(pair):
    url = pair.urls[0]
    with ThreadPoolExecutor(7) as pool:
        greedy = [pool.submit(run, url, pair.keys["greedy"], f"greedy {i} {time.time()}") for i in range(6)]
        time.sleep(0.05)
        polite = pool.submit(run, url, pair.keys["polite"], f"polite {time.time()}")
        statuses = sorted(f.result().status_code for f in greedy)
        assert polite.result().status_code == 200
    assert statuses == [200, 200, 429, 429, 429, 429], statuses
    refused = next(f.result() for f in greedy if f.result().status_code == 429)
    assert refused.headers["retry-after"] == "1" and "in flight" in refused.json()["detail"]
    assert 'tandem_tenant_in_flight_rejected_total{tenant="greedy"} 4.0' in httpx.get(url + "/metrics").text


def test_with_redis_stopped_limits_fail_open_and_idempotent_requests_get_503(pair):
    url = pair.urls[1]
    assert run(url, pair.keys["outage"], "before").status_code == 200  # the quota of 1 is used up
    assert run(url, pair.keys["outage"], "before 2").status_code == 429
    pair.redis.stop()
    statuses = []
    for i in range(6):
        started = time.monotonic()
        plain = run(url, pair.keys["outage"], f"open {i}", timeout=10)
        idem = run(url, pair.keys["outage"], f"closed {i}", {"Idempotency-Key": f"down-{i}"}, timeout=10)
        assert time.monotonic() - started < 5, "a request hung on the missing Redis"
        statuses.append((plain.status_code, idem.status_code))
        if idem.status_code == 503:
            assert int(idem.headers["retry-after"]) >= 1 and "Redis" in idem.json()["detail"]
    # Fail open: over-quota requests go through; fail closed: no idempotent request runs unrecorded.
    assert statuses == [(200, 503)] * 6, statuses
    metrics = httpx.get(url + "/metrics").text
    assert "tandem_state_fail_open_total 12.0" in metrics  # both kinds were admitted unchecked
    assert "tandem_state_fail_closed_total 6.0" in metrics
    assert "tandem_state_up 0.0" in metrics
