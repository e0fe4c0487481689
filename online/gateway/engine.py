"""The online workflow engine: runs a workflow DAG over HTTP calls to the model servers.

Each step starts as soon as its dependencies finish, so independent branches overlap.
One request deadline bounds everything; each attempt's timeout is the smaller of the
step's timeout and what is left of the deadline. Retryable failures are retried with
exponential backoff and full jitter, never past the deadline; a breaker per endpoint
fails fast while a server is down; then the step's fallback runs, or an optional step
is skipped and the response marked degraded.

Every model call leaves rows in the prediction log, one per instance, failures included:
`ok` (answered), `error` (failed; `error_type` says how, on the version and arm it was routed to),
`fallback` (the fallback's answer, after the primary's `error` rows) and `skipped` (an optional
step gave up). So the canary guard sees each arm's real error rate. A built-in fallback's rows
name it as the model (`builtin:cosine_rank`), so they never count as a model version's outputs.

A run in which every step was skipped answered nothing: it fails (503) instead of returning
an all-null output.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson

from models import fallbacks
from models.errors import SchemaError
from models.workflows import Fallback, RetryPolicy, StepSpec, WorkflowSpec, assemble_output, step_instances
from online.gateway.breaker import BreakerBoard
from online.gateway.cache import PredictionCache, content_hash
from online.gateway.client import (
    EndpointUnreachable,
    ModelCallError,
    ModelClient,
    RejectedCall,
    RetryableCallError,
)
from online.gateway.logsink import PredictionLog
from online.gateway.metrics import GatewayMetrics
from online.gateway.problems import (
    DeadlineExceeded,
    GatewayError,
    NotFound,
    ServiceUnavailable,
)
from online.gateway.routing import Route, Router
from online.gateway.steps import (
    RequestContext,
    StepReport,
    both_failed,
    call_error_type,
    first_gateway_error,
    log_facts,
    rejected_error,
    unavailable_error,
)
from online.gateway.tracing import child_traceparent


class _StepFailed(Exception):
    def __init__(self, error: GatewayError, attempts: int, error_type: str):
        super().__init__(error.detail)
        self.error = error
        self.attempts = attempts
        self.error_type = error_type  # the `error_type` column: timeout | upstream_error | unavailable | ...


class WorkflowEngine:
    """Runs workflow specs against model servers; shared by every request of one gateway."""

    def __init__(
        self,
        *,
        client: ModelClient,
        servers: Callable[[], Mapping[str, str]],
        replicas: Callable[[], Mapping[str, list[str]]] | None = None,
        serves: Callable[[str, str], bool] | None = None,
        states: Callable[[], Mapping[str, Any]],
        router: Router,
        versions: Callable[[], Mapping[str, set[str]]] | None = None,
        cache: PredictionCache,
        breakers: BreakerBoard,
        log: PredictionLog | None,
        metrics: GatewayMetrics,
        shadow_concurrency: int = 8,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Any] = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ):
        self.client = client
        self._servers = servers
        self._replicas = replicas or (lambda: {m: [u] for m, u in servers().items()})
        self._serves = serves or (lambda url, version: True)
        self._outstanding: dict[str, int] = {}  # replica URL -> calls in flight from this gateway
        self._states = states
        self._versions = versions or (dict)
        self.router = router
        self.cache = cache
        self.breakers = breakers
        self.log = log
        self.metrics = metrics
        self.clock = clock
        self._sleep = sleep
        self._rng = rng
        self._shadow_slots = asyncio.Semaphore(shadow_concurrency)
        self._shadow_tasks: set[asyncio.Task] = set()

    async def run(self, spec: WorkflowSpec, payload: dict, ctx: RequestContext) -> tuple[dict, list[StepReport]]:
        """Run every step of `spec` on `payload`; return the workflow output and a report per step."""
        context: dict[str, Any] = {"input": payload}
        reports: dict[str, StepReport] = {}
        done: dict[str, asyncio.Event] = {s.id: asyncio.Event() for s in spec.steps}

        parallel = spec.parallel_steps()

        async def run_step(step: StepSpec) -> None:
            for dep in step.dependencies:
                await done[dep].wait()
            report, outputs = await self._run_step(step, context, ctx, step.id in parallel)
            reports[step.id] = report
            if outputs is None:
                context[step.id] = None
            else:
                context[step.id] = outputs if step.for_each else outputs[0]
            done[step.id].set()

        remaining = ctx.deadline - self.clock()
        try:
            async with asyncio.timeout(max(remaining, 0)):
                async with asyncio.TaskGroup() as group:
                    for step in spec.steps:
                        group.create_task(run_step(step))
        except TimeoutError:
            raise DeadlineExceeded(
                f"the workflow did not finish within its deadline of {self._deadline_ms(ctx):.0f} ms; "
                "send a larger X-Deadline-Ms or retry later"
            ) from None
        except BaseExceptionGroup as group_err:
            first = first_gateway_error(group_err)
            if first is None:
                raise
            raise first from None
        ordered = [reports[s.id] for s in spec.steps if s.id in reports]
        if ordered and all(r.status == "skipped" for r in ordered):
            why = "; ".join(f"{r.step}: {r.error}" for r in ordered)
            raise ServiceUnavailable(f"workflow {spec.name!r} has no answer: every step failed ({why})")
        return assemble_output(spec, context), ordered

    async def _run_step(
        self, step: StepSpec, context: dict, ctx: RequestContext, parallel: bool = False
    ) -> tuple[StepReport, list[dict] | None]:
        instances = step_instances(step, context)
        if instances is None:
            if step.optional:
                return StepReport(step.id, step.model, None, None, status="skipped", degraded=True,
                                  error="an upstream step was skipped"), None
            raise ServiceUnavailable(f"step {step.id!r} cannot run: a step it needs was skipped")
        if not instances:
            return StepReport(step.id, step.model, None, None), []
        fb = step.fallback
        return await self.call_step(
            step_id=step.id, model=step.model, task=step.task, instances=instances, ctx=ctx,
            timeout_ms=step.timeout_ms, retry=step.retry, optional=step.optional,
            fallback=(fb.model or step.model, fb.version or "stable") if fb and not fb.builtin else None,
            builtin=fb if fb and fb.builtin else None, parallel=parallel,
        )

    async def call_step(
        self,
        *,
        step_id: str,
        model: str,
        task: str,
        instances: list[dict],
        ctx: RequestContext,
        timeout_ms: int,
        retry: RetryPolicy,
        optional: bool = False,
        fallback: tuple[str, str] | None = None,
        builtin: Fallback | None = None,
        parallel: bool = False,
        raw: bool = False,
    ) -> tuple[StepReport, list[dict] | None]:
        """Call one model for a list of instances: route, cache, retry, fall back, log every call.

        `fallback` is another (model, version or alias); `builtin` a built-in fallback spec
        (`models.fallbacks`), computed here, calling at most its embed model. `parallel`: the step
        runs beside other steps of its workflow, and its server is told so (`models.threads`).
        `raw`: the caller only serialises the outputs (orjson), so cached ones may come back as the
        cache's JSON bytes (`orjson.Fragment`) instead of being parsed.
        """
        started = self.clock()
        route = self._route(model, step_id, ctx)
        facts = None
        try:
            outputs, cached, attempts, facts = await self._call_cached(
                step_id, model, task, route, instances, ctx, timeout_ms, retry, parallel, raw=raw)
            report = StepReport(step_id, model, route.version, route.arm, cached=cached, attempts=attempts)
            if route.shadow_version:
                self._start_shadow(step_id, model, task, route.shadow_version, instances, ctx, timeout_ms)
        except _StepFailed as primary:
            self._count_error(ctx, step_id, model, route, "failed")
            self._log_failure(ctx, step_id, model, route.version, route.arm, primary, instances, started)
            outputs, report = await self._recover(step_id, model, task, instances, ctx, timeout_ms, retry,
                                                  optional, fallback, primary, builtin)
        except asyncio.CancelledError:
            # The request deadline (or a gone client) cancelled the call: it still counts against its arm.
            kind = "deadline" if self._time_left(ctx) <= 0 else "cancelled"
            failed = _StepFailed(DeadlineExceeded(f"the call was cancelled ({kind}) before the model answered"),
                                 0, kind)
            self._log_failure(ctx, step_id, model, route.version, route.arm, failed, instances, started)
            raise
        report.latency_ms = (self.clock() - started) * 1000
        self.metrics.step_latency.labels(ctx.workflow or "", step_id, report.model, report.version or "",
                                         report.arm or "").observe(report.latency_ms / 1000)
        self._log(ctx, step_id, report, instances, outputs, facts=facts)
        return report, outputs

    async def _recover(self, step_id, model, task, instances, ctx, timeout_ms, retry, optional, fallback,
                       primary: _StepFailed, builtin: Fallback | None = None,
                       ) -> tuple[list[dict] | None, StepReport]:
        if builtin is not None and self._time_left(ctx) > 0:
            try:
                return await self._builtin(step_id, builtin, instances, ctx, timeout_ms, retry, primary)
            except _StepFailed as fb_err:
                primary = _StepFailed(both_failed(primary.error, f"builtin:{builtin.builtin}", fb_err.error),
                                      primary.attempts + fb_err.attempts, fb_err.error_type)
        if fallback is not None and self._time_left(ctx) > 0:
            fb_model, fb_ref = fallback
            try:
                fb_route = self._route_ref(fb_model, fb_ref)
            except GatewayError as exc:  # nothing to call: no row, the primary's failure decides
                primary = _StepFailed(exc, primary.attempts, "unavailable")
            else:
                fb_started = self.clock()
                try:
                    outputs, cached, attempts, _ = await self._call_cached(
                        step_id, fb_model, task, fb_route, instances, ctx, timeout_ms, retry)
                except _StepFailed as fb_err:
                    self._log_failure(ctx, step_id, fb_model, fb_route.version, "fallback", fb_err, instances,
                                      fb_started)
                    both = both_failed(primary.error, f"{fb_model}@{fb_route.version}", fb_err.error)
                    primary = _StepFailed(both, primary.attempts + fb_err.attempts, fb_err.error_type)
                else:
                    report = StepReport(step_id, fb_model, fb_route.version, "fallback", cached=cached,
                                        attempts=primary.attempts + attempts, status="fallback", degraded=True,
                                        error=primary.error.detail)
                    self._count_error(ctx, step_id, fb_model, fb_route, "fallback")
                    return outputs, report
        if optional:
            return None, StepReport(step_id, model, None, None, attempts=primary.attempts, status="skipped",
                                    degraded=True, error=primary.error.detail)
        raise primary.error

    async def _builtin(self, step_id, fb: Fallback, instances, ctx, timeout_ms, retry,
                       primary: _StepFailed) -> tuple[list[dict], StepReport]:
        """Answer with a built-in fallback; its embed calls (if any) go to `fb.model`'s servers."""
        name = f"builtin:{fb.builtin}"
        prompts: dict[str, list[float]] = {}
        per_instance: list[list[list[float]]] = [[] for _ in instances]
        version, cached, attempts = None, False, 0
        wanted = [fallbacks.texts_to_embed(fb.builtin, inst) for inst in instances]
        if fb.model is not None:
            started = self.clock()
            try:
                route = self._route_ref(fb.model, fb.version or "stable")
            except GatewayError as exc:
                raise _StepFailed(exc, 0, "unavailable") from None
            labels = fallbacks.label_prompts(fb.labels or [])
            texts = [*labels.values(), *(t for ts in wanted for t in ts)]
            try:
                vectors, cached, attempts, _ = await self._call_cached(
                    step_id, fb.model, "embed", route, [{"text": t} for t in texts], ctx, timeout_ms, retry)
            except _StepFailed as err:
                self._log_failure(ctx, step_id, fb.model, route.version, "fallback", err, instances, started)
                raise
            embeddings = [v["embedding"] for v in vectors]
            prompts = dict(zip(labels, embeddings))
            cursor = len(labels)
            for i, ts in enumerate(wanted):
                per_instance[i] = embeddings[cursor : cursor + len(ts)]
                cursor += len(ts)
            version = f"{fb.model}@{route.version}"
        try:
            outputs = [fallbacks.answer(fb.builtin, inst, vecs, prompts)
                       for inst, vecs in zip(instances, per_instance)]
        except SchemaError as exc:
            raise _StepFailed(ServiceUnavailable(str(exc)), attempts, "unavailable") from None
        report = StepReport(step_id, name, version, "fallback", cached=cached,
                            attempts=primary.attempts + attempts, status="fallback", degraded=True,
                            error=primary.error.detail)
        self._count_error(ctx, step_id, name, Route(version=version or "", arm="fallback"), "fallback")
        return outputs, report

    def _route(self, model: str, step_id: str, ctx: RequestContext) -> Route:
        explicit = ctx.explicit_pins.get(step_id) or ctx.explicit_pins.get(model)
        state = self._states().get(model)
        if state is None and explicit is None and ctx.tenant_pins.get(model) is None:
            raise NotFound(f"model {model!r} is not registered; see GET /v1/admin/models")
        pin = explicit or ctx.tenant_pins.get(model)
        known = self._versions().get(model)
        if pin and known is not None and pin not in known:
            raise NotFound(f"model {model!r} has no version {pin!r}; versions: {', '.join(sorted(known))}")
        return self.router.route(model, explicit=explicit, tenant_pin=ctx.tenant_pins.get(model),
                                 state=state, routing_key=ctx.routing_key)

    def _route_ref(self, model: str, ref: str) -> Route:
        state = self._states().get(model)
        if ref in ("stable", "canary", "shadow"):
            version = getattr(state, ref, None) if state is not None else None
            if version is None:
                raise ServiceUnavailable(f"fallback model {model!r} has no {ref} version")
            return Route(version=version, arm="fallback", shadow_version=None)
        return Route(version=ref, arm="fallback", shadow_version=None)

    async def _call_cached(self, step_id, model, task, route: Route, instances, ctx, timeout_ms, retry,
                           parallel=False, *, raw=False):
        """(outputs, all cached, attempts, log facts): each output from the cache or the model, with its
        prediction-log facts (`log_facts`), computed once per cache entry and kept with it."""
        hashes = [content_hash({"task": task, "input": inst}) for inst in instances]
        entries = [self.cache.lookup(model, route.version, h) for h in hashes]
        outputs: list = [None if e is None else orjson.Fragment(e.data) if raw else orjson.loads(e.data)
                         for e in entries]
        facts: list = [None if e is None else e.extra for e in entries]
        missing = [i for i, e in enumerate(entries) if e is None]
        hits = len(instances) - len(missing)
        if hits:
            self.metrics.cache.labels(model, "hit").inc(hits)
        attempts = 0
        if missing:
            self.metrics.cache.labels(model, "miss").inc(len(missing))
            fresh, attempts = await self._call_with_retries(
                step_id, model, route, [instances[i] for i in missing], ctx, timeout_ms, retry, parallel)
            for i, out in zip(missing, fresh):
                outputs[i] = out
                facts[i] = log_facts(instances[i], out) if self.log is not None else None  # none kept: no log
                self.cache.put(model, route.version, hashes[i], out, extra=facts[i])
        return outputs, not missing, attempts, facts

    async def _call_with_retries(self, step_id, model, route: Route, instances, ctx, timeout_ms, retry,
                                 parallel=False):
        if not self._replicas().get(model):
            raise _StepFailed(ServiceUnavailable(
                f"no model server is deployed for {model!r}; start the platform with `tandem up`"), 0,
                "unavailable")
        last: GatewayError | None = None
        last_exc: ModelCallError | None = None
        failed: set[str] = set()  # replicas that failed this call
        attempt = 0
        while attempt < retry.attempts:
            attempt += 1
            left = self._time_left(ctx)
            if left <= 0:
                raise _StepFailed(DeadlineExceeded(
                    f"step {step_id!r} ran out of the request deadline ({self._deadline_ms(ctx):.0f} ms)"),
                    attempt - 1, "deadline" if last is None else call_error_type(last_exc))
            picked = self._pick_replica(model, route.version, avoid=failed)
            if picked is None:
                wait = min((self.breakers.get(u).retry_after_s() for u in self._replicas().get(model) or []),
                           default=1.0)
                raise _StepFailed(ServiceUnavailable(
                    f"the model server for {model!r} is failing (circuit open); retry in a few seconds",
                    retry_after_s=wait), attempt - 1, "circuit_open")
            url, breaker = picked
            self._outstanding[url] = self._outstanding.get(url, 0) + 1
            try:
                reply = await self.client.predict(
                    url, route.version, instances, timeout_s=min(timeout_ms / 1000, left),
                    headers={"traceparent": child_traceparent(ctx.traceparent),
                             "x-request-id": ctx.request_id},
                    parallel=parallel,
                )
            except RejectedCall as exc:
                breaker.record_success()  # the server is up; the request is what it refused
                raise _StepFailed(rejected_error(model, route.version, exc), attempt, "rejected") from exc
            except RetryableCallError as exc:
                breaker.record_failure()
                self._count_error(ctx, step_id, model, route, "retry")
                last, last_exc = unavailable_error(model, exc), exc
                failed.add(url)
                if isinstance(exc, EndpointUnreachable) and self._untried(model, failed):
                    attempt -= 1  # nothing reached that replica: another one answers at once, at no attempt's cost
                    continue
                if attempt < retry.attempts:
                    delay = self._rng() * retry.backoff_before(attempt + 1) / 1000
                    if delay >= self._time_left(ctx):
                        break
                    await self._sleep(delay)
                continue
            finally:
                self._outstanding[url] -= 1
            breaker.record_success()
            return reply.outputs, attempt
        raise _StepFailed(last or ServiceUnavailable(f"model {model!r} failed"), attempt,
                          "unavailable" if last_exc is None else call_error_type(last_exc))

    def _untried(self, model: str, failed: set[str]) -> bool:
        return any(u not in failed for u in self._replicas().get(model) or [])

    def _pick_replica(self, model: str, version: str, avoid: set[str]):
        """(url, breaker) of the replica to call: one that has `version` loaded, fewest calls in flight,
        those that failed this call last; None when every replica's breaker is open."""
        urls = self._replicas().get(model) or []
        having = [u for u in urls if self._serves(u, version)] or urls
        for url in sorted(having, key=lambda u: (u in avoid, self._outstanding.get(u, 0))):
            breaker = self.breakers.get(url)
            if breaker.allow():
                return url, breaker
        return None

    def _start_shadow(self, step_id, model, task, version, instances, ctx, timeout_ms) -> None:
        if self._shadow_slots.locked():
            self.metrics.shadow.labels(model, "dropped").inc()
            return
        task_ = asyncio.get_running_loop().create_task(
            self._shadow(step_id, model, version, instances, ctx, timeout_ms))
        self._shadow_tasks.add(task_)
        task_.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, step_id, model, version, instances, ctx, timeout_ms) -> None:
        async with self._shadow_slots:
            url = self._servers().get(model)
            started = self.clock()
            report = StepReport(step_id, model, version, "shadow")
            outputs, error_type = None, None
            try:
                if url is None:
                    raise ModelCallError(f"no server for {model!r}")
                reply = await self.client.predict(url, version, instances, timeout_s=timeout_ms / 1000,
                                                  headers={"traceparent": child_traceparent(ctx.traceparent)})
                outputs = reply.outputs
                self.metrics.shadow.labels(model, "ok").inc()
            except Exception as exc:  # noqa: BLE001 — a shadow never fails the caller; its failure is logged
                report.status, report.error = "error", str(exc)[:500]
                error_type = call_error_type(exc) if isinstance(exc, ModelCallError) else "internal"
                self.metrics.shadow.labels(model, "error").inc()
            report.latency_ms = (self.clock() - started) * 1000
            self._log(ctx, step_id, report, instances, outputs, error_type)

    async def drain_shadows(self) -> None:
        if self._shadow_tasks:
            await asyncio.gather(*self._shadow_tasks, return_exceptions=True)

    def _log(self, ctx: RequestContext, step_id: str, report: StepReport, instances, outputs,
             error_type: str | None = None, *, facts: list | None = None) -> None:
        """One `predictions` row per instance; `facts[i]`, when given, is instance i's `log_facts`."""
        if self.log is None:
            return
        now = datetime.now(UTC)
        day = now.date()
        status = report.status
        for i, inst in enumerate(instances):
            input_hash, summary = facts[i] if facts else log_facts(inst, outputs[i] if outputs else None)
            self.log.log({
                "request_id": ctx.request_id, "trace_id": ctx.trace_id, "tenant": ctx.tenant,
                "workflow": ctx.workflow, "workflow_version": ctx.workflow_version, "step": step_id,
                "model": report.model, "version": report.version, "arm": report.arm,
                "input_hash": input_hash, "output_summary": summary,
                "latency_ms": report.latency_ms, "status": status, "error": report.error,
                "error_type": error_type, "cached": report.cached, "ts": now, "day": day,
            })

    def _log_failure(self, ctx: RequestContext, step_id: str, model: str, version: str | None, arm: str | None,
                     failed: _StepFailed, instances, started: float) -> None:
        """`error` rows for a call that failed, on the version and arm it was routed to."""
        if self.log is None:
            return
        report = StepReport(step_id, model, version, arm, latency_ms=(self.clock() - started) * 1000,
                            attempts=failed.attempts, status="error", error=failed.error.detail[:500])
        self._log(ctx, step_id, report, instances, None, failed.error_type)

    def _count_error(self, ctx, step_id, model, route: Route, kind: str) -> None:
        self.metrics.step_errors.labels(ctx.tenant, ctx.workflow or "", step_id, model, route.version or "",
                                        route.arm or "", kind).inc()

    def _time_left(self, ctx: RequestContext) -> float:
        return ctx.deadline - self.clock()

    def _deadline_ms(self, ctx: RequestContext) -> float:
        return ctx.budget_ms
