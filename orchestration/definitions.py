"""The Dagster code location: `defs`, loaded by `workspace.yaml` (and by `dagster api grpc` on Kubernetes).

Resources read TANDEM_* settings when a step runs, not here. Two choices are made when the code
location loads: the executor — `TANDEM_DAGSTER_EXECUTOR=k8s` runs each step as a Kubernetes Job
(dagster-k8s `k8s_job_executor`); anything else uses Dagster's multiprocess executor, which
spawns (never forks) its step processes, as deltalake requires — and the canary loop's timing
(TANDEM_CANARY_*, see `orchestration.schedules.CanaryLoop`): the schedule passes it to the job as
run config, and the guard sensor gets the same ladder, passes and minimum sample.
"""

import os

import dagster as dg

from assets import (
    ALL_ASSETS,
    ALL_CHECKS,
    DAILY,
    async_job_results,
    batch_predictions,
    build_resources,
    canary_evaluation,
    classifier_training,
    documents,
    drift_report,
    lake_compaction,
    tenant_retention,
)
from orchestration.schedules import CanaryLoop, make_schedules
from orchestration.sensors import (
    make_async_jobs_sensor,
    make_canary_guard_sensor,
    make_drift_alert_sensor,
    make_job_failure_sensor,
)

__all__ = ["defs"]

daily_batch_job = dg.define_asset_job(
    "daily_batch", selection=[documents, batch_predictions], partitions_def=DAILY,
    description="Ingest a day's documents and score them with the stable versions.",
)
drift_job = dg.define_asset_job(
    "daily_drift", selection=[drift_report], partitions_def=DAILY, executor_def=dg.in_process_executor,
    description="PSI of a day's model inputs and outputs against each version's reference window.",
)
canary_job = dg.define_asset_job(
    "canary_evaluation_job", selection=[canary_evaluation], executor_def=dg.in_process_executor,
    description="Evaluate every active canary; the check reports each decision (a rollback is a failed WARN check).",
)
training_job = dg.define_asset_job(
    "classifier_training_job", selection=[classifier_training], executor_def=dg.in_process_executor,
    description="Train and register a new classifier version (not promoted).",
)
async_job = dg.define_asset_job(
    "async_job", selection=[async_job_results], executor_def=dg.in_process_executor,
    description="Run one async job (its partition is the job id).",
)
maintenance_job = dg.define_asset_job(
    "maintenance", selection=[lake_compaction, tenant_retention], executor_def=dg.in_process_executor,
    description="Compact and vacuum every table; apply per-tenant retention to every table with tenant data.",
)


def _executor() -> dg.ExecutorDefinition | None:
    if os.environ.get("TANDEM_DAGSTER_EXECUTOR", "").lower() == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    return None  # Dagster's default: multiprocess, spawn start method


canary_loop = CanaryLoop.from_env()

defs = dg.Definitions(
    assets=ALL_ASSETS,
    asset_checks=ALL_CHECKS,
    jobs=[daily_batch_job, drift_job, canary_job, training_job, async_job, maintenance_job],
    schedules=make_schedules(daily_batch_job=daily_batch_job, drift_job=drift_job, canary_job=canary_job,
                             maintenance_job=maintenance_job, canary=canary_loop),
    sensors=[
        make_canary_guard_sensor(ladder=canary_loop.ladder, passes_required=canary_loop.passes_required,
                                 min_canary_requests=canary_loop.min_requests,
                                 minimum_interval_seconds=canary_loop.guard_interval_s),
        make_drift_alert_sensor(retrain_job=training_job),
        make_async_jobs_sensor(async_job),
        make_job_failure_sensor(async_job),
    ],
    resources=build_resources(),
    executor=_executor(),
)
