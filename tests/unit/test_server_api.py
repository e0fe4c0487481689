"""The model server's LitAPI and deployment spec, exercised without HTTP or worker processes."""

from __future__ import annotations

import json
import pickle
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from models.artifacts import ArtifactStore
from models.errors import DigestMismatchError, RegistryError, SchemaError
from models.testing import hash_vector, write_tiny_artifact
from models.threads import cores_shared
from online.servers import DeploymentAPI, DeploymentSpec, VersionSpec, deployment_from_registry
from online.servers.api import _WorkerQueue
from online.servers.metrics import render_metrics
from online.servers.middleware import TraceContextMiddleware, parse_traceparent

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


# --- fixtures ---------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def _restore_thread_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # setup() caps OMP/MKL threads through the environment; keep that inside each test.
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(var, raising=False)


def _store_tiny(
    store: ArtifactStore, tmp: Path, version: str, kind: str = "tiny-embed", **knobs
) -> VersionSpec:
    ref = store.put(write_tiny_artifact(tmp / f"src-{version}", kind, **knobs))
    return VersionSpec(version=version, artifact_uri=ref.uri, sha256=ref.sha256)


@pytest.fixture
def store(tmp_path: Path) -> ArtifactStore:
    return ArtifactStore(str(tmp_path / "artifacts"))


@pytest.fixture
def spec(store: ArtifactStore, tmp_path: Path) -> DeploymentSpec:
    return DeploymentSpec(
        model="emb",
        task="embed",
        versions=[
            _store_tiny(store, tmp_path, "1", salt="one"),
            _store_tiny(store, tmp_path, "2", salt="two"),
        ],
        artifacts_root=store.root,
    )


class _CountingOp:
    """Wraps an op to record each predict_batch call's size and whether it ran sharing the cores."""

    def __init__(self, op):
        self.op, self.task, self.calls, self.shared = op, op.task, [], []

    def predict_batch(self, inputs):
        self.calls.append(len(inputs))
        self.shared.append(cores_shared())
        return self.op.predict_batch(inputs)


@pytest.fixture
def api(spec: DeploymentSpec) -> DeploymentAPI:
    api = DeploymentAPI(spec)
    api.pre_setup()
    api.setup("cpu")
    api._ops = {v: _CountingOp(op) for v, op in api._ops.items()}
    return api


def _serve(api: DeploymentAPI, requests: list) -> list[tuple[int, dict]]:
    """One batch through the hooks, as LitServe's batched loop calls them."""
    decoded = [api.decode_request(r) for r in requests]
    outputs = api.unbatch(api.predict(api.batch(decoded)))
    responses = [api.encode_response(o) for o in outputs]
    return [(r.status_code, orjson.loads(r.body)) for r in responses]


def _embedding(salt: str, text: str) -> list[float]:
    return hash_vector(salt + text, 8)


# --- DeploymentSpec ---------------------------------------------------------------------


def test_spec_round_trips_through_json_and_pickle(spec: DeploymentSpec) -> None:
    assert DeploymentSpec.model_validate_json(spec.model_dump_json()) == spec
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.default_version == "1"
    assert spec.describe()["versions"][1]["version"] == "2"


def test_spec_refuses_duplicate_versions_unknown_tasks_and_bad_digests(spec: DeploymentSpec) -> None:
    base = spec.model_dump()
    with pytest.raises(ValidationError, match="distinct"):
        DeploymentSpec.model_validate({**base, "versions": [base["versions"][0]] * 2})
    with pytest.raises(ValidationError, match="unknown task 'translate'"):
        DeploymentSpec.model_validate({**base, "task": "translate"})
    with pytest.raises(ValidationError, match="sha256"):
        DeploymentSpec.model_validate({**base, "versions": [{**base["versions"][0], "sha256": "abc"}]})


def test_spec_torch_threads_default_to_cores_per_worker(spec: DeploymentSpec) -> None:
    one = spec.model_copy(update={"workers": 1}).resolved_torch_threads()
    assert one >= 1
    assert spec.model_copy(update={"workers": 64}).resolved_torch_threads() == 1
    assert spec.model_copy(update={"torch_threads": 3}).resolved_torch_threads() == 3


@dataclass
class _MV:
    version: str
    task: str = "embed"

    @property
    def artifact_uri(self) -> str:
        return f"/artifacts/{self.version}"

    @property
    def sha256(self) -> str:
        return self.version * 64


@dataclass
class _State:
    stable: str | None = None
    canary: str | None = None
    shadow: str | None = None


class _FakeRegistry:
    def __init__(self, state: _State):
        self._state = state

    def state(self, name: str) -> _State:
        return self._state

    def resolve(self, name: str, ref: str = "stable") -> _MV:
        return _MV(getattr(self._state, ref) if ref in ("stable", "canary", "shadow") else ref)


def test_deployment_from_registry_serves_every_aliased_version_stable_first() -> None:
    registry = _FakeRegistry(_State(stable="3", canary="4", shadow="2"))
    spec = deployment_from_registry(registry, "emb", None, artifacts_root="/artifacts", max_batch_size=8)
    assert spec.version_names == ["3", "4", "2"]
    assert spec.default_version == "3"
    assert spec.max_batch_size == 8
    assert spec.versions[0].artifact_uri == "/artifacts/3"


def test_deployment_from_registry_dedupes_and_accepts_aliases_among_explicit_versions() -> None:
    registry = _FakeRegistry(_State(stable="3"))
    spec = deployment_from_registry(registry, "emb", ["stable", "3", "1"], artifacts_root="/a")
    assert spec.version_names == ["3", "1"]


def test_deployment_from_registry_refuses_a_model_with_no_alias() -> None:
    with pytest.raises(RegistryError, match="promote"):
        deployment_from_registry(_FakeRegistry(_State()), "emb", None, artifacts_root="/a")


# --- setup --------------------------------------------------------------------------------


def test_setup_refuses_an_artifact_whose_digest_does_not_match(spec: DeploymentSpec) -> None:
    stored = Path(spec.versions[1].artifact_uri) / "manifest.json"
    stored.write_text(stored.read_text().replace("two", "tampered"))
    with pytest.raises(DigestMismatchError):
        DeploymentAPI(spec).setup("cpu")


def test_setup_refuses_a_version_of_another_task(spec: DeploymentSpec, store, tmp_path) -> None:
    classifier = _store_tiny(store, tmp_path, "9", kind="tiny-classify")
    bad = spec.model_copy(update={"versions": (*spec.versions, classifier)})
    with pytest.raises(SchemaError, match="'classify' model"):
        DeploymentAPI(bad).setup("cpu")


def test_api_pickles_before_setup_for_spawned_workers(spec: DeploymentSpec) -> None:
    clone = pickle.loads(pickle.dumps(DeploymentAPI(spec)))
    assert clone.deployment == spec and clone.max_batch_size == 32


# --- decode / predict / encode -----------------------------------------------------------


def test_batch_calls_each_version_once_and_answers_with_that_versions_outputs(api: DeploymentAPI) -> None:
    answers = _serve(
        api,
        [
            {"version": "1", "inputs": [{"text": "a"}, {"text": "b"}]},
            {"version": "2", "inputs": [{"text": "a"}]},
            {"inputs": [{"text": "c"}]},
            {"version": 2, "inputs": [{"text": "d"}, {"text": "e"}]},
        ],
    )
    assert api._ops["1"].calls == [3]
    assert api._ops["2"].calls == [3]
    assert [code for code, _ in answers] == [200] * 4
    assert answers[0][1] == {
        "model": "emb",
        "version": "1",
        "outputs": [{"embedding": _embedding("one", "a")}, {"embedding": _embedding("one", "b")}],
    }
    assert answers[1][1]["outputs"] == [{"embedding": _embedding("two", "a")}]
    assert answers[2][1]["version"] == "1"  # no version: the deployment's default (first)
    assert answers[2][1]["outputs"] == [{"embedding": _embedding("one", "c")}]
    assert answers[3][1]["version"] == "2"
    assert answers[3][1]["outputs"] == [{"embedding": _embedding("two", t)} for t in "de"]


def test_bad_requests_fail_alone_without_failing_their_batch(api: DeploymentAPI) -> None:
    answers = _serve(
        api,
        [
            {"version": "1", "inputs": [{"text": "ok"}]},
            {"version": "1", "inputs": [{"text": ""}]},
            {"version": "7", "inputs": [{"text": "x"}]},
            {"version": "2", "inputs": [{"txt": "x"}]},
            {"version": "2", "inputs": []},
        ],
    )
    codes = [code for code, _ in answers]
    assert codes == [200, 422, 404, 422, 422]
    assert answers[1][1]["detail"][0]["loc"] == ["body", "inputs", 0, "text"]
    assert "serves 1, 2" in answers[2][1]["detail"]
    assert {e["loc"][-1] for e in answers[3][1]["detail"]} == {"text", "txt"}
    assert answers[4][1]["detail"][0]["loc"] == ["body", "inputs"]
    assert api._ops["1"].calls == [1] and api._ops["2"].calls == []


def test_a_failing_version_fails_only_its_own_requests(spec: DeploymentSpec, store, tmp_path) -> None:
    broken = _store_tiny(store, tmp_path, "3", fail_every=1)
    api = DeploymentAPI(spec.model_copy(update={"versions": (*spec.versions, broken)}))
    api.pre_setup()
    api.setup("cpu")
    answers = _serve(
        api, [{"version": "3", "inputs": [{"text": "a"}]}, {"version": "1", "inputs": [{"text": "a"}]}]
    )
    assert answers[0][0] == 500 and "InjectedFailure" in answers[0][1]["detail"]
    assert answers[1][0] == 200


def test_unbatched_deployment_predicts_one_request_at_a_time(spec: DeploymentSpec) -> None:
    api = DeploymentAPI(spec.model_copy(update={"max_batch_size": 1}))
    assert api.max_batch_size == 1 and api.batch_timeout == 0
    api.setup("cpu")
    response = api.encode_response(
        api.predict(api.decode_request({"version": "2", "inputs": [{"text": "z"}]}))
    )
    assert response.status_code == 200
    assert orjson.loads(response.body)["outputs"] == [{"embedding": _embedding("two", "z")}]


def test_metrics_count_batches_per_version(api: DeploymentAPI) -> None:
    _serve(
        api, [{"version": "1", "inputs": [{"text": "a"}] * 3}, {"version": "2", "inputs": [{"text": "b"}]}]
    )
    text = render_metrics()[0].decode()
    assert 'tandem_server_batch_size_count{model="emb",version="1"}' in text
    assert 'tandem_server_batch_size_bucket{le="4.0",model="emb",version="1"}' in text
    assert 'tandem_server_requests_total{code="200",model="emb",version="2"}' in text


# --- worker queue --------------------------------------------------------------------------


def test_worker_queue_holds_the_first_request_and_records_its_wait() -> None:
    q: queue.Queue = queue.Queue()
    waits: list[float] = []
    wq = _WorkerQueue(q, waits.append)
    assert wq.wait(timeout=0.01) is False
    q.put((0, "uid-1", time.monotonic() - 0.05, {"inputs": []}))
    q.put((0, "uid-2", time.monotonic(), {"inputs": []}))
    assert wq.wait(timeout=1) is True
    assert wq.get(timeout=0.001)[1] == "uid-1"
    assert wq.get_nowait()[1] == "uid-2"
    with pytest.raises(queue.Empty):
        wq.get_nowait()
    assert len(waits) == 2 and waits[0] >= 0.05


# --- trace context ---------------------------------------------------------------------------


def test_traceparent_is_validated() -> None:
    assert parse_traceparent(TRACEPARENT.upper()) == TRACEPARENT
    assert parse_traceparent("00-" + "0" * 32 + "-00f067aa0ba902b7-01") is None
    assert parse_traceparent("garbage") is None
    assert parse_traceparent(None) is None


def test_middleware_echoes_a_valid_traceparent_and_drops_an_invalid_one() -> None:
    app = Starlette(routes=[Route("/predict", lambda r: PlainTextResponse("ok"), methods=["POST"])])
    client = TestClient(TraceContextMiddleware(app, model="emb"))
    assert client.post("/predict", headers={"traceparent": TRACEPARENT}).headers["traceparent"] == TRACEPARENT
    assert "traceparent" not in client.post("/predict", headers={"traceparent": "bogus"}).headers


def test_spec_json_file_is_what_the_cli_reads(spec: DeploymentSpec, tmp_path: Path) -> None:
    from online.servers import load_spec

    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.model_dump()))
    assert load_spec(path) == spec


def _trickle(q: queue.Queue, n: int, every_s: float) -> threading.Thread:
    def put() -> None:
        for i in range(n):
            q.put((0, f"uid-{i}", time.monotonic(), {"inputs": [{"text": str(i)}]}))
            time.sleep(every_s)

    t = threading.Thread(target=put)
    t.start()
    return t


class _FakeTransport:
    def send(self, item, consumer_id=None) -> None:
        pass


def test_a_request_reaching_an_idle_worker_does_not_wait_out_the_batch_window() -> None:
    from types import SimpleNamespace

    from online.servers.api import _TimedBatchedLoop

    api = SimpleNamespace(max_batch_size=8, batch_timeout=0.5, request_timeout=-1, stream=False)
    loop = _TimedBatchedLoop()
    q: queue.Queue = queue.Queue()
    wq = _WorkerQueue(q, lambda s: None)
    for i in range(3):  # one client: every request finds the worker idle
        q.put((0, f"lone-{i}", time.monotonic(), {"inputs": [{"text": "x"}]}))
        started = time.monotonic()
        payloads, _ = loop.get_batch_requests(api, wq, _FakeTransport())
        assert [p[1] for p in payloads] == [f"lone-{i}"] and time.monotonic() - started < 0.25  # not the 0.5 s window
    for i in range(3):  # what queued meanwhile leaves together, at once
        q.put((0, f"queued-{i}", time.monotonic(), {"inputs": [{"text": "x"}]}))
    payloads, _ = loop.get_batch_requests(api, wq, _FakeTransport())
    assert [p[1] for p in payloads] == ["queued-0", "queued-1", "queued-2"]


def test_the_batch_window_stays_open_while_a_wave_trickles_in_and_a_lone_request_waits_one_window() -> None:
    from types import SimpleNamespace

    from online.servers.api import _TimedBatchedLoop

    api = SimpleNamespace(max_batch_size=8, batch_timeout=0.1, request_timeout=-1, stream=False)
    loop = _TimedBatchedLoop()
    loop._last_requests = 8  # the worker is busy: its last batch was a wave
    q: queue.Queue = queue.Queue()
    wq = _WorkerQueue(q, lambda s: None)
    # 8 requests 20 ms apart: one 100 ms window sees about 5; the wave needs ~160 ms (scheduling on a
    # busy box stretches the gaps, so they stay well inside the 50 ms half-window the rule waits for).
    feeder = _trickle(q, 8, 0.02)
    payloads, timed_out = loop.get_batch_requests(api, wq, _FakeTransport())
    feeder.join()
    assert len(payloads) == 8 and timed_out == []
    assert (api.max_batch_size, api.batch_timeout) == (8, 0.1)  # restored

    q.put((0, "lone", time.monotonic(), {"inputs": [{"text": "x"}]}))
    started = time.monotonic()
    payloads, _ = loop.get_batch_requests(api, wq, _FakeTransport())
    assert [p[1] for p in payloads] == ["lone"] and time.monotonic() - started < 0.25  # one window, not four


def test_the_lean_predict_endpoint_serves_predict_and_openapi_still_documents_it(spec: DeploymentSpec) -> None:
    from online.servers.predict_route import PredictEndpoint
    from online.servers.run import build_server

    server = build_server(spec)
    first = next(r for r in server.app.router.routes if getattr(r, "path", None) == "/predict")
    assert isinstance(first.app, PredictEndpoint)  # matched before LitServe's route
    assert "/predict" in server.app.openapi()["paths"]


def test_a_lone_request_marked_parallel_runs_sharing_the_cores_and_nothing_else_does(api: DeploymentAPI) -> None:
    op = api._ops["1"]
    lone = {"version": "1", "inputs": [{"text": "a"}], "parallel": True}
    assert _serve(api, [lone])[0][0] == 200
    assert _serve(api, [{**lone, "parallel": False}])[0][0] == 200
    # Batched with another request of its version, it is part of a batch: its rows take a thread each.
    assert [code for code, _ in _serve(api, [lone, {"version": "1", "inputs": [{"text": "b"}]}])] == [200, 200]
    assert op.shared == [True, False, False]
    assert cores_shared() is False  # only inside the call
