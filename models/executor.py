"""The batch executor: one workflow spec run in-process over many rows.

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

Async jobs (their records and results in Delta) are in `models.jobs`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from models import fallbacks
from models.errors import SchemaError, TandemModelError, WorkflowError
from models.ops import ModelOp, check_outputs
from models.schemas import EmbedIn
from models.workflows import StepSpec, WorkflowSpec, assemble_output, step_instances

__all__ = [
    "BatchFailedError",
    "BatchResult",
    "OpResolver",
    "RowResult",
    "run_workflow_batch",
]

logger = logging.getLogger(__name__)

OpResolver = Callable[[str, str], ModelOp]
"""`resolve_op(model, version) -> ModelOp`, e.g. a per-process cache over the artifact store."""


class BatchFailedError(TandemModelError):
    """Every row of a batch failed; the message carries the first error."""


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
