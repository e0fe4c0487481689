"""The batch executor: one workflow spec run in-process over many rows, plus async-job persistence.

`run_workflow_batch` walks `spec.levels()` exactly like the online engine, with the same
`step_instances` / `assemble_output` helpers, but instead of one request at a time it gathers
every row's instances of a step into model batches, calls `predict_batch` once per batch and
scatters the outputs back to their rows::

    level 0:  rows ──step_instances──▶ [in, in, in, ...] ──predict_batch (≤ batch_size)──▶ outputs ─┐
    level 1:  rows (contexts now hold level-0 outputs) ──▶ ...                                     ◀┘
    end:      assemble_output(spec, context) per row

Failures stay with the rows they belong to. A batch that raises is retried (the step's retry
policy), then split in halves until the failing instances are isolated; what still fails goes to
the step's fallback (another version or model, or a built-in of `models.fallbacks`; the row is
then `degraded`, as online), then an optional step is skipped (row `degraded`) and a required
step fails the row (`error` with the message). A row whose every step was skipped has no answer
and is an `error`. Nothing is dropped: every input row gets a `RowResult`, and when every row
fails the whole call raises `BatchFailedError`.

The second half of the module keeps async jobs in Delta (`jobs`, `job_inputs`, `job_results`):
the gateway calls `submit_job`, `get_job` and `job_results_page`; the Dagster job asset calls
`load_job_inputs`, `update_job` and `write_job_results`. Jobs survive restarts because they are
only ever in the lake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ValidationError

from lakehouse.sql import sql_literal
from models import fallbacks
from models.errors import SchemaError, TandemModelError, WorkflowError
from models.ops import ModelOp, check_outputs
from models.schemas import EmbedIn
from models.workflows import StepSpec, WorkflowSpec, assemble_output, step_instances

__all__ = [
    "JOB_STATUSES",
    "BatchFailedError",
    "BatchResult",
    "JobConflictError",
    "OpResolver",
    "RowResult",
    "get_job",
    "job_results_page",
    "load_job_inputs",
    "queued_jobs",
    "run_workflow_batch",
    "submit_job",
    "update_job",
    "write_job_results",
]

logger = logging.getLogger(__name__)

OpResolver = Callable[[str, str], ModelOp]
"""`resolve_op(model, version) -> ModelOp`, e.g. a per-process cache over the artifact store."""


class BatchFailedError(TandemModelError):
    """Every row of a batch failed; the message carries the first error."""


class JobConflictError(TandemModelError):
    """An idempotency key was reused with a different request."""


@dataclass(frozen=True)
class RowResult:
    """One input row's outcome: `ok`, `degraded` (an optional step was skipped or a fallback
    answered) or `error`."""

    output: dict[str, Any] | None
    error: str | None = None
    status: str = "ok"
    model_versions: dict[str, str] = field(default_factory=dict)  # step id -> "model@version"
    skipped: tuple[str, ...] = ()
    fallbacks: tuple[str, ...] = ()  # steps a fallback answered


@dataclass(frozen=True)
class BatchResult:
    """Every row's result, in input order, with the versions used and the throughput."""

    rows: list[RowResult]
    versions: dict[str, str]  # step id -> "model@version" of the primary call
    elapsed_s: float
    model_calls: int

    @property
    def rows_per_s(self) -> float:
        return len(self.rows) / self.elapsed_s if self.elapsed_s > 0 else float(len(self.rows))

    def count(self, status: str) -> int:
        return sum(1 for r in self.rows if r.status == status)


class _Row:
    """Mutable per-row state while the batch runs."""

    __slots__ = ("context", "error", "fallbacks", "skip_errors", "skipped", "versions")

    def __init__(self, context: dict[str, Any] | None, error: str | None):
        self.context = context
        self.error = error
        self.skipped: list[str] = []
        self.skip_errors: list[str] = []
        self.fallbacks: list[str] = []
        self.versions: dict[str, str] = {}


def run_workflow_batch(
    spec: WorkflowSpec,
    rows: Sequence[Mapping[str, Any]],
    resolve_op: OpResolver,
    versions: Mapping[str, str],
    *,
    batch_size: int = 64,
    batch_sizes: Mapping[str, int] | None = None,
    clock: Callable[[], float] = time.perf_counter,
    sleep: Callable[[float], None] = time.sleep,
) -> BatchResult:
    """Run `spec` over `rows` (request payloads) in-process; see the module docstring.

    `versions` maps every model the spec calls to the version to use (e.g. the registry's stable
    versions); `batch_sizes` overrides `batch_size` per model. Raises `WorkflowError` when a model
    has no version and `BatchFailedError` when every row failed.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    missing = sorted(m for m in {s.model for s in spec.steps} if m not in versions)
    if missing:
        raise WorkflowError(
            f"workflow {spec.name!r} needs a version for model(s) {', '.join(missing)}; "
            f"got versions for: {', '.join(sorted(versions)) or 'none'}"
        )
    started = clock()
    runner = _Runner(spec, resolve_op, versions, batch_size, dict(batch_sizes or {}), sleep)
    state = [runner.start_row(row) for row in rows]
    for level in spec.levels():
        for step in level:
            runner.run_step(step, state)
    results = [runner.finish_row(r) for r in state]
    elapsed = clock() - started
    if results and all(r.status == "error" for r in results):
        raise BatchFailedError(
            f"all {len(results)} rows of workflow {spec.name!r} failed; first error: {results[0].error}"
        )
    primary = {s.id: f"{s.model}@{versions[s.model]}" for s in spec.steps}
    return BatchResult(results, primary, elapsed, runner.calls)


class _Runner:
    def __init__(self, spec, resolve_op, versions, batch_size, batch_sizes, sleep):
        self.spec = spec
        self.resolve_op = resolve_op
        self.versions = versions
        self.batch_size = batch_size
        self.batch_sizes = batch_sizes
        self.sleep = sleep
        self.calls = 0
        self._input_model = spec.input_model()

    def start_row(self, row: Mapping[str, Any]) -> _Row:
        try:
            payload = self._input_model.model_validate(dict(row)).model_dump()
        except ValidationError as exc:
            return _Row(None, f"invalid input: {_brief(exc)}")
        return _Row({"input": payload}, None)

    def finish_row(self, row: _Row) -> RowResult:
        if row.error is None and len(row.skipped) == len(self.spec.steps):
            row.error = f"no answer: every step failed ({'; '.join(row.skip_errors)})"
        if row.error is not None:
            return RowResult(None, row.error, "error", dict(row.versions), tuple(row.skipped),
                             tuple(row.fallbacks))
        output = assemble_output(self.spec, row.context)
        status = "degraded" if row.skipped or row.fallbacks else "ok"
        return RowResult(output, None, status, dict(row.versions), tuple(row.skipped), tuple(row.fallbacks))

    def run_step(self, step: StepSpec, rows: list[_Row]) -> None:
        # (row, instance position, validated input) for every instance of every live row.
        items: list[tuple[int, int, BaseModel]] = []
        counts: dict[int, int] = {}
        failures: dict[int, str] = {}
        for i, row in enumerate(rows):
            if row.error is not None:
                continue
            payloads = step_instances(step, row.context)
            if payloads is None:
                failures[i] = "a step it needs was skipped"
                continue
            try:
                validated = [step.contract.input.model_validate(p) for p in payloads]
            except ValidationError as exc:
                failures[i] = f"invalid {step.task} input: {_brief(exc)}"
                continue
            counts[i] = len(validated)
            items.extend((i, k, inp) for k, inp in enumerate(validated))

        outputs: dict[tuple[int, int], dict] = {}
        pending = items
        model, version = step.model, self.versions[step.model]
        targets = [(model, version)]
        if step.fallback is not None and step.fallback.builtin is None:
            fb_model = step.fallback.model or step.model
            fb_version = step.fallback.version or self.versions.get(fb_model)
            if fb_version is not None and (fb_model, fb_version) != (model, version):
                targets.append((fb_model, fb_version))
        errors: dict[tuple[int, int], str] = {}
        for t_model, t_version in targets:
            if not pending:
                break
            got = self._predict(step, t_model, t_version, [inp for _, _, inp in pending])
            still = []
            for (i, k, inp), (out, err) in zip(pending, got):
                if err is None:
                    outputs[(i, k)] = out
                    rows[i].versions.setdefault(step.id, f"{t_model}@{t_version}")
                    if (t_model, t_version) != (model, version) and step.id not in rows[i].fallbacks:
                        rows[i].fallbacks.append(step.id)
                else:
                    errors[(i, k)] = _join(errors.get((i, k)), f"{t_model}@{t_version}: {err}")
                    still.append((i, k, inp))
            pending = still
        if pending and step.fallback is not None and step.fallback.builtin is not None:
            label, got = self._builtin(step, [inp for _, _, inp in pending])
            still = []
            for (i, k, inp), (out, err) in zip(pending, got):
                if err is None:
                    outputs[(i, k)] = out
                    rows[i].versions.setdefault(step.id, label)
                    if step.id not in rows[i].fallbacks:
                        rows[i].fallbacks.append(step.id)
                else:
                    errors[(i, k)] = _join(errors.get((i, k)), f"fallback {err}")
                    still.append((i, k, inp))
            pending = still
        for i, _k, _ in pending:
            failures.setdefault(i, errors[(i, _k)])

        for i, row in enumerate(rows):
            if row.error is not None:
                continue
            if i in failures:
                row.versions.pop(step.id, None)
                if step.id in row.fallbacks:  # some of its instances had a fallback answer, not all
                    row.fallbacks.remove(step.id)
                if step.optional:
                    row.context[step.id] = None
                    row.skipped.append(step.id)
                    row.skip_errors.append(f"{step.id}: {failures[i]}")
                else:
                    row.error = f"step {step.id!r} failed: {failures[i]}"
                continue
            outs = [outputs[(i, k)] for k in range(counts[i])]
            row.context[step.id] = outs if step.for_each else outs[0]

    def _builtin(self, step: StepSpec, inputs: list[BaseModel]):
        """A built-in fallback's answers: ("model@version" label, [(output, None) or (None, error)])."""
        fb = step.fallback
        name = f"builtin:{fb.builtin}"
        instances = [inp.model_dump() for inp in inputs]
        if fb.model is None:
            return name, [_answer(name, fb.builtin, inst) for inst in instances]
        version = fb.version or self.versions.get(fb.model)
        if version is None:
            return name, [(None, f"{name}: no version of {fb.model!r} to embed with")] * len(inputs)
        label = f"{name}@{fb.model}@{version}"
        prompts = fallbacks.label_prompts(fb.labels or [])
        wanted = [fallbacks.texts_to_embed(fb.builtin, inst) for inst in instances]
        texts = [*prompts.values(), *(t for ts in wanted for t in ts)]
        got = self._predict(step, fb.model, version, [EmbedIn(text=t) for t in texts])
        prompt_errors = [err for _, err in got[: len(prompts)] if err is not None]
        if prompt_errors:
            return label, [(None, f"{label}: {prompt_errors[0]}")] * len(inputs)
        prompt_vectors = {lab: out["embedding"] for lab, (out, _) in zip(prompts, got)}
        results, cursor = [], len(prompts)
        for inst, ts in zip(instances, wanted):
            mine = got[cursor : cursor + len(ts)]
            cursor += len(ts)
            bad = [err for _, err in mine if err is not None]
            if bad:
                results.append((None, f"{label}: {bad[0]}"))
            else:
                vectors = [out["embedding"] for out, _ in mine]
                results.append(_answer(label, fb.builtin, inst, vectors, prompt_vectors))
        return label, results

    def _predict(self, step: StepSpec, model: str, version: str, inputs: list[BaseModel]):
        """(output dict, None) or (None, error message) per input, in order."""
        if not inputs:
            return []
        try:
            op = self.resolve_op(model, version)
        except Exception as exc:  # noqa: BLE001 - a load failure fails these rows, recorded, never hidden
            return [(None, f"could not load the model: {_describe(exc)}")] * len(inputs)
        size = self.batch_sizes.get(model, self.batch_size)
        # Bucket by length: a batch is padded to its longest input, so batches of similar lengths waste
        # far less compute than batches in arrival order. Outputs go back to the input order.
        order = sorted(range(len(inputs)), key=_lengths(op, inputs).__getitem__)
        out: list[tuple[dict | None, str | None]] = [(None, None)] * len(inputs)
        for start in range(0, len(order), size):
            idx = order[start : start + size]
            for i, result in zip(idx, self._call(op, [inputs[i] for i in idx], step.retry.attempts, step)):
                out[i] = result
        return out

    def _call(self, op: ModelOp, chunk: list[BaseModel], attempts: int, step: StepSpec):
        last: BaseException | None = None
        for attempt in range(1, attempts + 1):
            if attempt > 1:
                self.sleep(step.retry.backoff_before(attempt) / 1000)
            self.calls += 1
            try:
                outs = check_outputs(op, chunk, op.predict_batch(chunk))
                return [(o.model_dump() if isinstance(o, BaseModel) else dict(o), None) for o in outs]
            except Exception as exc:  # noqa: BLE001 - model boundary: the error goes to the rows it hit
                last = exc
        if len(chunk) == 1:
            return [(None, _describe(last))]
        # Split to isolate the inputs that fail from those that merely shared their batch.
        mid = len(chunk) // 2
        return self._call(op, chunk[:mid], 1, step) + self._call(op, chunk[mid:], 1, step)


def _answer(label: str, builtin: str, instance: dict, vectors=(), prompts=None):
    """(the built-in's output, None) or (None, why it cannot answer) for one instance."""
    try:
        return fallbacks.answer(builtin, instance, vectors, prompts), None
    except SchemaError as exc:
        return None, f"{label}: {exc}"


def _join(first: str | None, then: str) -> str:
    return then if first is None else f"{first}; then {then}"


def _lengths(op: ModelOp, inputs: list[BaseModel]) -> list[int]:
    """The op's own padding lengths (`input_lengths`, e.g. tokens) when it has them, else text lengths."""
    measure = getattr(op, "input_lengths", None)
    if measure is not None:
        try:
            lengths = list(measure(inputs))
        except Exception:
            logger.warning("%s.input_lengths failed; batching by text length", type(op).__name__, exc_info=True)
        else:
            if len(lengths) == len(inputs):
                return lengths
    return [_text_length(x) for x in inputs]


def _text_length(inp: BaseModel) -> int:
    """Characters of text an input carries (its str fields and lists of str): the padding-relevant size."""
    total = 0
    for value in inp.__dict__.values():
        if isinstance(value, str):
            total += len(value)
        elif isinstance(value, list):
            total += sum(len(v) for v in value if isinstance(v, str))
    return total


def _describe(exc: BaseException | None) -> str:
    text = str(exc).strip().splitlines()[0] if exc is not None and str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _brief(exc: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'input'}: {e['msg']}" for e in exc.errors(include_url=False)
    )


# --- async jobs in Delta ------------------------------------------------------------------------

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
) -> dict[str, Any]:
    """Persist a job and its inputs (status `queued`) and return the job row.

    With an `idempotency_key`, the job id is derived from (tenant, key): the same key and request
    return the existing job, the same key with another request raises `JobConflictError`. Inputs
    are written before the job row, so whoever sees the job can read all of them.
    """
    if not inputs:
        raise ValueError("a job needs at least one input")
    request_hash = hashlib.sha256(_dumps({"workflow": workflow, "inputs": list(inputs)}).encode()).hexdigest()
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
        [{"job_id": job_id, "idx": i, "input": _dumps(dict(x))} for i, x in enumerate(inputs)],
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


def load_job_inputs(lake: JobLake, job_id: str) -> list[dict[str, Any]]:
    """A job's inputs in submission order."""
    rows = lake.read("job_inputs", filter=pc.field("job_id") == job_id).to_pylist()
    return [json.loads(r["input"]) for r in sorted(rows, key=lambda r: r["idx"])]


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
    lake: JobLake, job_id: str, result: BatchResult, *, clock: Callable[[], datetime] = _now
) -> int:
    """Replace the job's results with `result`'s rows (idempotent per job); returns how many were written."""
    now = clock()
    rows = [
        {"job_id": job_id, "idx": i, "output": _dumps(r.output) if r.output is not None else None,
         "model_versions": _dumps(r.model_versions), "status": r.status, "error": r.error, "finished_at": now}
        for i, r in enumerate(result.rows)
    ]
    lake.replace_where("job_results", rows, f"job_id = {sql_literal(job_id)}")
    return len(rows)
