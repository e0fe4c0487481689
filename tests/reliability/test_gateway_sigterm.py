"""SIGTERM the gateway under load: every request it answered 200 has its rows in `predictions` and
`requests`.

Real processes: two tiny-model LitServe servers and the gateway (`python -m online.gateway`) on free
ports, a few client threads posting distinct texts with their own `X-Request-Id`. The prediction log
is buffered (flushed every 5 s, the default), so rows of the last answers are still in memory when the
signal lands: shutdown must write them, through the gateway's writer process, which gets the signal
too (it goes to the whole process group, as a supervisor's or a terminal's does) and must outlive it.
A request refused or cut at shutdown is fine; a 200 whose rows are missing is a lost record.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest

from lakehouse import Lake
from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]

CLIENTS = 4
LOAD_BEFORE_SIGTERM_S = 2.5  # past one flush interval: some rows are written, the latest are buffered
STEPS = {"enrich": 2, "classify": 1}  # model calls (so `predictions` rows) per request of each workflow


@pytest.fixture
def cluster(tmp_path: Path):
    home = tmp_path / "home"
    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    src = home / "src"
    # A few ms per batch, so requests are in flight in the gateway when the signal lands.
    reg.register("embedder", "embed", write_tiny_artifact(src / "e1", "tiny-embed", dim=8, delay_ms=5), version="1")
    reg.register("classifier", "classify",
                 write_tiny_artifact(src / "c1", "tiny-classify", labels=["a", "b"], delay_ms=5), version="1")
    for name in ("embedder", "classifier"):
        reg.promote(name, "1", actor="test")
    _, key = TenantStore(settings.tenants_file).create("load", scopes={"predict"}, rate_per_s=1e6, burst=1_000_000)
    env = base_env(home)  # the gateway's defaults: the log flushes every 5 s and on shutdown
    c = Cluster(home, env)
    try:
        c.url = c.start_servers_and_gateway({"embedder": "1", "classifier": "1"}, tmp_path)
        c.key = key
        c.settings = settings
        yield c
    finally:
        c.stop_all()


def _client(c: Cluster, n: int, outcomes: dict[str, object], stop: threading.Event) -> None:
    """Post until the gateway is gone: `outcomes[request id]` = the status code or the exception's name."""
    workflow = "enrich" if n % 2 == 0 else "classify"
    refused = 0
    with httpx.Client(base_url=c.url, timeout=30, headers={"Authorization": f"Bearer {c.key}"}) as client:
        i = 0
        while not stop.is_set() and refused < 5:
            rid = f"sigterm-{n}-{i}"
            body = {"input": {"text": f"client {n} sends its request number {i} about the harbour"}}
            try:
                r = client.post(f"/v1/workflows/{workflow}/run", json=body, headers={"X-Request-Id": rid})
                outcomes[rid] = (workflow, r.status_code)
                if r.status_code == 200 and r.headers.get_list("x-request-id") != [rid]:
                    outcomes[rid] = (workflow, "wrong X-Request-Id")
                refused = 0
            except httpx.HTTPError as exc:
                outcomes[rid] = (workflow, type(exc).__name__)
                refused += isinstance(exc, httpx.ConnectError)
                time.sleep(0.05)
            i += 1


def test_sigterm_under_load_loses_no_prediction_row_of_an_answered_request(cluster):
    outcomes: dict[str, tuple[str, object]] = {}
    stop = threading.Event()
    threads = [threading.Thread(target=_client, args=(cluster, n, outcomes, stop), daemon=True)
               for n in range(CLIENTS)]
    for t in threads:
        t.start()
    time.sleep(LOAD_BEFORE_SIGTERM_S)
    gw = cluster.procs["gateway"].proc
    writers = subprocess.run(["pgrep", "-P", str(gw.pid), "-f", "lakehouse.append_process"],
                             capture_output=True, text=True).stdout.split()
    assert len(writers) == 1, f"the gateway runs one writer process, found {writers}"
    answered_before = sum(1 for _, s in list(outcomes.values()) if s == 200)
    os.killpg(gw.pid, signal.SIGTERM)
    try:
        code = gw.wait(timeout=30)  # graceful: in-flight requests finish, then the log is flushed
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=35)
    log_tail = cluster.procs["gateway"].log.read_text()[-3000:]
    assert code == 0, f"the gateway exited with {code} on SIGTERM:\n{log_tail}"
    assert "dropped" not in log_tail, log_tail

    statuses = Counter(s for _, s in outcomes.values())
    ok = {rid: wf for rid, (wf, s) in outcomes.items() if s == 200}
    assert answered_before >= 20, f"too little load before the signal: {statuses}"
    assert set(statuses) <= {200, 503, "ConnectError", "RemoteProtocolError", "ReadError"}, statuses

    rows = Lake(cluster.settings.lake_root).sql(
        "SELECT request_id, count(*) AS n, count(DISTINCT step) AS steps, min(status) AS status "
        "FROM predictions WHERE tenant = 'load' GROUP BY request_id").to_pylist()
    logged = {r["request_id"]: r for r in rows}
    missing = sorted(rid for rid in ok if rid not in logged)
    assert not missing, f"{len(missing)} of {len(ok)} answered requests have no prediction row: {missing[:10]}"
    short = {rid: logged[rid]["n"] for rid, wf in ok.items() if logged[rid]["n"] != STEPS[wf]}
    assert not short, f"answered requests with the wrong number of rows (want one per step): {short}"
    assert all(logged[rid]["status"] == "ok" for rid in ok)
    recorded = {r["request_id"] for r in Lake(cluster.settings.lake_root).sql(
        "SELECT request_id FROM requests WHERE tenant = 'load' AND http_status = 200").to_pylist()}
    unrecorded = sorted(set(ok) - recorded)
    assert not unrecorded, f"{len(unrecorded)} of {len(ok)} answered requests have no record: {unrecorded[:10]}"
    assert not Path(f"/proc/{writers[0]}").exists(), "the writer process outlived the gateway"
    print(f"\nstatuses {dict(statuses)}; {len(ok)} answered 200 ({answered_before} before SIGTERM), "
          f"{sum(STEPS[wf] for wf in ok.values())} rows expected, all found; {len(logged)} request ids logged")
