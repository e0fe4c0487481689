"""Schedules, built from the asset jobs in `orchestration.definitions`.

    daily_batch        01:00 UTC, yesterday's partition: documents + batch_predictions   (stopped by default:
                       it needs files in TANDEM_HOME/inbox/<day>/)
    daily_drift        01:30 UTC, yesterday's drift_report
    canary_evaluation  every 10 minutes (quick when no canary is active)
    maintenance        03:00 UTC: compaction + vacuum, prediction retention
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["make_schedules"]

RUNNING = dg.DefaultScheduleStatus.RUNNING
STOPPED = dg.DefaultScheduleStatus.STOPPED


def make_schedules(
    *,
    daily_batch_job: UnresolvedAssetJobDefinition,
    drift_job: UnresolvedAssetJobDefinition,
    canary_job: UnresolvedAssetJobDefinition,
    maintenance_job: UnresolvedAssetJobDefinition,
    canary_cron: str = "*/10 * * * *",
) -> list[dg.ScheduleDefinition]:
    """The platform's schedules; partitioned jobs run the partition of the day that just ended."""
    return [
        dg.build_schedule_from_partitioned_job(daily_batch_job, hour_of_day=1, default_status=STOPPED),
        dg.build_schedule_from_partitioned_job(drift_job, hour_of_day=1, minute_of_hour=30, default_status=RUNNING),
        dg.ScheduleDefinition(name="canary_evaluation_schedule", job=canary_job, cron_schedule=canary_cron,
                              execution_timezone="UTC", default_status=RUNNING),
        dg.ScheduleDefinition(name="maintenance_schedule", job=maintenance_job, cron_schedule="0 3 * * *",
                              execution_timezone="UTC", default_status=RUNNING),
    ]
