"""Schedules, built from the asset jobs in `orchestration.definitions`.

    daily_batch        01:00 UTC, yesterday's partition: documents + batch_predictions   (stopped by default:
                       it needs files in TANDEM_HOME/inbox/<day>/)
    daily_drift        01:30 UTC, yesterday's drift_report
    canary_evaluation  every 10 minutes (quick when no canary is active); TANDEM_CANARY_* (see `CanaryLoop`)
    maintenance        03:00 UTC: compaction + vacuum, prediction retention
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import dagster as dg

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

__all__ = ["CanaryLoop", "make_schedules"]

RUNNING = dg.DefaultScheduleStatus.RUNNING
STOPPED = dg.DefaultScheduleStatus.STOPPED


@dataclass(frozen=True)
class CanaryLoop:
    """The canary loop's timing and evidence settings, shared by its schedule (as run config) and guard sensor.

    `from_env` reads them when the code location loads, so a test can run the whole loop in minutes:

        TANDEM_CANARY_CRON              "*/10 * * * *"   when canary_evaluation runs
        TANDEM_CANARY_LADDER            "0.05,0.25,0.5"  canary weights the guard walks up before promoting
        TANDEM_CANARY_PASSES            2                passing evaluations needed per ladder step
        TANDEM_CANARY_MIN_REQUESTS      20               live model calls per arm before live evidence counts
        TANDEM_CANARY_WINDOW_MINUTES    60               the live-traffic window each evaluation reads
        TANDEM_CANARY_GUARD_INTERVAL_S  30               the guard sensor's minimum interval
    """

    cron: str = "*/10 * * * *"
    ladder: tuple[float, ...] = (0.05, 0.25, 0.5)
    passes_required: int = 2
    min_requests: int = 20
    window_minutes: int = 60
    guard_interval_s: int = 30

    def __post_init__(self) -> None:
        if not self.ladder or any(not 0 < w <= 1 for w in self.ladder):
            raise ValueError(f"the canary ladder must be weights in (0, 1], like 0.05,0.25,0.5; got {self.ladder}")
        for name in ("passes_required", "min_requests", "window_minutes", "guard_interval_s"):
            if getattr(self, name) < 1:
                raise ValueError(f"canary {name} must be at least 1, got {getattr(self, name)}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CanaryLoop:
        """The settings from TANDEM_CANARY_* (unset or empty: the default); a bad value names its variable."""
        env = os.environ if environ is None else environ
        kw: dict[str, Any] = {}
        for var, name, parse in (
            ("TANDEM_CANARY_CRON", "cron", str.strip),
            ("TANDEM_CANARY_LADDER", "ladder", lambda v: tuple(float(w) for w in v.split(",") if w.strip())),
            ("TANDEM_CANARY_PASSES", "passes_required", int),
            ("TANDEM_CANARY_MIN_REQUESTS", "min_requests", int),
            ("TANDEM_CANARY_WINDOW_MINUTES", "window_minutes", int),
            ("TANDEM_CANARY_GUARD_INTERVAL_S", "guard_interval_s", int),
        ):
            raw = env.get(var, "").strip()
            if raw:
                try:
                    kw[name] = parse(raw)
                except ValueError:
                    raise ValueError(f"{var}={raw!r} is not valid; e.g. {var}={_EXAMPLES[name]}") from None
        try:
            return cls(**kw)
        except ValueError as exc:
            raise ValueError(f"TANDEM_CANARY_* settings: {exc}") from None

    def run_config(self) -> dict[str, Any]:
        """The canary_evaluation job's run config carrying these settings into `CanaryConfig`."""
        return {"ops": {"canary_evaluation": {"config": {
            "window_minutes": self.window_minutes, "min_requests": self.min_requests,
            "ladder": list(self.ladder), "passes_required": self.passes_required,
        }}}}


_EXAMPLES = {"cron": '"* * * * *"', "ladder": "0.05,0.25,0.5", "passes_required": "2", "min_requests": "20",
             "window_minutes": "60", "guard_interval_s": "30"}


def make_schedules(
    *,
    daily_batch_job: UnresolvedAssetJobDefinition,
    drift_job: UnresolvedAssetJobDefinition,
    canary_job: UnresolvedAssetJobDefinition,
    maintenance_job: UnresolvedAssetJobDefinition,
    canary: CanaryLoop | None = None,
) -> list[dg.ScheduleDefinition]:
    """The platform's schedules; partitioned jobs run the partition of the day that just ended."""
    canary = canary or CanaryLoop()
    return [
        dg.build_schedule_from_partitioned_job(daily_batch_job, hour_of_day=1, default_status=STOPPED),
        dg.build_schedule_from_partitioned_job(drift_job, hour_of_day=1, minute_of_hour=30, default_status=RUNNING),
        dg.ScheduleDefinition(name="canary_evaluation_schedule", job=canary_job, cron_schedule=canary.cron,
                              run_config=canary.run_config(), execution_timezone="UTC", default_status=RUNNING),
        dg.ScheduleDefinition(name="maintenance_schedule", job=maintenance_job, cron_schedule="0 3 * * *",
                              execution_timezone="UTC", default_status=RUNNING),
    ]
