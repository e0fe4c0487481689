"""A real model server process (`python -m online.servers --spec ...`) serving two tiny versions."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from models.artifacts import ArtifactStore
from models.testing import hash_vector, write_tiny_artifact
from online.servers import DeploymentSpec, VersionSpec

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SALTS = {"1": "one", "2": "two"}
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- helpers --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _process_table() -> dict[int, int]:
    """{pid: ppid} of every live (non-zombie) process, read from /proc."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                out[int(entry)] = int(fields[1])
    return out


def _descendants(pid: int) -> set[int]:
    table = _process_table()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in table.items() if parent in frontier} - found
        found |= frontier
    return found


def _alive(pids: set[int]) -> set[int]:
    table = _process_table()
    return {p for p in pids if p in table}


class _Server:
    """A model server process started by this test; stopped by its own PID only."""

    def __init__(self, spec: DeploymentSpec, tmp: Path, name: str):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        spec_file = tmp / f"{name}.json"
        spec_file.write_text(spec.model_dump_json())
        self.log = tmp / f"{name}.log"
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "online.servers", "--spec", str(spec_file), "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=self.log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.seen_pids: set[int] = set()

    def note_children(self) -> None:
        self.seen_pids |= _descendants(self.proc.pid)

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.note_children()
            assert self.proc.poll() is None, f"server exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/health", timeout=1).status_code == 200:
                    self.note_children()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"not healthy after {timeout_s} s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> None:
        """SIGTERM, as an orchestrator would; SIGKILL only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                pass
        self.kill()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in _alive(self.seen_pids):
            os.kill(pid, signal.SIGKILL)


def _tiny_version(store: ArtifactStore, tmp: Path, version: str, **knobs) -> VersionSpec:
    ref = store.put(
        write_tiny_artifact(tmp / f"src-{version}-{knobs.get('salt', '')}", "tiny-embed", **knobs)
    )
    return VersionSpec(version=version, artifact_uri=ref.uri, sha256=ref.sha256)


def _spec(store: ArtifactStore, tmp: Path, **overrides) -> DeploymentSpec:
    # delay_ms makes each model call take a while, so concurrent requests pile up into batches.
    versions = [_tiny_version(store, tmp, v, salt=salt, delay_ms=15) for v, salt in SALTS.items()]
    overrides.setdefault("batch_timeout", 0.01)
    return DeploymentSpec(model="emb", task="embed", versions=versions, artifacts_root=store.root, **overrides)


def _metric(text: str, name: str) -> list:
    return [s for fam in text_string_to_metric_families(text) for s in fam.samples if s.name == name]


# --- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model-server")


@pytest.fixture(scope="module")
def store(tmp: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp / "artifacts"))


@pytest.fixture(scope="module")
def server(store: ArtifactStore, tmp: Path) -> Iterator[_Server]:
    srv = _Server(_spec(store, tmp), tmp, "two-versions")
    try:
        srv.wait_healthy()
        yield srv
    finally:
        srv.stop()


# --- serving --------------------------------------------------------------------------------


def test_info_describes_the_deployment(server: _Server) -> None:
    info = httpx.get(f"{server.url}/info").json()["model"]
    assert info["name"] == "emb" and info["task"] == "embed" and info["default_version"] == "1"
    assert [v["version"] for v in info["versions"]] == ["1", "2"]
    ready = f"model server emb ready on {server.url} (versions 1, 2)"
    deadline = time.monotonic() + 5  # the line is logged once /health answers 200
    while ready not in server.log.read_text() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert ready in server.log.read_text()


def test_concurrent_requests_get_their_own_versions_outputs(server: _Server) -> None:
    async def run() -> list[tuple[str | None, str, httpx.Response]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:

            async def one(i: int):
                version = [None, "1", "2"][i % 3]
                text = f"text number {i}"
                body = {"inputs": [{"text": text}, {"text": text + "!"}]}
                if version:
                    body["version"] = version
                return version, text, await client.post("/predict", json=body)

            return await asyncio.gather(*(one(i) for i in range(96)))

    for version, text, resp in asyncio.run(run()):
        assert resp.status_code == 200, resp.text
        served = version or "1"
        salt = SALTS[served]
        assert resp.json() == {
            "model": "emb",
            "version": served,
            "outputs": [
                {"embedding": hash_vector(salt + text, 8)},
                {"embedding": hash_vector(salt + text + "!", 8)},
            ],
        }


def test_a_lone_request_and_one_batched_by_its_caller_skip_the_batch_window(store: ArtifactStore, tmp: Path) -> None:
    srv = _Server(_spec(store, tmp, batch_timeout=2.0), tmp, "long-window")
    try:
        srv.wait_healthy()

        def timed(body: dict) -> float:
            started = time.perf_counter()
            resp = httpx.post(f"{srv.url}/predict", json=body, timeout=30)
            assert resp.status_code == 200, resp.text
            return time.perf_counter() - started

        timed({"inputs": [{"text": "warm up"}], "batched": True})
        assert timed({"inputs": [{"text": "lone"}]}) < 1.0  # an idle worker takes a lone request at once
        assert timed({"inputs": [{"text": "pre-batched"}], "batched": True}) < 1.0  # not the 2 s window
    finally:
        srv.stop()


def test_answers_are_not_compressed_even_for_clients_that_accept_gzip(server: _Server) -> None:
    # Level-9 gzip of float vectors cost more than the bytes it saved (LitServe adds it; the server drops it).
    body = {"version": "1", "inputs": [{"text": f"text {i}"} for i in range(64)]}
    resp = httpx.post(f"{server.url}/predict", json=body, headers={"accept-encoding": "gzip, deflate"})
    assert resp.status_code == 200 and len(resp.content) > 1000
    assert "content-encoding" not in resp.headers
    assert len(resp.json()["outputs"]) == 64


def test_bad_input_is_422_naming_the_field(server: _Server) -> None:
    resp = httpx.post(f"{server.url}/predict", json={"version": "2", "inputs": [{"text": ""}]})
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body", "inputs", 0, "text"]
    resp = httpx.post(
        f"{server.url}/predict", content=b'{"inputs": [', headers={"content-type": "application/json"}
    )
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"] == ["body"]
    assert "not valid JSON" in resp.json()["detail"][0]["msg"]


def test_unknown_version_is_404(server: _Server) -> None:
    resp = httpx.post(f"{server.url}/predict", json={"version": "9", "inputs": [{"text": "x"}]})
    assert resp.status_code == 404
    assert "no version '9'" in resp.json()["detail"]


def test_bad_requests_do_not_fail_the_requests_batched_with_them(server: _Server) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            bodies = [
                {"version": "9", "inputs": [{"text": "x"}]} if i % 4 == 0 else {"inputs": [{"text": f"{i}"}]}
                for i in range(40)
            ]
            return await asyncio.gather(*(client.post("/predict", json=b) for b in bodies))

    codes = [r.status_code for r in asyncio.run(run())]
    assert codes == [404 if i % 4 == 0 else 200 for i in range(40)]


def test_traceparent_is_echoed(server: _Server) -> None:
    resp = httpx.post(
        f"{server.url}/predict", json={"inputs": [{"text": "x"}]}, headers={"traceparent": TRACEPARENT}
    )
    assert resp.status_code == 200
    assert resp.headers["traceparent"] == TRACEPARENT


def test_metrics_show_batches_per_version_and_real_batching(server: _Server) -> None:
    async def burst() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
            await asyncio.gather(
                *(
                    client.post("/predict", json={"version": str(1 + i % 2), "inputs": [{"text": "b"}]})
                    for i in range(64)
                )
            )

    asyncio.run(burst())
    httpx.post(f"{server.url}/predict", json={"version": "9", "inputs": [{"text": "x"}]})  # an unknown version
    text = httpx.get(f"{server.url}/metrics").text
    counts = {s.labels["version"]: s.value for s in _metric(text, "tandem_server_batch_size_count")}
    assert counts.get("1", 0) > 0 and counts.get("2", 0) > 0
    per_batch = {s.labels["le"]: s.value for s in _metric(text, "tandem_server_requests_per_batch_bucket")}
    assert per_batch["+Inf"] > per_batch["1.0"], "no batch ever held more than one request"
    assert sum(s.value for s in _metric(text, "tandem_server_queue_wait_seconds_count")) > 0
    assert any(s.labels["version"] == "2" for s in _metric(text, "tandem_server_inference_seconds_count"))
    errors = {(s.labels["version"], s.labels["reason"]) for s in _metric(text, "tandem_server_errors_total")}
    assert ("unknown", "unknown_version") in errors
    http = _metric(text, "tandem_server_http_request_seconds_count")
    assert any(s.labels["path"] == "/predict" and s.labels["code"] == "200" for s in http)


# --- failing to start, stopping -------------------------------------------------------------


def test_a_corrupted_artifact_keeps_the_server_from_ever_becoming_healthy(
    store: ArtifactStore, tmp: Path
) -> None:
    spec = _spec(store, tmp)
    corrupt_store = ArtifactStore(str(tmp / "corrupt-artifacts"))
    bad = _tiny_version(corrupt_store, tmp, "2", salt="corrupt-me")
    (Path(bad.artifact_uri) / "manifest.json").write_text('{"kind": "tiny-embed", "salt": "evil"}')
    spec = spec.model_copy(update={"versions": (spec.versions[0], bad)})
    srv = _Server(spec, tmp, "corrupt")
    try:
        deadline = time.monotonic() + 120
        while srv.proc.poll() is None and time.monotonic() < deadline:
            srv.note_children()
            try:
                assert httpx.get(f"{srv.url}/health", timeout=0.5).status_code != 200
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        assert srv.proc.returncode == 1, srv.log.read_text()[-3000:]
        log = srv.log.read_text()
        assert "REFUSING to serve emb version 2" in log and "DigestMismatchError" in log
        time.sleep(1)
        assert not _alive(srv.seen_pids), "worker processes outlived the failed server"
    finally:
        srv.kill()


@pytest.mark.parametrize(
    "signals",
    [(signal.SIGTERM,), (signal.SIGINT,), (signal.SIGTERM, signal.SIGINT)],
    ids=["sigterm", "sigint", "sigterm-then-sigint"],
)
def test_signals_stop_the_server_and_every_child_process(store: ArtifactStore, tmp: Path, signals) -> None:
    spec = _spec(store, tmp, max_batch_size=4)
    srv = _Server(spec, tmp, f"stop-{'-'.join(s.name for s in signals)}")
    try:
        srv.wait_healthy()
        assert httpx.post(f"{srv.url}/predict", json={"inputs": [{"text": "x"}]}).status_code == 200
        children = _descendants(srv.proc.pid)
        assert len(children) >= 3, "expected the queue manager, an inference worker and a uvicorn process"
        started = time.monotonic()
        for sig in signals:
            srv.proc.send_signal(sig)
            time.sleep(0.3)
        srv.proc.wait(timeout=15)
        while _alive(children) and time.monotonic() - started < 10:
            time.sleep(0.1)
        assert not _alive(children), f"orphaned: {_alive(children)}"
        assert time.monotonic() - started < 10
        assert "model server emb stopped" in srv.log.read_text()
    finally:
        srv.kill()


# --- resolving a deployment from the registry -------------------------------------------------


def test_resolve_deployment_serves_stable_canary_and_shadow_from_a_real_registry(tmp: Path) -> None:
    from lakehouse import Lake
    from models.registry import Registry
    from models.settings import TandemSettings
    from online.servers import resolve_deployment

    settings = TandemSettings(home=tmp / "home")
    registry = Registry(Lake(settings.lake_root), ArtifactStore(settings.artifacts_root))
    for salt in ("a", "b", "c"):
        registry.register("emb", "embed", write_tiny_artifact(tmp / f"reg-{salt}", "tiny-embed", salt=salt))
    registry.promote("emb", "2", actor="test")
    registry.set_canary("emb", "3", 0.1, actor="test")
    registry.set_shadow("emb", "1", actor="test")

    spec = resolve_deployment(settings, "emb", max_batch_size=8, batch_timeout=None)
    assert spec.version_names == ["2", "3", "1"]  # stable (the default), canary, shadow
    assert (
        spec.max_batch_size == 8
        and spec.batch_timeout == DeploymentSpec.model_fields["batch_timeout"].default
    )
    assert spec.artifacts_root == settings.artifacts_root
    assert spec.versions[0] == VersionSpec(
        version="2",
        artifact_uri=registry.get("emb", "2").artifact_uri,
        sha256=registry.get("emb", "2").sha256,
    )
    assert resolve_deployment(settings, "emb", ["canary", "1"]).version_names == ["3", "1"]


def test_a_dead_inference_worker_stops_the_server_with_an_error(store: ArtifactStore, tmp: Path) -> None:
    srv = _Server(_spec(store, tmp), tmp, "worker-dies")
    try:
        srv.wait_healthy()
        children = _descendants(srv.proc.pid)
        workers = [p for p in children if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert workers, "no spawned inference worker found"
        for pid in workers:
            os.kill(pid, signal.SIGKILL)
        assert srv.proc.wait(timeout=15) == 1
        assert "an inference worker died" in srv.log.read_text()
        time.sleep(1)
        assert not _alive(children)
    finally:
        srv.kill()


# --- following the registry while serving ----------------------------------------------------


def _wait_for(predicate, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")


def test_a_version_that_gains_an_alias_is_served_without_a_restart_and_released_after_grace(tmp: Path) -> None:
    from lakehouse import Lake
    from models.registry import Registry
    from models.settings import TandemSettings
    from online.servers import resolve_deployment

    settings = TandemSettings(home=tmp / "watch-home")
    registry = Registry(Lake(settings.lake_root), ArtifactStore(settings.artifacts_root))
    for salt in ("one", "two"):
        registry.register("emb", "embed", write_tiny_artifact(tmp / f"watch-{salt}", "tiny-embed", salt=salt))
    registry.promote("emb", "1", actor="test")
    spec = resolve_deployment(settings, "emb", registry_poll_s=0.3, release_grace_s=1.0)
    srv = _Server(spec, tmp, "watching")
    try:
        srv.wait_healthy()
        served = lambda: httpx.get(f"{srv.url}/info").json()["served"]
        assert served()["loaded"] == ["1"]
        assert httpx.post(f"{srv.url}/predict", json={"version": "2", "inputs": [{"text": "x"}]}).status_code == 404

        registry.set_canary("emb", "2", 0.5, actor="test")
        _wait_for(lambda: served()["loaded"] == ["1", "2"], 30, "version 2 to load")
        r = httpx.post(f"{srv.url}/predict", json={"version": "2", "inputs": [{"text": "x"}]})
        assert r.status_code == 200 and r.json()["outputs"][0]["embedding"] == pytest.approx(hash_vector("twox", 8))

        registry.rollback("emb", actor="test", reason="test")
        _wait_for(lambda: served()["loaded"] == ["1"], 30, "version 2 to be released")
        assert httpx.post(f"{srv.url}/predict", json={"version": "2", "inputs": [{"text": "x"}]}).status_code == 404
        assert "released emb version 2" in srv.log.read_text()
    finally:
        srv.stop()


def test_kill_9_of_the_server_leaves_no_process_holding_its_port(store: ArtifactStore, tmp: Path) -> None:
    srv = _Server(_spec(store, tmp), tmp, "kill-9")
    try:
        srv.wait_healthy()
        children = _descendants(srv.proc.pid)
        srv.proc.kill()  # SIGKILL to the server's main process only, as the OOM killer would
        srv.proc.wait()
        _wait_for(lambda: not _alive(children), 10, f"orphans {_alive(children)} to exit")
        with socket.socket() as s:  # the port is free again: a new server can listen on it
            # As uvicorn does: a connection the dead server's side closed last sits in TIME_WAIT on this
            # port for a minute and fails a plain bind (seen in CI); only a socket still listening fails this one.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", srv.port))
            s.listen()
    finally:
        srv.kill()
