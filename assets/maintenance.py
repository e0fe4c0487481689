"""Maintenance: compaction + vacuum of every Delta table, and per-tenant retention of the prediction log."""

from datetime import UTC, date, datetime, timedelta

import dagster as dg

from assets.resources import LakeResource, TandemConfig
from lakehouse import CATALOG, Lake, compact, delete_older_than, sql_literal, vacuum


class VacuumConfig(dg.Config):
    """How long unreferenced files are kept (time travel needs them); below 168 h only if enforcement is off."""

    retention_hours: int = 168
    enforce_retention: bool = True


class RetentionConfig(dg.Config):
    """Days of `predictions` kept for tenants without a `retention_days` in the tenant file."""

    default_retention_days: int = 30


def retention_plan(retention: dict[str, int], default_days: int, today: date) -> list[tuple[date, str]]:
    """(cutoff day, Delta predicate on tenant) pairs: one per listed tenant, one for everyone else."""
    plan = [(today - timedelta(days=days), f"tenant = {sql_literal(tenant)}")
            for tenant, days in sorted(retention.items())]
    others = f"tenant NOT IN ({', '.join(sql_literal(t) for t in sorted(retention))})" if retention else "true"
    plan.append((today - timedelta(days=default_days), others))
    return plan


def apply_retention(lake: Lake, retention: dict[str, int], default_days: int, today: date) -> dict[str, int]:
    """Delete prediction rows past each tenant's retention; returns rows deleted per predicate."""
    return {where: delete_older_than(lake, "predictions", "day", cutoff, where=where)
            for cutoff, where in retention_plan(retention, default_days, today)}


@dg.asset(group_name="maintenance", kinds={"delta"})
def lake_compaction(context: dg.AssetExecutionContext, config: VacuumConfig, lake: LakeResource) -> dg.MaterializeResult:
    """Every Delta table compacted (small files merged) and vacuumed (unreferenced files deleted)."""
    the_lake = lake.lake()
    report = {}
    for name in CATALOG:
        if not the_lake.exists(name):
            continue
        metrics = compact(the_lake, name)
        removed = vacuum(the_lake, name, config.retention_hours, config.enforce_retention)
        report[name] = {"files_added": metrics.get("numFilesAdded", 0),
                        "files_removed_by_compaction": metrics.get("numFilesRemoved", 0),
                        "files_vacuumed": len(removed)}
        context.log.info(f"{name}: {report[name]}")
    return dg.MaterializeResult(metadata={"tables": report})


@dg.asset(group_name="maintenance", kinds={"delta"})
def prediction_retention(
    context: dg.AssetExecutionContext, config: RetentionConfig, tandem: TandemConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """The prediction log trimmed to each tenant's `retention_days` (from the tenant file)."""
    retention = tandem.tenant_retention()
    deleted = apply_retention(lake.lake(), retention, config.default_retention_days, datetime.now(UTC).date())
    context.log.info(f"deleted {sum(deleted.values())} prediction rows past retention")
    return dg.MaterializeResult(metadata={
        "deleted_rows": sum(deleted.values()), "by_predicate": deleted, "tenants": retention,
        "default_retention_days": config.default_retention_days,
    })
