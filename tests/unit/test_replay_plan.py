"""Replay planning from the request log (assets.replay_log) and the per-item comparison (assets.offline_replay)."""

from __future__ import annotations

import json

import pytest

from assets.canary_replay import compare_outputs
from assets.offline_replay import score_distance
from assets.replay_log import plan_items
from models.workflows import load_workflows

WORKFLOWS = load_workflows()


def step(model: str, version: str = "1", *, step_id: str | None = None, status: str = "ok", arm: str = "stable"):
    return {"step": step_id or model, "model": model, "version": version, "arm": arm, "status": status,
            "error_type": None, "cached": False}


def row(steps, inp, out, *, workflow=None, pii="keep", embeddings=None, rid="r1"):
    return {"request_id": rid, "tenant": "acme", "workflow": workflow, "steps": json.dumps(steps), "pii_policy": pii,
            "input": None if inp is None else json.dumps(inp), "output": None if out is None else json.dumps(out),
            "embeddings": embeddings, "latency_ms": 12.0}


def test_a_single_model_call_replays_each_instance_against_its_logged_prediction():
    r = row([step("classifier")], {"instances": [{"text": "a"}, {"text": "b"}]},
            {"predictions": [{"label": "x", "score": 0.9, "scores": {"x": 0.9, "y": 0.1}}, {"label": "y"}]})
    plan = plan_items([r], "classifier", "classify", "3", WORKFLOWS)
    assert [(i.input, i.answer["label"], i.version) for i in plan.items] == [
        ({"text": "a"}, "x", "1"), ({"text": "b"}, "y", "1")]
    assert plan.baseline_versions == ["1"] and not plan.skipped


def test_a_workflow_step_fed_by_request_fields_is_rebuilt_and_its_answer_read_through_the_output_mapping():
    r = row([step("embedder", step_id="embed"), step("classifier", "2", step_id="classify", arm="canary")],
            {"text": "rates rose"}, {"label": "finance", "scores": {"finance": 1.0}}, workflow="enrich",
            embeddings=[[0.6, 0.8]])
    emb = plan_items([r], "embedder", "embed", "3", WORKFLOWS)
    assert [(i.step, i.input, i.answer) for i in emb.items] == [("embed", {"text": "rates rose"},
                                                                 {"embedding": [0.6, 0.8]})]
    clf = plan_items([r], "classifier", "classify", "3", WORKFLOWS)
    assert clf.items[0].answer == {"label": "finance", "scores": {"finance": 1.0}} and clf.items[0].version == "2"


def test_what_cannot_be_replayed_honestly_is_skipped_with_its_reason():
    search = row([step("reranker", step_id="rerank")], {"query": "q", "documents": ["a", "b"]},
                 {"results": [{"index": 1, "document": "b", "score": 0.5}]}, workflow="search")
    rows = [
        row([step("classifier")], "sha256:abc", {"label": "x"}, pii="hash", rid="h"),
        row([step("classifier")], None, {"label": "x"}, pii="drop", rid="d"),
        row([step("classifier", status="error")], {"text": "a"}, None, rid="e"),
        row([step("classifier", arm="fallback")], {"text": "a"}, {"label": "x"}, rid="f"),
        row([step("classifier", "3")], {"text": "a"}, {"label": "x"}, rid="c"),
        row([step("embedder")], {"text": "a"}, None, embeddings=[[1.0]], rid="other-model"),
    ]
    plan = plan_items(rows, "classifier", "classify", "3", WORKFLOWS)
    assert plan.items == [] and plan.requests == 5
    assert dict(plan.skipped) == {
        "input not kept (pii policy hash)": 1, "input not kept (pii policy drop)": 1,
        "the call did not answer (status error)": 1, "answered by a fallback, not a version of the model": 1,
        "answered by the candidate itself": 1}
    reranks = plan_items([search], "reranker", "rerank", "3", WORKFLOWS)
    (reason,) = reranks.skipped
    assert "step 'rerank' of workflow 'search' takes upstream outputs" in reason


def test_compare_outputs_scores_agreement_against_the_logged_answers():
    base = [{"label": "x"}, {"label": "y"}, {"label": "x"}]
    rep = compare_outputs("classify", base, [{"label": "x"}, None, {"label": "y"}])
    assert rep.n == 3 and rep.agree == [True, False, False]
    emb = compare_outputs("embed", [{"embedding": [1.0, 0.0]}], [{"embedding": [0.0, 1.0]}])
    assert emb.cosines == [pytest.approx(0.0)]


def test_score_distance_per_task():
    assert score_distance("embed", {"embedding": [1.0, 0.0]}, {"embedding": [0.0, 0.0]}) == pytest.approx(1.0)
    assert score_distance("classify", {"label": "x", "scores": {"x": 0.8, "y": 0.2}},
                          {"label": "x", "scores": {"x": 0.6, "y": 0.4}}) == pytest.approx(0.2)
    assert score_distance("classify", {"label": "x", "scores": None}, {"label": "x", "scores": {"x": 1}}) is None
    ranked = {"results": [{"index": 0, "score": 0.9}, {"index": 1, "score": 0.1}]}
    assert score_distance("rerank", ranked, {"results": [{"index": 1, "score": 0.3}, {"index": 0, "score": 0.5}]}
                          ) == pytest.approx(0.3)
    assert score_distance("embed", {"embedding": [1.0]}, None) is None
