"""Sensors: the control loop that acts on what the assets write. Each is built by a factory; cursors are JSON.

    canary guard   canary_evaluations ──▶ registry: rollback when the newest evaluation decided so, or after
                   N passing ones move the canary weight up the ladder (0.05 → 0.25 → 0.5 → promote);
                   "hold" evaluations (not enough evidence) never move it (assets.canary_guard decides)
    drift alerts   drift_metrics (status fail) ──▶ alerts (+ optionally a classifier_training run)
    async jobs     jobs (status queued) ──▶ a dynamic partition + one run per job, tagged `tenant`
    job failures   a failed async-job run ──▶ re-queue the job, or mark it failed after N attempts
"""

import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import dagster as dg
import pyarrow.compute as pc

from assets.canary_guard import CanaryDecision, canary_decision, evaluations_since
from assets.partitions import ASYNC_JOBS
from assets.resources import LakeResource, RegistryResource
from models.jobs import get_job, queued_jobs, update_job

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = [
    "CanaryDecision",
    "canary_decision",
    "make_async_jobs_sensor",
    "make_canary_guard_sensor",
    "make_drift_alert_sensor",
    "make_job_failure_sensor",
]

RUNNING = dg.DefaultSensorStatus.RUNNING


def _load(cursor: str | None) -> dict:
    return json.loads(cursor) if cursor else {}


def _dump(cursor: dict) -> str:
    return json.dumps(cursor, sort_keys=True)


def _alert_id(*parts: object) -> str:
    return hashlib.sha256("\x00".join(map(str, parts)).encode()).hexdigest()[:24]


# --- canary guard ------------------------------------------------------------------------------


def make_canary_guard_sensor(
    *, ladder: Sequence[float] = (0.05, 0.25, 0.5), passes_required: int = 2, min_canary_requests: int = 20,
    name: str = "canary_guard", minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """A sensor that rolls canaries back or walks them up `ladder` from their evaluations.

    `min_canary_requests` only weighs evaluations written before the `decision` column existed.
    """
    if not ladder or any(not 0 < w <= 1 for w in ladder):
        raise ValueError(f"ladder must be canary weights in (0, 1], e.g. (0.05, 0.25, 0.5); got {ladder!r}")
    if passes_required < 1:
        raise ValueError(f"passes_required must be at least 1, got {passes_required}")

    @dg.sensor(name=name, minimum_interval_seconds=minimum_interval_seconds, default_status=RUNNING,
               description="Rolls back failed canaries and advances passing ones along the weight ladder.")
    def _canary_guard(context: dg.SensorEvaluationContext, lake: LakeResource, registry: RegistryResource):
        cursor = _load(context.cursor)
        seen: dict[str, str] = cursor.get("last_eval", {})
        reg, the_lake = registry.registry(), lake.lake()
        acted = []
        for state in sorted(reg.states().values(), key=lambda s: s.name):
            if state.canary is None or state.stable is None:
                continue
            evaluations = evaluations_since(the_lake, state)
            if not evaluations or seen.get(state.name) == evaluations[-1]["eval_id"]:
                continue
            seen[state.name] = evaluations[-1]["eval_id"]
            decision = canary_decision(state, evaluations, ladder, passes_required, min_canary_requests)
            actor = f"dagster:{name}"
            if decision.action == "rollback":
                reg.rollback(state.name, actor=actor, reason=decision.reason)
                the_lake.insert_if_absent("alerts", [{
                    "alert_id": _alert_id("canary", decision.evaluation["eval_id"]), "kind": "canary",
                    "model": state.name, "version": state.canary, "severity": "error",
                    "message": decision.reason, "run_id": decision.evaluation["run_id"], "at": datetime.now(UTC),
                }], keys=["alert_id"])
            elif decision.action == "advance":
                reg.set_canary(state.name, state.canary, decision.weight, actor=actor, reason=decision.reason)
            elif decision.action == "promote":
                reg.promote(state.name, state.canary, actor=actor, reason=decision.reason)
            context.log.info(f"{state.name} canary {state.canary}: {decision.action} ({decision.reason})")
            acted.append(f"{state.name}:{decision.action}")
        cursor["last_eval"] = seen
        if not acted:
            return dg.SensorResult(cursor=_dump(cursor), skip_reason="no new canary evaluations")
        return dg.SensorResult(cursor=_dump(cursor))

    return _canary_guard


# --- drift alerts ------------------------------------------------------------------------------


def drift_alerts(rows: Sequence[dict], now: datetime) -> list[dict]:
    """One `alerts` row per (day, model, version, run) among failed drift metrics."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["day"], r["model"], r["version"], r["run_id"])].append(r)
    alerts = []
    for (day, model, version, run_id), metrics in sorted(groups.items(), key=lambda kv: str(kv[0])):
        detail = ", ".join(f"{m['feature']} psi {m['value']:.3f} (fail >= {m['fail_threshold']})"
                           for m in sorted(metrics, key=lambda m: m["feature"]))
        alerts.append({
            "alert_id": _alert_id("drift", day, model, version, run_id), "kind": "drift", "model": model,
            "version": version, "severity": "error", "message": f"drift on {day} for {model}@{version}: {detail}",
            "run_id": run_id, "at": now,
        })
    return alerts


def make_drift_alert_sensor(
    *, retrain_job: "UnresolvedAssetJobDefinition | None" = None, retrain_models: Sequence[str] = ("classifier",),
    name: str = "drift_alerts", minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """A sensor that turns failed drift metrics into alerts and, for `retrain_models`, a retraining run."""

    @dg.sensor(name=name, job=retrain_job, minimum_interval_seconds=minimum_interval_seconds,
               default_status=RUNNING, description="Raises an alert for every failed drift report.")
    def _drift_alerts(context: dg.SensorEvaluationContext, lake: LakeResource):
        cursor = _load(context.cursor)
        flt = pc.field("status") == "fail"
        if cursor.get("since"):
            flt = flt & (pc.field("computed_at") > datetime.fromisoformat(cursor["since"]))
        the_lake = lake.lake()
        rows = the_lake.read("drift_metrics", filter=flt).to_pylist()
        if not rows:
            return dg.SensorResult(cursor=_dump(cursor), skip_reason="no new failed drift metrics")
        alerts = drift_alerts(rows, datetime.now(UTC))
        the_lake.insert_if_absent("alerts", alerts, keys=["alert_id"])
        cursor["since"] = max(r["computed_at"] for r in rows).isoformat()
        requests = []
        if retrain_job is not None:
            requests = [
                dg.RunRequest(run_key=f"retrain:{a['model']}:{a['version']}:{a['alert_id']}",
                              tags={"tandem/trigger": "drift", "tandem/alert_id": a["alert_id"]})
                for a in alerts if a["model"] in retrain_models
            ]
        for a in alerts:
            context.log.warning(a["message"])
        return dg.SensorResult(run_requests=requests, cursor=_dump(cursor))

    return _drift_alerts


# --- async jobs --------------------------------------------------------------------------------


def make_async_jobs_sensor(
    job: "UnresolvedAssetJobDefinition", *, max_runs_per_tick: int = 50, name: str = "async_jobs",
    minimum_interval_seconds: int = 2,
) -> dg.SensorDefinition:
    """A sensor that gives every queued job a dynamic partition and requests one run for it.

    Runs carry a `tenant` tag, so the QueuedRunCoordinator's per-tenant tag limits apply. The run
    key is `<job id>:<attempts>`, so a re-queued job (after a failure) gets a new run and a queued
    one never gets two; the cursor remembers what was requested for jobs still queued.
    """

    @dg.sensor(name=name, job=job, minimum_interval_seconds=minimum_interval_seconds, default_status=RUNNING,
               description="Launches a run for every queued async job.")
    def _async_jobs(context: dg.SensorEvaluationContext, lake: LakeResource):
        cursor = _load(context.cursor)
        requested: dict[str, int] = cursor.get("requested", {})
        queued = queued_jobs(lake.lake())
        todo = [j for j in queued if requested.get(j["job_id"]) != j["attempts"]][:max_runs_per_tick]
        # Forget jobs that left the queue so the cursor stays as small as the queue.
        requested = {j["job_id"]: requested[j["job_id"]] for j in queued if j["job_id"] in requested}
        if not todo:
            return dg.SensorResult(cursor=_dump({"requested": requested}), skip_reason="no queued jobs")
        existing = set(context.instance.get_dynamic_partitions(ASYNC_JOBS.name))
        new = [j["job_id"] for j in todo if j["job_id"] not in existing]
        runs = [
            dg.RunRequest(run_key=f"{j['job_id']}:{j['attempts']}", partition_key=j["job_id"],
                          tags={"tenant": j["tenant"], "tandem/job_id": j["job_id"], "tandem/workflow": j["workflow"]})
            for j in todo
        ]
        requested.update({j["job_id"]: j["attempts"] for j in todo})
        return dg.SensorResult(
            run_requests=runs,
            dynamic_partitions_requests=[ASYNC_JOBS.build_add_request(new)] if new else [],
            cursor=_dump({"requested": requested}),
        )

    return _async_jobs


def make_job_failure_sensor(
    job: "UnresolvedAssetJobDefinition", *, max_attempts: int = 3, name: str = "async_job_failures",
) -> dg.SensorDefinition:
    """A run-failure sensor that re-queues a failed async job, or marks it failed after `max_attempts`."""

    @dg.run_failure_sensor(name=name, monitored_jobs=[job], default_status=RUNNING,
                           description="Retries failed async jobs, then marks them failed with the reason.")
    def _job_failures(context: dg.RunFailureSensorContext, lake: LakeResource):
        run = context.dagster_run
        job_id = run.tags.get("tandem/job_id") or run.tags.get("dagster/partition")
        if not job_id:
            return
        the_lake = lake.lake()
        record = get_job(the_lake, job_id)
        if record is None or record["status"] in ("succeeded", "failed"):
            return
        # The asset counts its attempt when it starts; a run that died before that still used one.
        attempts = record["attempts"] if record["run_id"] == run.run_id else record["attempts"] + 1
        message = _failure_reason(context)
        if attempts < max_attempts:
            update_job(the_lake, job_id, status="queued", attempts=attempts, run_id=run.run_id,
                       error=f"attempt {attempts} of {max_attempts} failed (run {run.run_id}): {message}; retrying")
        else:
            update_job(the_lake, job_id, status="failed", attempts=attempts, run_id=run.run_id,
                       error=f"failed after {attempts} attempts; last run {run.run_id}: {message}")
        context.log.info(f"job {job_id}: attempt {attempts} failed: {message}")

    return _job_failures


def _failure_reason(context: dg.RunFailureSensorContext) -> str:
    """The first failed step's error (type and first line), else the run's failure message."""
    for event in context.get_step_failure_events():
        error = getattr(event.event_specific_data, "error", None)
        if error is not None:
            text = (error.message or "").strip().splitlines()
            return text[0] if text else error.cls_name or "step failed"
    return (context.failure_event.message or "run failed").strip().splitlines()[0]
