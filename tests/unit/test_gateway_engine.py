"""The workflow engine against fake model servers (a fake transport): no network, no models."""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from models._registry_state import AliasState
from models.testing import hash_vector
from models.workflows import RetryPolicy, load_workflows, parse_workflow
from online.gateway.breaker import BreakerBoard
from online.gateway.cache import PredictionCache
from online.gateway.client import (
    CallTimeout,
    EndpointUnreachable,
    ModelCallError,
    ModelClient,
    ModelReply,
    RejectedCall,
    RetryableCallError,
)
from online.gateway.engine import RequestContext, WorkflowEngine
from online.gateway.metrics import GatewayMetrics
from online.gateway.problems import DeadlineExceeded, ServiceUnavailable
from online.gateway.routing import Router

WORKFLOWS = load_workflows()


def strict(spec):
    """`spec` without its failure handling (no optional steps, no fallbacks): a failure fails the run."""
    data = spec.model_dump(exclude_none=True)
    for step in data["steps"]:
        step["optional"] = False
        step.pop("fallback", None)
    return parse_workflow(data)


BARE_CLASSIFY = strict(WORKFLOWS["classify"])  # for the error paths: no fallback answers for it
SERVERS = {"embedder": "http://embedder", "classifier": "http://classifier", "reranker": "http://reranker"}


def fake_output(model: str, version: str, inp: dict) -> dict:
    if model == "embedder":
        return {"embedding": hash_vector(version + inp["text"], 4)}
    if model == "classifier":
        return {"label": "sports", "score": 0.9, "scores": {"sports": 0.9, "tech": 0.1}}
    docs = inp["documents"]
    return {"results": [{"index": i, "document": d, "score": 1.0 / (i + 1)} for i, d in enumerate(docs)]}


class FakeServers:
    """Answers /predict like a model server; can be slowed down or broken per model."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s
        self.down: set[str] = set()
        self.fail_first: dict[str, int] = {}
        self.broken: dict[tuple[str, str], ModelCallError] = {}  # (model, version) -> what every call raises
        self.calls: list[tuple[str, str, float, float]] = []  # model, version, start, end
        self.parallel: list[tuple[str, bool]] = []  # model, the call's `parallel` flag

    async def send(self, base_url: str, version: str, inputs: list[dict], *, timeout_s: float,
                   headers=None, batched: bool = False, parallel: bool = False) -> ModelReply:
        model = base_url.removeprefix("http://")
        self.parallel.append((model, parallel))
        start = time.perf_counter()
        if model in self.down:
            raise EndpointUnreachable(f"{base_url} is unreachable: ConnectionRefusedError")
        if self.fail_first.get(model, 0) > 0:
            self.fail_first[model] -= 1
            raise RetryableCallError(f"{base_url} answered 500: boom", status=500)
        if (model, version) in self.broken:
            raise self.broken[model, version]
        await asyncio.sleep(self.delay_s)
        self.calls.append((model, version, start, time.perf_counter()))
        return ModelReply(version, [fake_output(model, version, inp) for inp in inputs])

    async def health(self, base_url: str, timeout_s: float = 1.0) -> bool:
        return base_url.removeprefix("http://") not in self.down

    async def aclose(self) -> None:
        pass


class RecordingLog:
    """Stands in for the PredictionLog: keeps the rows."""

    def __init__(self):
        self.rows: list[dict] = []

    def log(self, row: dict) -> None:
        self.rows.append(row)

    def outcomes(self) -> list[tuple]:
        return [(r["model"], r["version"], r["arm"], r["status"], r["error_type"]) for r in self.rows]


def make_engine(fake: FakeServers, states: dict | None = None, log: RecordingLog | None = None,
                **kw) -> WorkflowEngine:
    states = states or {m: AliasState(name=m, stable="1") for m in SERVERS}
    return WorkflowEngine(
        client=ModelClient(fake), servers=lambda: SERVERS,
        states=lambda: states, router=Router(), cache=PredictionCache(), log=log,
        breakers=BreakerBoard(failure_threshold=3, reset_timeout_s=60), metrics=GatewayMetrics(),
        rng=lambda: 0.0, **kw,
    )


def ctx(deadline_s: float = 5.0, **kw) -> RequestContext:
    return RequestContext(request_id="r1", trace_id="t" * 32, traceparent=f"00-{'a' * 32}-{'b' * 16}-01",
                          tenant="acme", routing_key="acme:r1", deadline=time.monotonic() + deadline_s,
                          budget_ms=deadline_s * 1000, **kw)


async def test_enrich_runs_its_two_branches_concurrently():
    fake = FakeServers(delay_s=0.2)
    engine = make_engine(fake)
    output, reports = await engine.run(WORKFLOWS["enrich"], {"text": "goal!"}, ctx())
    assert output["label"] == "sports" and len(output["embedding"]) == 4
    (_, _, s1, e1), (_, _, s2, e2) = fake.calls
    assert max(s1, s2) < min(e1, e2), "the embed and classify calls did not overlap"
    assert [r.step for r in reports] == ["embed", "classify"]


async def test_steps_that_run_beside_another_tell_their_servers_so_and_others_do_not():
    fake = FakeServers()
    engine = make_engine(fake)
    await engine.run(WORKFLOWS["enrich"], {"text": "goal!"}, ctx())
    assert sorted(fake.parallel) == [("classifier", True), ("embedder", True)]
    fake.parallel.clear()
    await engine.run(WORKFLOWS["classify"], {"text": "a save!"}, ctx())  # one step: nothing beside it
    assert fake.parallel == [("classifier", False)]
    fake.parallel.clear()
    await engine.run(WORKFLOWS["search"], {"query": "q", "documents": ["a", "b"]}, ctx())
    assert ("reranker", False) in fake.parallel  # after both embedding steps, alone


async def test_search_feeds_embeddings_into_rerank():
    fake = FakeServers()
    output, _ = await make_engine(fake).run(
        WORKFLOWS["search"], {"query": "q", "documents": ["a", "b", "c"]}, ctx())
    assert [r["index"] for r in output["results"]] == [0, 1, 2]
    order = [c[0] for c in fake.calls]
    assert order.index("reranker") == 2  # after both embedding steps
    embed_docs = [c for c in fake.calls if c[0] == "embedder"]
    assert len(embed_docs) == 2  # query + all documents in one batched call


async def test_retryable_failures_are_retried_then_succeed():
    fake = FakeServers()
    fake.fail_first["classifier"] = 1
    output, reports = await make_engine(fake).run(WORKFLOWS["classify"], {"text": "x"}, ctx())
    assert output["label"] == "sports"
    assert reports[0].attempts == 2


async def test_dead_server_gives_503_and_opens_the_breaker():
    fake = FakeServers()
    fake.down.add("classifier")
    engine = make_engine(fake)
    for _ in range(2):
        with pytest.raises(ServiceUnavailable):
            await engine.run(BARE_CLASSIFY, {"text": "x"}, ctx())
    assert engine.breakers.get(SERVERS["classifier"]).state.name.lower() == "open"
    with pytest.raises(ServiceUnavailable, match="circuit open"):
        await engine.run(BARE_CLASSIFY, {"text": "x"}, ctx())


async def test_deadline_bounds_the_whole_workflow():
    fake = FakeServers(delay_s=0.5)
    with pytest.raises(DeadlineExceeded):
        await make_engine(fake).run(WORKFLOWS["classify"], {"text": "x"}, ctx(deadline_s=0.1))


async def test_fallback_version_serves_when_the_primary_fails():
    fake = FakeServers()
    fake.fail_first["embedder"] = 100  # every call fails, fallback included: then the optional rule decides
    engine = make_engine(fake)
    report, outputs = await engine.call_step(
        step_id="embed", model="classifier", task="classify", instances=[{"text": "x"}], ctx=ctx(),
        timeout_ms=500, retry=RetryPolicy(attempts=1), fallback=("classifier", "stable"))
    assert report.status == "ok"
    report, outputs = await engine.call_step(
        step_id="embed", model="embedder", task="embed", instances=[{"text": "x"}], ctx=ctx(),
        timeout_ms=500, retry=RetryPolicy(attempts=1), optional=True)
    assert outputs is None and report.status == "skipped" and report.degraded


async def test_canary_routing_is_sticky_and_cache_separates_versions():
    states = {"embedder": AliasState(name="embedder", stable="1", canary="2", canary_weight=0.5)}
    fake = FakeServers()
    engine = make_engine(fake, states=states)
    arms = {}
    for key in range(40):
        c = ctx()
        c.routing_key = f"acme:{key}"
        report, out = await engine.call_step(step_id="e", model="embedder", task="embed",
                                             instances=[{"text": "same"}], ctx=c, timeout_ms=500,
                                             retry=RetryPolicy())
        arms.setdefault(key, set()).add((report.arm, report.version, tuple(out[0]["embedding"])))
        report2, _ = await engine.call_step(step_id="e", model="embedder", task="embed",
                                            instances=[{"text": "same"}], ctx=c, timeout_ms=500,
                                            retry=RetryPolicy())
        assert report2.cached and report2.version == report.version
    assert all(len(v) == 1 for v in arms.values())
    versions = {next(iter(v))[1] for v in arms.values()}
    assert versions == {"1", "2"}
    assert len(fake.calls) == 2  # one miss per version; every other call was a cache hit


async def test_a_cached_answer_is_the_fresh_one_and_a_raw_caller_gets_it_as_the_caches_bytes():
    fake, log = FakeServers(), RecordingLog()
    engine = make_engine(fake, log=log)
    texts = [{"text": "same"}, {"text": "other"}]

    async def call(instances, raw):
        return (await engine.call_step(step_id="e", model="embedder", task="embed", instances=instances,
                                       ctx=ctx(), timeout_ms=500, retry=RetryPolicy(), raw=raw))[1]

    fresh = await call(texts[:1], raw=True)  # a miss: the model's output, parsed
    assert isinstance(fresh[0], dict)
    mixed = await call(texts, raw=True)  # a hit and a miss in one call
    assert isinstance(mixed[0], orjson.Fragment) and isinstance(mixed[1], dict)
    parsed = await call(texts, raw=False)
    assert all(isinstance(o, dict) for o in parsed)
    # Serialised, every form is the same answer.
    assert orjson.dumps(mixed) == orjson.dumps(parsed) == orjson.dumps([fresh[0], parsed[1]])
    assert len(fake.calls) == 2
    # The log's facts were computed once per entry and kept: a hit's row reads like the miss's.
    same = [(r["input_hash"], r["output_summary"]) for r in log.rows if r["input_hash"] == log.rows[0]["input_hash"]]
    assert len(same) == 3 and len(set(same)) == 1
    assert orjson.loads(same[0][1])["dim"] == 4


def test_step_report_as_dict_names_every_field():
    from dataclasses import asdict

    from online.gateway.engine import StepReport

    report = StepReport("s", "m", "1", "stable", cached=True, latency_ms=1.5, attempts=2, error="x")
    assert report.as_dict() == asdict(report)


CANARY_ONLY = {"classifier": AliasState(name="classifier", stable="1", canary="2", canary_weight=1.0),
               "embedder": AliasState(name="embedder", stable="1", shadow="3")}


async def test_a_failed_canary_call_is_an_error_row_on_its_arm_and_the_fallback_answer_a_fallback_row():
    fake, log = FakeServers(), RecordingLog()
    fake.broken["classifier", "2"] = RetryableCallError("http://classifier answered 500: boom", status=500)
    engine = make_engine(fake, states=CANARY_ONLY, log=log)
    report, outputs = await engine.call_step(
        step_id="classify", model="classifier", task="classify", instances=[{"text": "a"}, {"text": "b"}],
        ctx=ctx(), timeout_ms=500, retry=RetryPolicy(attempts=2), fallback=("classifier", "stable"))
    assert report.status == "fallback" and outputs[0]["label"] == "sports"
    assert log.outcomes() == [("classifier", "2", "canary", "error", "upstream_error")] * 2 + [
        ("classifier", "1", "fallback", "fallback", None)] * 2
    error_row = log.rows[0]
    assert "500" in error_row["error"] and error_row["latency_ms"] >= 0 and error_row["request_id"] == "r1"


@pytest.mark.parametrize(("failure", "problem", "error_type"), [
    (EndpointUnreachable("http://classifier is unreachable"), ServiceUnavailable, "unavailable"),
    (CallTimeout("read timeout"), DeadlineExceeded, "timeout"),
    (RetryableCallError("answered 502", status=502), ServiceUnavailable, "upstream_error"),
    (RejectedCall("answered 404", status=404), ServiceUnavailable, "rejected"),
])
async def test_a_request_that_fails_still_logs_its_error_row_with_the_version_and_arm(failure, problem, error_type):
    fake, log = FakeServers(), RecordingLog()
    fake.broken["classifier", "2"] = failure
    engine = make_engine(fake, states=CANARY_ONLY, log=log)
    with pytest.raises(problem):
        await engine.run(BARE_CLASSIFY, {"text": "x"}, ctx(workflow="classify"))
    assert log.outcomes() == [("classifier", "2", "canary", "error", error_type)]
    assert log.rows[0]["workflow"] == "classify" and log.rows[0]["step"] == "classify"


async def test_an_unreachable_server_then_its_open_circuit_are_logged_as_such():
    fake, log = FakeServers(), RecordingLog()
    fake.down.add("classifier")
    engine = make_engine(fake, log=log)
    for _ in range(2):  # 2 attempts each: the breaker opens at the 3rd failure, during the 2nd request
        with pytest.raises(ServiceUnavailable):
            await engine.run(BARE_CLASSIFY, {"text": "x"}, ctx())
    with pytest.raises(ServiceUnavailable, match="circuit open"):
        await engine.run(BARE_CLASSIFY, {"text": "x"}, ctx())
    assert [r["error_type"] for r in log.rows] == ["unavailable", "circuit_open", "circuit_open"]
    assert {(r["version"], r["arm"], r["status"]) for r in log.rows} == {("1", "stable", "error")}


async def test_a_call_cut_by_the_request_deadline_is_logged_as_a_deadline_error():
    fake, log = FakeServers(delay_s=0.5), RecordingLog()
    with pytest.raises(DeadlineExceeded):
        await make_engine(fake, log=log).run(WORKFLOWS["classify"], {"text": "x"}, ctx(deadline_s=0.1))
    assert log.outcomes() == [("classifier", "1", "stable", "error", "deadline")]


async def test_successes_shadows_and_skips_are_logged_with_their_status():
    fake, log = FakeServers(), RecordingLog()
    fake.broken["embedder", "3"] = CallTimeout("shadow read timeout")
    engine = make_engine(fake, states=CANARY_ONLY, log=log)
    await engine.call_step(step_id="e", model="embedder", task="embed", instances=[{"text": "a"}], ctx=ctx(),
                           timeout_ms=500, retry=RetryPolicy())
    await engine.drain_shadows()
    fake.broken["embedder", "1"] = EndpointUnreachable("down")
    report, _ = await engine.call_step(step_id="e", model="embedder", task="embed", instances=[{"text": "b"}],
                                       ctx=ctx(), timeout_ms=500, retry=RetryPolicy(attempts=1), optional=True)
    assert report.status == "skipped"
    assert log.outcomes() == [
        ("embedder", "1", "stable", "ok", None), ("embedder", "3", "shadow", "error", "timeout"),
        ("embedder", "1", "stable", "error", "unavailable"), ("embedder", None, None, "skipped", None),
    ]


async def test_a_version_the_server_has_not_loaded_points_at_models_status_not_a_restart():
    fake = FakeServers()
    fake.broken["classifier", "2"] = RejectedCall("answered 404: unknown version", status=404)
    with pytest.raises(ServiceUnavailable) as caught:
        await make_engine(fake, states=CANARY_ONLY).run(BARE_CLASSIFY, {"text": "x"}, ctx())
    assert "tandem models status classifier" in caught.value.detail
    assert "not served" in caught.value.detail and "restart" not in caught.value.detail


async def test_calls_spread_over_replicas_and_a_dead_replica_is_ejected_while_the_other_serves():
    fake = FakeServers(delay_s=0.01)
    replicas = {**{m: [u] for m, u in SERVERS.items()}, "classifier": ["http://classifier", "http://classifier-b"]}

    seen: list[str] = []
    dead: set[str] = set()
    original = fake.send

    async def recording_send(base_url, version, inputs, **kw):
        seen.append(base_url)
        if base_url in dead:
            raise EndpointUnreachable(f"{base_url} is unreachable: ConnectionRefusedError")
        return await original(base_url.replace("-b", ""), version, inputs, **kw)

    fake.send = recording_send
    engine = make_engine(fake, replicas=lambda: replicas)
    await asyncio.gather(*(engine.run(WORKFLOWS["classify"], {"text": f"t{i}"}, ctx()) for i in range(8)))
    assert {"http://classifier", "http://classifier-b"} <= set(seen), "calls were not spread over both replicas"

    dead.add("http://classifier")  # replica a dies; every request still gets an answer from b
    seen.clear()
    for i in range(10):
        output, _ = await engine.run(WORKFLOWS["classify"], {"text": f"u{i}"}, ctx())
        assert output["label"] == "sports"
    assert engine.breakers.get("http://classifier").state.name == "OPEN"  # ejected after 3 failures
    assert seen.count("http://classifier") == 3 and seen[-1] == "http://classifier-b"


async def test_a_replica_that_has_not_loaded_the_version_is_not_called_for_it():
    fake = FakeServers()
    seen: list[str] = []
    original = fake.send

    async def recording_send(base_url, version, inputs, **kw):
        seen.append(base_url)
        return await original(base_url.replace("-b", ""), version, inputs, **kw)

    fake.send = recording_send
    replicas = {**{m: [u] for m, u in SERVERS.items()}, "classifier": ["http://classifier", "http://classifier-b"]}
    engine = make_engine(fake, replicas=lambda: replicas,
                         serves=lambda url, version: url.endswith("-b"))
    for i in range(4):
        await engine.run(WORKFLOWS["classify"], {"text": f"v{i}"}, ctx())
    assert set(seen) == {"http://classifier-b"}


# --- the shipped workflows with one model server down ------------------------------------------------

INPUTS = {"classify": {"text": "the striker scored"}, "enrich": {"text": "the striker scored"},
          "search": {"query": "q", "documents": ["a", "b", "c"]}}
# (workflow, server down) -> what each step did
DOWN_CASES = {
    ("classify", "classifier"): {"classify": "fallback"},
    ("enrich", "embedder"): {"embed": "skipped", "classify": "ok"},
    ("enrich", "classifier"): {"embed": "ok", "classify": "skipped"},
    ("search", "embedder"): {"embed_query": "skipped", "embed_documents": "skipped", "rerank": "ok"},
    ("search", "reranker"): {"embed_query": "ok", "embed_documents": "ok", "rerank": "fallback"},
}


@pytest.mark.parametrize(("workflow", "model"), list(DOWN_CASES))
async def test_each_shipped_workflow_answers_degraded_with_any_one_of_its_servers_down(workflow, model):
    fake, log = FakeServers(), RecordingLog()
    fake.down.add(model)
    spec = WORKFLOWS[workflow]
    output, reports = await make_engine(fake, log=log).run(spec, INPUTS[workflow], ctx(workflow=workflow))

    spec.output_model().model_validate(output)  # what the route returns with 200
    assert {r.step: r.status for r in reports} == DOWN_CASES[workflow, model]
    assert any(r.degraded for r in reports)  # the response's `degraded`
    assert all(r.degraded == (r.status != "ok") for r in reports)
    # Every call of the dead server left an error row; the steps that gave up a skipped row.
    dead = [r for r in log.rows if r["model"] == model]
    assert dead and {r["status"] for r in dead} <= {"error", "skipped"}
    assert {r["error_type"] for r in dead if r["status"] == "error"} <= {"unavailable", "circuit_open"}
    logged_steps = {(r["step"], r["status"]) for r in log.rows if r["status"] in ("ok", "fallback", "skipped")}
    assert logged_steps == {(step, status) for step, status in DOWN_CASES[workflow, model].items()}
    assert model not in {c[0] for c in fake.calls}


async def test_classify_with_the_classifier_down_answers_a_label_from_the_embedder():
    fake, log = FakeServers(), RecordingLog()
    fake.down.add("classifier")
    output, [report] = await make_engine(fake, log=log).run(WORKFLOWS["classify"], {"text": "x"}, ctx())

    labels = set(WORKFLOWS["classify"].step("classify").fallback.labels)
    assert output["label"] in labels and set(output["scores"]) == labels
    assert output["score"] == max(output["scores"].values())
    assert (report.model, report.version, report.arm) == ("builtin:nearest_label", "embedder@1", "fallback")
    assert "classifier" in report.error and report.attempts == 3  # 2 on the classifier, 1 on the embedder
    assert log.outcomes()[-1] == ("builtin:nearest_label", "embedder@1", "fallback", "fallback", None)
    assert [c[0] for c in fake.calls] == ["embedder"]  # the prompts and the text in one call


async def test_nearest_label_chooses_the_label_whose_prompt_embeds_like_the_text():
    spec = parse_workflow({
        "name": "c", "version": 1, "input": {"text": "str"},
        "steps": [{"id": "classify", "model": "classifier", "task": "classify", "inputs": {"text": "$input.text"},
                   "fallback": {"builtin": "nearest_label", "model": "embedder",
                                "labels": {"sports": "the match", "finance": "the market"}}}],
        "output": {"label": "$classify.label"},
    })
    fake = FakeServers()
    fake.down.add("classifier")
    engine = make_engine(fake)
    for text, label in [("the market", "finance"), ("the match", "sports")]:
        output, _ = await engine.run(spec, {"text": text}, ctx())
        assert output["label"] == label


async def test_search_with_the_reranker_down_orders_documents_by_cosine_similarity():
    fake = FakeServers()
    fake.down.add("reranker")
    docs = ["alpha", "beta", "gamma", "delta"]
    output, reports = await make_engine(fake).run(
        WORKFLOWS["search"], {"query": "beta", "documents": docs, "top_n": 3}, ctx())

    q = hash_vector("1beta", 4)  # the fake embedder's vectors (unit length) for version 1
    scores = [sum(a * b for a, b in zip(q, hash_vector("1" + d, 4))) for d in docs]
    expected = sorted(range(4), key=lambda i: -scores[i])[:3]
    assert [r["index"] for r in output["results"]] == expected == [1, *expected[1:]]
    assert output["results"][0]["score"] == pytest.approx(1.0)
    assert reports[-1].model == "builtin:cosine_rank" and reports[-1].status == "fallback"


async def test_search_with_the_embedder_down_sends_rerank_no_embeddings():
    fake = FakeServers()
    fake.down.add("embedder")
    seen = []
    original = fake.send

    async def recording_send(base_url, version, inputs, **kw):
        seen.extend(inputs)
        return await original(base_url, version, inputs, **kw)

    fake.send = recording_send
    output, _ = await make_engine(fake).run(WORKFLOWS["search"], {"query": "q", "documents": ["a", "b"]}, ctx())
    assert set(output) == {"results"} and len(output["results"]) == 2
    assert seen[-1] == {"query": "q", "documents": ["a", "b"]}  # the reranker embeds them itself


async def test_enrich_with_both_servers_down_fails_with_503_and_logs_both():
    fake, log = FakeServers(), RecordingLog()
    fake.down |= {"embedder", "classifier"}
    with pytest.raises(ServiceUnavailable, match="every step failed"):
        await make_engine(fake, log=log).run(WORKFLOWS["enrich"], {"text": "x"}, ctx())
    assert {(m, s) for m, _, _, s, _ in log.outcomes()} == {
        ("embedder", "error"), ("embedder", "skipped"), ("classifier", "error"), ("classifier", "skipped")}


async def test_classify_with_classifier_and_embedder_down_fails_and_logs_the_fallback_call():
    fake, log = FakeServers(), RecordingLog()
    fake.down |= {"embedder", "classifier"}
    with pytest.raises(ServiceUnavailable) as caught:
        await make_engine(fake, log=log).run(WORKFLOWS["classify"], {"text": "x"}, ctx())
    assert caught.value.detail.startswith("model 'classifier' has no healthy server")
    fallback = "its fallback builtin:nearest_label failed too: model 'embedder' has no healthy server"
    assert fallback in caught.value.detail
    assert log.outcomes() == [("classifier", "1", "stable", "error", "unavailable"),
                              ("embedder", "1", "fallback", "error", "unavailable")]


async def test_search_with_embedder_and_reranker_down_fails_saying_cosine_rank_lacks_embeddings():
    fake = FakeServers()
    fake.down |= {"embedder", "reranker"}
    with pytest.raises(ServiceUnavailable, match="cosine_rank orders by the upstream embeddings"):
        await make_engine(fake).run(WORKFLOWS["search"], {"query": "q", "documents": ["a"]}, ctx())


async def test_when_the_fallback_version_fails_too_the_error_names_both():
    fake = FakeServers()
    fake.broken["classifier", "2"] = RetryableCallError("answered 500", status=500)
    fake.broken["classifier", "1"] = EndpointUnreachable("unreachable")
    with pytest.raises(ServiceUnavailable) as caught:
        await make_engine(fake, states=CANARY_ONLY).call_step(
            step_id="classify", model="classifier", task="classify", instances=[{"text": "a"}], ctx=ctx(),
            timeout_ms=500, retry=RetryPolicy(attempts=1), fallback=("classifier", "stable"))
    assert "answered 500" in caught.value.detail
    fallback = "its fallback classifier@1 failed too: model 'classifier' has no healthy server"
    assert fallback in caught.value.detail
