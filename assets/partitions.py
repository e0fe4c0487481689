"""Partitions shared by the asset families: calendar days (UTC) and one dynamic partition per async job."""

from __future__ import annotations

from datetime import date

import dagster as dg

__all__ = ["ASYNC_JOBS", "DAILY", "START_DATE", "partition_day"]

START_DATE = "2026-01-01"

DAILY = dg.DailyPartitionsDefinition(start_date=START_DATE, timezone="UTC")
"""One partition per completed UTC day (a day's partition exists once the day is over)."""

ASYNC_JOBS = dg.DynamicPartitionsDefinition(name="async_jobs")
"""One partition per submitted job id, added by the async-jobs sensor."""


def partition_day(context: dg.AssetExecutionContext | dg.AssetCheckExecutionContext) -> date:
    """The run's daily partition as a `date`."""
    return date.fromisoformat(context.partition_key)
