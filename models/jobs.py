"""Async jobs in Delta (`jobs`, `job_inputs`, `job_results`).

The gateway calls `submit_job`, `get_job` and `job_results_page`; the Dagster job asset calls
`load_job_inputs`, `update_job`, `write_job_results` and `forget_job_inputs`. Jobs survive restarts
because they are only ever in the lake.

A job needs its inputs verbatim to run, whatever the tenant's PII policy: given a `Privacy`, they are
stored sealed (Fernet, the home's key, kept outside the lake), the request hash is keyed, results
are stored as the policy allows (strings echoed from the input, error texts) and the sealed inputs
are deleted once the job has succeeded (its `requests` rows keep the input as the policy allows).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from lakehouse.sql import sql_literal
from models.errors import TandemModelError
from models.record import protect_output, with_vectors

if TYPE_CHECKING:
    from models.executor import BatchResult
    from models.pii import Privacy

__all__ = [
    "JOB_STATUSES",
    "JobConflictError",
    "forget_job_inputs",
    "get_job",
    "job_results_page",
    "load_job_inputs",
    "queued_jobs",
    "submit_job",
    "update_job",
    "write_job_results",
]


class JobConflictError(TandemModelError):
    """An idempotency key was reused with a different request."""


JOB_STATUSES = ("queued", "running", "succeeded", "failed")


class JobLake(Protocol):
    """The part of `lakehouse.Lake` the job helpers use."""

    def append(self, name: str, data: Any) -> int: ...

    def merge(self, name: str, data: Any, keys: Any = None) -> int: ...

    def insert_if_absent(self, name: str, data: Any, keys: Any = None) -> int: ...

    def replace_where(self, name: str, data: Any, predicate: str) -> int: ...

    def read(self, name: str, filter: Any = None, columns: Any = None) -> pa.Table: ...

    def sql(self, query: str, params: Any = None) -> pa.Table: ...

    def version(self, name: str) -> int | None: ...


def _now() -> datetime:
    return datetime.now(UTC)


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def submit_job(
    lake: JobLake,
    tenant: str,
    workflow: str,
    inputs: Sequence[Mapping[str, Any]],
    idempotency_key: str | None = None,
    *,
    clock: Callable[[], datetime] = _now,
    privacy: Privacy | None = None,
) -> dict[str, Any]:
    """Persist a job and its inputs (status `queued`) and return the job row.

    With an `idempotency_key`, the job id is derived from (tenant, key): the same key and request
    return the existing job, the same key with another request raises `JobConflictError`. Inputs
    are written before the job row, so whoever sees the job can read all of them.
    """
    if not inputs:
        raise ValueError("a job needs at least one input")
    request = _dumps({"workflow": workflow, "inputs": list(inputs)}).encode()
    request_hash = privacy.input_hash(request) if privacy else hashlib.sha256(request).hexdigest()
    seal = privacy.seal if privacy else (lambda text: text)
    if idempotency_key:
        digest = hashlib.sha256(f"{tenant}\x00{idempotency_key}".encode()).hexdigest()
        job_id = f"job_{digest[:24]}"
        existing = get_job(lake, job_id)
        if existing is not None:
            return _same_request_or_refuse(existing, request_hash, idempotency_key)
    else:
        job_id = f"job_{uuid.uuid4().hex[:24]}"
    now = clock()
    lake.insert_if_absent(
        "job_inputs",
        [{"job_id": job_id, "idx": i, "input": seal(_dumps(dict(x)))} for i, x in enumerate(inputs)],
        keys=["job_id", "idx"],
    )
    row = {
        "job_id": job_id, "tenant": tenant, "workflow": workflow, "status": "queued",
        "n_inputs": len(inputs), "n_done": 0, "attempts": 0, "idempotency_key": idempotency_key,
        "request_hash": request_hash, "run_id": None, "error": None, "submitted_at": now, "updated_at": now,
    }
    if not lake.insert_if_absent("jobs", [row], keys=["job_id"]):
        # A concurrent submit with the same key won; answer with its job.
        return _same_request_or_refuse(get_job(lake, job_id), request_hash, idempotency_key)
    return row


def _same_request_or_refuse(job: dict | None, request_hash: str, key: str | None) -> dict[str, Any]:
    if job is None:  # pragma: no cover - inserted by someone else, so it exists
        raise JobConflictError(f"job for idempotency key {key!r} vanished while submitting")
    if job["request_hash"] != request_hash:
        raise JobConflictError(
            f"idempotency key {key!r} was already used for job {job['job_id']} with a different request; "
            "use a new key for a new request"
        )
    return job


def get_job(lake: JobLake, job_id: str) -> dict[str, Any] | None:
    """The job's row (status, n_done, attempts, error, ...) or None."""
    rows = lake.read("jobs", filter=pc.field("job_id") == job_id).to_pylist()
    return rows[0] if rows else None


def job_results_page(lake: JobLake, job_id: str, offset: int = 0, limit: int = 100) -> list[dict[str, Any]]:
    """Results `offset`..`offset+limit` of a job, by input index: idx, status, output, error, model_versions."""
    if offset < 0 or limit < 1:
        raise ValueError(f"offset must be >= 0 and limit >= 1, got offset={offset}, limit={limit}")
    if lake.version("job_results") is None:
        return []
    rows = lake.sql(
        "SELECT idx, status, output, error, model_versions FROM job_results "
        "WHERE job_id = ? ORDER BY idx LIMIT ? OFFSET ?",
        [job_id, limit, offset],
    ).to_pylist()
    for r in rows:
        r["output"] = json.loads(r["output"]) if r["output"] else None
        r["model_versions"] = json.loads(r["model_versions"]) if r["model_versions"] else {}
    return rows


def queued_jobs(lake: JobLake) -> list[dict[str, Any]]:
    """Jobs waiting for a run, oldest first."""
    rows = lake.read("jobs", filter=pc.field("status") == "queued").to_pylist()
    return sorted(rows, key=lambda r: (r["submitted_at"], r["job_id"]))


def load_job_inputs(lake: JobLake, job_id: str, privacy: Privacy | None = None) -> list[dict[str, Any]]:
    """A job's inputs in submission order (unsealed with `privacy`; inputs stored plain read as they are)."""
    rows = lake.read("job_inputs", filter=pc.field("job_id") == job_id).to_pylist()

    def opened(text: str) -> str:
        return privacy.unseal(text) if privacy is not None and not text.startswith("{") else text

    return [json.loads(opened(r["input"])) for r in sorted(rows, key=lambda r: r["idx"])]


def forget_job_inputs(lake: Any, job_id: str) -> int:
    """Delete a finished job's stored inputs; returns how many rows went."""
    return lake.delete("job_inputs", f"job_id = {sql_literal(job_id)}")


def update_job(
    lake: JobLake, job_id: str, *, clock: Callable[[], datetime] = _now, **changes: Any
) -> dict[str, Any]:
    """Merge `changes` (status, n_done, attempts, run_id, error) into the job's row; returns the row."""
    job = get_job(lake, job_id)
    if job is None:
        raise KeyError(f"no job {job_id!r}")
    unknown = set(changes) - set(job)
    if unknown:
        raise ValueError(f"jobs has no column(s) {sorted(unknown)}")
    if changes.get("status", job["status"]) not in JOB_STATUSES:
        raise ValueError(f"job status must be one of {JOB_STATUSES}, got {changes['status']!r}")
    row = {**job, **changes, "updated_at": clock()}
    lake.merge("jobs", [row], keys=["job_id"])
    return row


def write_job_results(
    lake: JobLake, job_id: str, result: BatchResult, *, clock: Callable[[], datetime] = _now,
    inputs: Sequence[Mapping[str, Any]] | None = None, policy: str = "keep", privacy: Privacy | None = None,
) -> int:
    """Replace the job's results with `result`'s rows (idempotent per job); returns how many were written.

    With `privacy` (and the job's `inputs`), outputs and errors are stored as the tenant's PII `policy`
    allows: a string the item's input holds is stored in the policy's form, an error text redacted.
    """
    now = clock()
    rows = []
    for i, r in enumerate(result.rows):
        output, error = r.output, r.error
        if privacy is not None and policy != "keep":
            if output is not None:
                output = with_vectors(*protect_output(output, inputs[i] if inputs else None, policy, privacy))
            error = privacy.scrub(policy, error)
        rows.append({"job_id": job_id, "idx": i, "output": _dumps(output) if output is not None else None,
                     "model_versions": _dumps(r.model_versions), "status": r.status, "error": error,
                     "finished_at": now})
    lake.replace_where("job_results", rows, f"job_id = {sql_literal(job_id)}")
    return len(rows)

