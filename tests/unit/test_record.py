"""Building `requests` rows: outputs split into JSON and float32 vectors, inputs stored per PII policy,
statuses, job items; and reading them back (API form and `tandem requests show`)."""

from __future__ import annotations

import json

import orjson
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from lakehouse import Lake
from lakehouse._coerce import coerce
from lakehouse.catalog import get_table
from models.executor import BatchResult, RowResult
from models.pii import Privacy
from models.record import job_item_rows, public_record, read_record, split_output
from online.gateway.record import RequestNote, build_row, problem_type_of
from online.gateway.steps import StepReport

PII = "mail jane@example.com from 10.0.0.7"


class _Body(BaseModel):
    query: str
    documents: list[str]


@pytest.fixture
def privacy():
    return Privacy(b"k" * 32, b"ZmVybmV0LWtleS1mb3ItdW5pdC10ZXN0cy0zMmJ5dGU=")


def _note(policy: str, *, status: int = 200, result=None, reports=None) -> RequestNote:
    # As the routes leave it: the body as validated and dumped, the answer as the bytes sent.
    note = RequestNote(body=_Body(query=PII, documents=[PII, "other"]).model_dump(exclude_none=True),
                       result=None if result is None else orjson.dumps(result), reports=reports)
    note.request_id, note.tenant, note.pii, note.route, note.http_status = "r1", "acme", policy, "/v1/rerank", status
    return note


RERANK = {"id": "r1", "model": "reranker@1", "metadata": {"x": 1},
          "results": [{"index": 0, "relevance_score": 0.9, "document": {"text": PII}},
                      {"index": 1, "relevance_score": 0.1, "document": {"text": "other"}}]}


def test_split_output_moves_vectors_out_and_leaves_metadata_to_the_steps():
    out, vectors = split_output({"data": [{"embedding": [0.5, 1.0]}, {"embedding": "AAAAPwAAgD8="}],
                                 "metadata": {"steps": []}}, set(), str)
    assert out == {"data": [{"embedding": "$embeddings[0]"}, {"embedding": "$embeddings[1]"}]}
    assert vectors == [[0.5, 1.0], [0.5, 1.0]]  # the second one was base64 float32


@pytest.mark.parametrize(("policy", "stored_query"), [
    ("keep", PII), ("redact", "mail <EMAIL> from <IP>"), ("drop", None)])
def test_a_row_stores_input_and_echoed_output_as_the_policy_allows(privacy, policy, stored_query):
    row = build_row(_note(policy, result=RERANK, reports=[StepReport("rerank", "reranker", "1", "stable")]),
                    privacy)
    coerce(get_table("requests"), [row])  # the row fits the catalog schema
    stored = json.loads(row["input"]) if row["input"] else None
    assert (stored["query"] if stored else None) == stored_query
    echoed = json.loads(row["output"])["results"][0]["document"]["text"]
    assert echoed == stored_query
    # every echoed input string is stored as inputs are: "other" has no PII to redact, drop stores none
    assert json.loads(row["output"])["results"][1]["document"]["text"] == (None if policy == "drop" else "other")
    assert "metadata" not in json.loads(row["output"])
    assert (row["status"], row["pii_policy"], row["kind"]) == ("ok", policy, "sync")
    assert row["input_hash"] == build_row(_note("drop"), privacy)["input_hash"]  # keyed hash of the raw input


def test_hash_policy_stores_keyed_hashes(privacy):
    row = build_row(_note("hash", result=RERANK), privacy)
    assert "jane" not in row["input"] + row["output"]
    assert json.loads(row["input"])["query"] == json.loads(row["output"])["results"][0]["document"]["text"]


def test_degraded_and_error_statuses(privacy):
    degraded = [StepReport("c", "builtin:nearest_label", None, "fallback", status="fallback", degraded=True)]
    assert build_row(_note("keep", result={"output": {}}, reports=degraded), privacy)["status"] == "degraded"
    err = _note("keep", status=503)
    err.problem_type = problem_type_of(b'{"type":"urn:tandem:problem:service-unavailable","status":503}')
    row = build_row(err, privacy)
    assert (row["status"], row["http_status"], row["problem_type"], row["output"]) == (
        "error", 503, "urn:tandem:problem:service-unavailable", None)
    assert problem_type_of(b"not json") == "unknown"


def test_job_items_become_rows_with_their_vectors(privacy):
    job = {"job_id": "job_1", "tenant": "acme", "workflow": "enrich"}
    result = BatchResult(rows=[
        RowResult({"embedding": [0.25, 0.5], "label": "tech"}, model_versions={"embed": "embedder@1"}),
        RowResult(None, error=f"failed on {PII}", status="error"),
    ], versions={}, elapsed_s=1.0, model_calls=1)
    rows = job_item_rows(job, [{"text": PII}, {"text": "x"}], result, "redact", privacy)
    coerce(get_table("requests"), rows)
    assert [r["request_id"] for r in rows] == ["job_1:0", "job_1:1"]
    assert rows[0]["embeddings"] == [[0.25, 0.5]] and json.loads(rows[0]["output"])["label"] == "tech"
    assert json.loads(rows[0]["input"]) == {"text": "mail <EMAIL> from <IP>"}
    assert json.loads(rows[0]["steps"]) == [{"step": "embed", "model": "embedder", "version": "1", "status": "ok"}]
    assert (rows[1]["status"], rows[1]["output"], rows[1]["kind"]) == ("error", None, "job_item")


def test_read_back_is_tenant_scoped_and_puts_vectors_back(tmp_path, privacy, monkeypatch):
    lake = Lake(str(tmp_path / "lake"))
    job = {"job_id": "job_1", "tenant": "acme", "workflow": "enrich"}
    result = BatchResult(rows=[RowResult({"embedding": [0.25] * 16, "label": "tech"},
                                         model_versions={"embed": "embedder@1"})],
                         versions={}, elapsed_s=1.0, model_calls=1)
    lake.append("requests", job_item_rows(job, [{"text": PII}], result, "redact", privacy))
    assert read_record(lake, "other", "job_1:0") is None
    rec = public_record(read_record(lake, "acme", "job_1:0"))
    assert rec["output"] == {"embedding": [0.25] * 16, "label": "tech"}

    from orchestration.cli import app

    monkeypatch.setenv("TANDEM_HOME", str(tmp_path))
    shown = CliRunner().invoke(app, ["requests", "show", "job_1:0"])
    assert shown.exit_code == 0, shown.output
    assert "<16 floats: 0.2500, 0.2500" in shown.output and "mail <EMAIL> from <IP>" in shown.output
    full = CliRunner().invoke(app, ["requests", "show", "job_1:0", "--tenant", "acme", "--json"])
    assert json.loads(full.output)["output"]["embedding"] == [0.25] * 16
    missing = CliRunner().invoke(app, ["requests", "show", "job_1:0", "--tenant", "other"])
    assert missing.exit_code == 1 and "no request" in missing.output


def test_the_recorder_answers_from_its_buffer_then_from_the_lake(tmp_path, privacy):
    import asyncio

    from online.gateway.record import RequestRecorder

    lake = Lake(str(tmp_path / "lake"))
    recorder = RequestRecorder(lake, privacy, max_rows=10, flush_interval_s=60)

    async def scenario():
        recorder.finish(_note("redact", result=RERANK), request_id="r1", tenant="acme", pii="redact",
                        route="/v1/rerank", trace_id="t", http_status=200)
        before = recorder.get("acme", "r1")
        assert recorder.get("other", "r1") is None and lake.version("requests") is None
        assert await recorder.sink.flush()
        return before, recorder.get("acme", "r1")

    before, after = asyncio.run(scenario())
    assert before == after
    assert after["input"]["query"] == "mail <EMAIL> from <IP>" and after["output"]["results"][0]["index"] == 0
    assert recorder.get("other", "r1") is None
