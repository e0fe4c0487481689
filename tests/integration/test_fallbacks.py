"""Fallbacks for real: stop each model server in turn (SIGINT by PID) and every shipped workflow
that uses it still answers 200 through the gateway, marked degraded; restarted, it answers in full.

Models are the deterministic tiny ones; the gateway, the servers and the workflows are the shipped ones.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable

import httpx
import pytest

from lakehouse.sql import sql_literal
from models.corpus import TOPICS
from models.settings import TandemSettings
from models.testing import write_tiny_artifact
from online.gateway.tenants import TenantStore
from orchestration.bootstrap import Platform
from tests.integration.conftest import Cluster, base_env

pytestmark = pytest.mark.integration

INPUTS = {"classify": {"text": "the striker scored"}, "enrich": {"text": "the striker scored"},
          "search": {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}}
USES = {"embedder": ["enrich", "search"], "classifier": ["classify", "enrich"], "reranker": ["search"]}
# (server down, workflow) -> each step's status in the response metadata
EXPECTED = {
    ("embedder", "enrich"): {"embed": "skipped", "classify": "ok"},
    ("embedder", "search"): {"embed_query": "skipped", "embed_documents": "skipped", "rerank": "ok"},
    ("classifier", "classify"): {"classify": "fallback"},
    ("classifier", "enrich"): {"embed": "ok", "classify": "skipped"},
    ("reranker", "search"): {"embed_query": "ok", "embed_documents": "ok", "rerank": "fallback"},
}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    src = home / "src"
    reg.register("embedder", "embed", write_tiny_artifact(src / "e1", "tiny-embed", dim=8), version="1")
    reg.register("classifier", "classify", write_tiny_artifact(src / "c1", "tiny-classify", labels=list(TOPICS)),
                 version="1")
    reg.register("reranker", "rerank", write_tiny_artifact(src / "r1", "tiny-rerank", dim=8), version="1")
    for name in ("embedder", "classifier", "reranker"):
        reg.promote(name, "1", actor="test")
    _, key = TenantStore(settings.tenants_file).create("acme", scopes={"predict", "admin"}, rate_per_s=1000,
                                                       burst=1000)

    env = base_env(home, TANDEM_GATEWAY_REGISTRY_POLL_S="0.5", TANDEM_GATEWAY_BREAKER_RESET_S="1",
                   TANDEM_GATEWAY_BREAKER_FAILURES="3", TANDEM_GATEWAY_LOG_FLUSH_S="0.3")
    c = Cluster(home, env)
    try:
        c.url = c.start_servers_and_gateway({name: "1" for name in USES}, home)
        c.key = key
        yield c
    finally:
        c.stop_all()


def run(c: Cluster, workflow: str, inp: dict) -> httpx.Response:
    return httpx.post(f"{c.url}/v1/workflows/{workflow}/run", json={"input": inp},
                      headers={"Authorization": f"Bearer {c.key}"}, timeout=30)


def fresh(workflow: str) -> dict:
    """The workflow's input made unique, so no cached prediction answers it."""
    inp = dict(INPUTS[workflow])
    stamp = f" {time.time_ns()}"
    if "text" in inp:
        inp["text"] += stamp
    else:
        inp["query"] += stamp
        inp["documents"] = [d + stamp for d in inp["documents"]]
    return inp


def _eventually(check: Callable[[], bool], timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.3)
    return False


def _answers_in_full(c: Cluster, workflow: str) -> bool:
    r = run(c, workflow, fresh(workflow))
    return r.status_code == 200 and not r.json()["metadata"]["degraded"]


@pytest.mark.parametrize("down", list(USES))
def test_each_workflow_answers_degraded_while_one_of_its_servers_is_stopped(cluster, down):
    for workflow in INPUTS:
        assert _answers_in_full(cluster, workflow), f"{workflow} is not healthy before stopping {down}"
    server = cluster.procs[f"server-{down}"]
    server.stop()  # SIGINT to the PID this test started
    try:
        for workflow in USES[down]:
            for attempt in range(2):  # the second request meets the open circuit, not a refused connection
                r = run(cluster, workflow, fresh(workflow))
                assert r.status_code == 200, f"{workflow} with {down} down (request {attempt + 1}): {r.text}"
                body = r.json()
                assert body["metadata"]["degraded"] is True
                steps = {s["step"]: s for s in body["metadata"]["steps"]}
                assert {k: s["status"] for k, s in steps.items()} == EXPECTED[down, workflow]
                for s in steps.values():
                    assert s["degraded"] == (s["status"] != "ok")
                    if s["status"] != "ok":
                        assert down in s["error"]
                _check_output(workflow, down, body["output"])
        for workflow in set(INPUTS) - set(USES[down]):
            assert _answers_in_full(cluster, workflow)  # workflows not using it are untouched
    finally:
        server.start(cluster.home)
        server.wait_healthy()
    for workflow in USES[down]:
        assert _eventually(lambda w=workflow: _answers_in_full(cluster, w), timeout_s=15), \
            f"{workflow} still degraded after {down} came back"


def _check_output(workflow: str, down: str, output: dict) -> None:
    if workflow == "classify":
        assert output["label"] in TOPICS and set(output["scores"]) == set(TOPICS)
    elif workflow == "enrich":
        assert (output["embedding"] is None) == (down == "embedder")
        assert (output["label"] is None) == (down == "classifier")
    else:
        assert len(output["results"]) == 2 and {d["document"][0] for d in output["results"]} <= {"a", "b", "c"}
        assert set(output) == {"results"}


def test_enrich_with_both_of_its_servers_stopped_is_503(cluster):
    stopped = [cluster.procs["server-embedder"], cluster.procs["server-classifier"]]
    for server in stopped:
        server.stop()
    try:
        r = run(cluster, "enrich", fresh("enrich"))
        assert r.status_code == 503, r.text
        assert "every step failed" in r.json()["detail"]
    finally:
        for server in stopped:
            server.start(cluster.home)
        for server in stopped:
            server.wait_healthy()
    assert _eventually(lambda: _answers_in_full(cluster, "enrich"), timeout_s=15)


def test_fallback_answers_are_logged_under_the_builtin_not_the_failed_model(cluster):
    stopped = [cluster.procs["server-classifier"], cluster.procs["server-reranker"]]
    for server in stopped:
        server.stop()
    try:
        ids = {w: run(cluster, w, fresh(w)).json()["metadata"]["request_id"] for w in ("classify", "search")}
    finally:
        for server in stopped:
            server.start(cluster.home)
        for server in stopped:
            server.wait_healthy()

    query = ("SELECT model, step, arm, status FROM predictions "
             f"WHERE request_id IN ({', '.join(sql_literal(i) for i in ids.values())})")

    def logged() -> set[tuple]:
        out = subprocess.run([sys.executable, "-m", "orchestration.cli", "sql", query, "--format", "json"],
                             env=cluster.env, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return {(r["model"], r["step"], r["arm"], r["status"]) for r in json.loads(out.stdout)}

    expected = {("classifier", "classify", "stable", "error"),
                ("builtin:nearest_label", "classify", "fallback", "fallback"),
                ("reranker", "rerank", "stable", "error"),
                ("builtin:cosine_rank", "rerank", "fallback", "fallback")}
    assert _eventually(lambda: expected <= logged(), timeout_s=15), logged()


def test_the_shipped_classify_fallback_labels_real_text_well_with_the_real_embedder(tmp_path):
    """The real MiniLM embedder behind `nearest_label`, classifier gone: a sensible label, not a guess."""
    from models.corpus import generate_demo_corpus
    from models.embedder import write_embedder_artifact
    from models.executor import run_workflow_batch
    from models.ops import load_op
    from models.workflows import BUILTIN_WORKFLOWS, load_workflow

    embedder = load_op(write_embedder_artifact(tmp_path / "minilm", precision="fp32"))

    def resolve(model, version):
        if model == "classifier":
            raise ConnectionRefusedError("the classifier is down")
        return embedder

    rows = generate_demo_corpus(300, seed=7)
    spec = load_workflow(BUILTIN_WORKFLOWS / "classify.yaml")
    result = run_workflow_batch(spec, [{"text": r["text"]} for r in rows], resolve,
                                {"classifier": "1", "embedder": "1"})
    assert {r.status for r in result.rows} == {"degraded"}
    accuracy = sum(r.output["label"] == row["label"] for r, row in zip(result.rows, rows)) / len(rows)
    assert accuracy >= 0.8, accuracy  # ~0.9 measured; six labels, so chance is ~0.17
