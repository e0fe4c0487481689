"""Async-job persistence helpers (what the gateway calls) over a real Delta lake in tmp_path."""

from __future__ import annotations

import pytest

from lakehouse import Lake
from models.executor import BatchResult, RowResult
from models.jobs import (
    JobConflictError,
    get_job,
    job_results_page,
    load_job_inputs,
    queued_jobs,
    submit_job,
    update_job,
    write_job_results,
)

INPUTS = [{"text": f"input {i}"} for i in range(5)]


@pytest.fixture
def lake(tmp_path):
    return Lake(str(tmp_path / "lake"))


def test_a_submitted_job_is_queued_with_its_inputs_in_order(lake):
    job = submit_job(lake, "acme", "classify", INPUTS)

    assert job["status"] == "queued" and job["n_inputs"] == 5 and job["attempts"] == 0
    assert job["job_id"].startswith("job_")
    assert get_job(lake, job["job_id"])["tenant"] == "acme"
    assert load_job_inputs(lake, job["job_id"]) == INPUTS
    assert [j["job_id"] for j in queued_jobs(lake)] == [job["job_id"]]


def test_a_job_survives_a_new_lake_handle_as_after_a_gateway_restart(lake, tmp_path):
    job = submit_job(lake, "acme", "classify", INPUTS)
    assert get_job(Lake(str(tmp_path / "lake")), job["job_id"])["status"] == "queued"


def test_the_same_idempotency_key_returns_the_same_job_and_a_different_request_conflicts(lake):
    first = submit_job(lake, "acme", "classify", INPUTS, idempotency_key="k1")
    again = submit_job(lake, "acme", "classify", INPUTS, idempotency_key="k1")
    other_tenant = submit_job(lake, "zeta", "classify", INPUTS, idempotency_key="k1")

    assert again["job_id"] == first["job_id"] != other_tenant["job_id"]
    assert lake.read("job_inputs").num_rows == 10  # not 15: the replay wrote nothing
    with pytest.raises(JobConflictError, match="already used for job"):
        submit_job(lake, "acme", "classify", INPUTS[:2], idempotency_key="k1")


def test_unknown_jobs_are_none_and_empty_jobs_are_refused(lake):
    assert get_job(lake, "job_missing") is None
    assert job_results_page(lake, "job_missing", 0, 10) == []
    with pytest.raises(ValueError, match="at least one input"):
        submit_job(lake, "acme", "classify", [])


def test_results_are_paged_by_input_index_and_rewritten_idempotently(lake):
    job = submit_job(lake, "acme", "classify", INPUTS)
    rows = [RowResult({"label": f"l{i}"}, None, "ok", {"classify": "classifier@1"}) for i in range(4)]
    rows.append(RowResult(None, "step 'classify' failed: boom", "error"))
    result = BatchResult(rows, {"classify": "classifier@1"}, 0.1, 1)
    write_job_results(lake, job["job_id"], result)
    write_job_results(lake, job["job_id"], result)  # a retried run replaces, never duplicates

    page = job_results_page(lake, job["job_id"], offset=2, limit=2)
    assert [r["idx"] for r in page] == [2, 3]
    assert page[0]["output"] == {"label": "l2"} and page[0]["model_versions"] == {"classify": "classifier@1"}
    last = job_results_page(lake, job["job_id"], offset=4, limit=10)
    assert last == [{"idx": 4, "status": "error", "output": None, "error": "step 'classify' failed: boom",
                     "model_versions": {}}]
    assert lake.read("job_results").num_rows == 5


def test_update_job_merges_status_and_refuses_unknown_states(lake):
    job = submit_job(lake, "acme", "classify", INPUTS)
    update_job(lake, job["job_id"], status="succeeded", n_done=5, attempts=1)

    stored = get_job(lake, job["job_id"])
    assert (stored["status"], stored["n_done"], stored["attempts"]) == ("succeeded", 5, 1)
    assert stored["updated_at"] >= stored["submitted_at"]
    assert queued_jobs(lake) == []
    with pytest.raises(ValueError, match="job status must be one of"):
        update_job(lake, job["job_id"], status="exploded")
