"""Async jobs submitted while a model server is down (kill -9) all complete once it is back:
none lost, none run twice, every item's result exactly once in `job_results`.

Real processes for the online side (tiny-model LitServe servers and the gateway; jobs go in over
HTTP, `POST /v1/jobs`). The Dagster side is the production sensor and asset driven the way
tests/integration/test_dagster_jobs.py drives them: each sensor tick's dynamic partitions are added
and its run requests materialized on a Dagster test instance, as the daemon would; the sensor ticks
during the outage, after the restart and after the runs, so a job requested twice would show.
The batch path calls the model ops in-process, so the outage must not stall it either.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import httpx
import pytest

from assets import async_job_results
from online.gateway.runtime import DEPLOYMENTS_FILE
from online.gateway.tenants import TenantStore
from orchestration.definitions import async_job
from orchestration.sensors import make_async_jobs_sensor
from tests.integration.conftest import Cluster, base_env, free_port, gateway, model_server
from tests.integration.dagster_support import make_home
from tests.reliability.test_supervision import _alive, _children

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

JOBS, ITEMS = 6, 5


@pytest.fixture
def cluster(tmp_path: Path):
    home = make_home(tmp_path)  # embedder, classifier, reranker v1 (tiny models), stable
    root = home.settings.home
    _, key = TenantStore(home.settings.tenants_file).create("acme", scopes={"predict", "jobs"}, rate_per_s=1000,
                                                           burst=1000)
    env = base_env(root, TANDEM_GATEWAY_BREAKER_RESET_S="1", TANDEM_GATEWAY_REGISTRY_POLL_S="0.5")
    c = Cluster(root, env)
    c.ports = {name: free_port() for name in ("embedder", "classifier")}
    try:
        for name, port in c.ports.items():
            c.add(model_server(env, root, name, "1", port=port)).start(tmp_path)
        for name in c.ports:
            c.procs[f"server-{name}"].wait_healthy()
        (root / DEPLOYMENTS_FILE).write_text(json.dumps({n: f"http://127.0.0.1:{p}" for n, p in c.ports.items()}))
        gw = c.add(gateway(env, root)).start(tmp_path)
        gw.wait_healthy()
        c.url = gw.health.removesuffix("/healthz")
        c.home = home
        c.log_dir = tmp_path
        c.http = httpx.Client(base_url=c.url, timeout=30, headers={"Authorization": f"Bearer {key}"})
        yield c
    finally:
        c.stop_all()


def _kill_9(c: Cluster, name: str) -> None:
    """SIGKILL the model server by PID, then its inference workers (by PID: all started by this test)."""
    proc = c.procs.pop(f"server-{name}").proc
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)
    for pid in _alive(workers):
        os.kill(pid, signal.SIGKILL)


def _tick(sensor, instance, home, cursor):
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=home.resources) as ctx:
        result = sensor(ctx)
    for add in result.dynamic_partitions_requests:  # what the daemon does with a tick's result
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    return result


def test_jobs_submitted_while_a_model_server_is_down_complete_once_after_it_is_back(cluster):
    c, home = cluster, cluster.home

    def classify(text: str) -> httpx.Response:  # the model route: no fallback, so it shows the outage
        return c.http.post("/v1/models/classifier/predict", json={"instances": [{"text": text}]})

    assert classify("rates rose again").status_code == 200
    _kill_9(c, "classifier")
    outage = classify("during the outage")
    assert outage.status_code in (503, 504), outage.text  # the outage is real for the online path

    texts = {j: [f"job {j} item {i}: the central bank held rates" for i in range(ITEMS)] for j in range(JOBS)}
    jobs = {}
    for j, items in texts.items():
        r = c.http.post("/v1/jobs", json={"workflow": "enrich", "inputs": [{"text": t} for t in items]},
                        headers={"Idempotency-Key": f"outage-job-{j}"})
        assert r.status_code == 202, r.text
        assert r.json()["status"] == "queued"
        jobs[r.json()["job_id"]] = j
    # A client retrying a submission (same Idempotency-Key) gets the same job, not a second one.
    again = c.http.post("/v1/jobs", json={"workflow": "enrich", "inputs": [{"text": t} for t in texts[0]]},
                        headers={"Idempotency-Key": "outage-job-0"})
    assert again.status_code in (200, 202) and again.json()["job_id"] in jobs and len(jobs) == JOBS, again.text

    sensor = make_async_jobs_sensor(async_job)
    runs = []
    with dg.instance_for_test() as instance:
        during = _tick(sensor, instance, home, None)
        assert {r.partition_key for r in during.run_requests} == set(jobs)
        assert not _tick(sensor, instance, home, during.cursor).run_requests  # queued jobs are asked for once

        # The server comes back (same port) and the online path heals.
        c.add(model_server(c.env, home.settings.home, "classifier", "1", port=c.ports["classifier"])
              ).start(c.log_dir).wait_healthy()
        deadline = time.monotonic() + 30
        while classify("after the restart").status_code != 200:
            assert time.monotonic() < deadline, "the gateway never used the restarted server"
            time.sleep(0.3)

        after = _tick(sensor, instance, home, during.cursor)
        assert not after.run_requests, [r.partition_key for r in after.run_requests]
        for request in during.run_requests:
            runs.append(dg.materialize([async_job_results], partition_key=request.partition_key,
                                       resources=home.resources, instance=instance, tags=request.tags,
                                       raise_on_error=False))
        assert all(run.success for run in runs)
        final = _tick(sensor, instance, home, after.cursor)
        assert not final.run_requests and final.skip_reason is not None
        per_job = Counter(r.tags["tandem/job_id"] for r in instance.get_runs())
        assert per_job == Counter(set(jobs)), per_job  # one run per job

    for job_id, j in jobs.items():
        status = c.http.get(f"/v1/jobs/{job_id}").json()
        assert (status["status"], status["n_done"], status["attempts"], status["error"]) == ("succeeded", ITEMS, 1, None)
        page = c.http.get(f"/v1/jobs/{job_id}/results", params={"limit": 1000}).json()
        assert [r["idx"] for r in page["results"]] == list(range(ITEMS))
        assert all(r["status"] == "ok" for r in page["results"])
    counts = home.lake.sql("SELECT job_id, idx, count(*) AS n FROM job_results GROUP BY job_id, idx").to_pylist()
    assert len(counts) == JOBS * ITEMS and {r["job_id"] for r in counts} == set(jobs)
    assert all(r["n"] == 1 for r in counts), [r for r in counts if r["n"] != 1]
    print(f"\n{JOBS} jobs × {ITEMS} items submitted during the outage (sync call: {outage.status_code}); "
          f"{len(runs)} runs, {len(counts)} result rows, each once")
