"""A noisy tenant at 10x its rate limit next to a quiet one, through one gateway on one model.

Real processes (a tiny-model LitServe server and the gateway); client threads here. The noisy tenant
gets 429 with Retry-After for what it sends over its limit, the quiet one never does, and the quiet
one's p99 stays within a loose bound of its p99 alone (the tight figure, ≤ 1.2x, is measured by
`python -m bench isolation`; a shared 2-core test box only allows a coarse check here).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Self

import httpx
import pytest

from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.runtime import DEPLOYMENTS_FILE
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env, gateway, model_server

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

NOISY_RATE, NOISY_BURST = 5.0, 5
NOISY_THREADS, NOISY_INTERVAL_S = 2, 0.04  # 2 / 40 ms = 50 requests/s offered: 10x its rate
QUIET_THREADS, QUIET_PAUSE_S = 2, 0.02
PHASE_S = 4.0


@pytest.fixture
def cluster(tmp_path: Path):
    home = tmp_path / "home"
    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    reg.register("embedder", "embed", write_tiny_artifact(home / "src" / "e1", "tiny-embed", dim=8, delay_ms=2),
                 version="1")
    reg.promote("embedder", "1", actor="test")
    store = TenantStore(settings.tenants_file)
    _, quiet = store.create("quiet", scopes={"predict"}, rate_per_s=1000, burst=1000)
    _, noisy = store.create("noisy", scopes={"predict"}, rate_per_s=NOISY_RATE, burst=NOISY_BURST)
    env = base_env(home)
    c = Cluster(home, env)
    try:
        server = c.add(model_server(env, home, "embedder", "1")).start(tmp_path)
        server.wait_healthy()
        (home / DEPLOYMENTS_FILE).write_text(json.dumps({"embedder": server.health.removesuffix("/health")}))
        gw = c.add(gateway(env, home)).start(tmp_path)
        gw.wait_healthy()
        c.url = gw.health.removesuffix("/healthz")
        c.keys = {"quiet": quiet, "noisy": noisy}
        yield c
    finally:
        c.stop_all()


class _Load:
    """Client threads of one tenant posting distinct texts until stopped: (status, latency s, headers)."""

    def __init__(self, c: Cluster, tenant: str, threads: int, *, pause_s: float = 0.0, interval_s: float = 0.0):
        self.c, self.tenant, self.pause_s, self.interval_s = c, tenant, pause_s, interval_s
        self.results: list[tuple[int, float, httpx.Headers, bytes]] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(threads)]

    def __enter__(self) -> Self:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=30)

    def _loop(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.c.keys[self.tenant]}"}
        with httpx.Client(base_url=self.c.url, timeout=30, headers=headers) as client:
            i, next_at = 0, time.monotonic()
            while not self._stop.is_set():
                if self.interval_s:  # paced: one request per interval, whatever the answer's latency
                    next_at += self.interval_s
                    time.sleep(max(0.0, next_at - time.monotonic()))
                body = {"instances": [{"text": f"{self.tenant} thread {n} sends text {i} about the weather"}]}
                started = time.perf_counter()
                r = client.post("/v1/models/embedder/predict", json=body)
                self.results.append((r.status_code, time.perf_counter() - started, r.headers, r.content))
                i += 1
                if self.pause_s:
                    time.sleep(self.pause_s)


def _p99(latencies: list[float]) -> float:
    ordered = sorted(latencies)
    return ordered[int(0.99 * (len(ordered) - 1))]


def test_a_noisy_tenant_gets_429_with_retry_after_and_the_quiet_tenant_keeps_its_latency(cluster):
    quiet_alone: list[float] = []
    quiet_noisy: list[float] = []
    noisy_results = []
    quiet_statuses: list[int] = []
    noisy_seconds = 0.0
    # ABBA: alone, with noise, with noise, alone, so a drift in the machine's load hits both sides.
    for noise in (False, True, True, False):
        noisy_load = _Load(cluster, "noisy", NOISY_THREADS, interval_s=NOISY_INTERVAL_S) if noise else None
        if noisy_load:
            noisy_load.__enter__()
            time.sleep(1.0)  # its burst is spent before the quiet tenant is measured
        started = time.monotonic()
        try:
            with _Load(cluster, "quiet", QUIET_THREADS, pause_s=QUIET_PAUSE_S) as quiet:
                time.sleep(PHASE_S)
        finally:
            if noisy_load:
                noisy_load.__exit__()
                noisy_seconds += time.monotonic() - started + 1.0
                noisy_results += noisy_load.results
        quiet_statuses += [s for s, *_ in quiet.results]
        (quiet_noisy if noise else quiet_alone).extend(lat for s, lat, *_ in quiet.results if s == 200)

    # The quiet tenant: never refused.
    assert set(quiet_statuses) == {200}, f"quiet tenant statuses: {sorted(set(quiet_statuses))}"
    # The noisy tenant: 10x its rate offered; what it gets beyond its limit is 429 with Retry-After.
    statuses = [s for s, *_ in noisy_results]
    offered = len(statuses) / noisy_seconds
    admitted = statuses.count(200)
    assert offered >= 5 * NOISY_RATE, f"the noisy tenant offered only {offered:.1f} requests/s"
    assert set(statuses) <= {200, 429}, f"noisy tenant statuses: {sorted(set(statuses))}"
    refused = [(h, body) for s, _, h, body in noisy_results if s == 429]
    assert len(refused) > admitted, (admitted, len(refused))
    for headers, body in refused:
        assert headers["content-type"].startswith("application/problem+json")
        assert int(headers["retry-after"]) >= 1, headers
        assert json.loads(body)["status"] == 429
    # The token bucket lets through its burst per run plus its rate (a little slack for timing).
    assert admitted <= NOISY_RATE * noisy_seconds + 2 * NOISY_BURST + 5, (admitted, noisy_seconds)
    # The quiet tenant's tail: a loose bound on a shared box (the bench measures the tight one).
    alone, noisy = _p99(quiet_alone), _p99(quiet_noisy)
    print(f"\nquiet p99 alone {alone * 1000:.1f} ms ({len(quiet_alone)} requests), with noise "
          f"{noisy * 1000:.1f} ms ({len(quiet_noisy)}), ratio {noisy / alone:.2f}; noisy offered "
          f"{offered:.1f}/s ({offered / NOISY_RATE:.1f}x its rate), {admitted} × 200, {len(refused)} × 429")
    assert noisy < 3 * alone, f"quiet p99 {alone * 1000:.1f} ms alone, {noisy * 1000:.1f} ms next to the noisy tenant"
