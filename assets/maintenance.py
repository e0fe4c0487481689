"""Maintenance: compaction + vacuum of every Delta table, and per-tenant retention of every table with tenant data."""

from datetime import UTC, datetime

import dagster as dg

from assets.partitions import ASYNC_JOBS
from assets.resources import LakeResource, TandemConfig
from lakehouse import CATALOG, compact, vacuum
from lakehouse.retention import apply_retention, retention_plan

__all__ = ["RetentionConfig", "VacuumConfig", "apply_retention", "lake_compaction", "retention_plan", "tenant_retention"]


class VacuumConfig(dg.Config):
    """How long unreferenced files are kept (time travel needs them); below 168 h only if enforcement is off."""

    retention_hours: int = 168
    enforce_retention: bool = True


class RetentionConfig(dg.Config):
    """Days of tenant records kept for tenants without a `retention_days` in the tenant file."""

    default_retention_days: int = 30


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
def tenant_retention(
    context: dg.AssetExecutionContext, config: RetentionConfig, tandem: TandemConfig, lake: LakeResource
) -> dg.MaterializeResult:
    """Every table's tenant records (requests, predictions, jobs and their inputs and results) trimmed to each
    tenant's `retention_days`; the expired jobs' dynamic partitions removed."""
    retention = tandem.tenant_retention()
    report = apply_retention(lake.lake(), retention, config.default_retention_days, datetime.now(UTC).date())
    existing = set(context.instance.get_dynamic_partitions(ASYNC_JOBS.name))
    gone = [job_id for job_id in report.expired_jobs if job_id in existing]
    for job_id in gone:
        context.instance.delete_dynamic_partition(ASYNC_JOBS.name, job_id)
    context.log.info(f"deleted past retention: {report.deleted}; {len(gone)} job partitions removed")
    return dg.MaterializeResult(metadata={
        "deleted_rows": sum(report.deleted.values()), "deleted_by_table": report.deleted,
        "by_predicate": report.by_predicate, "job_partitions_removed": len(gone), "tenants": retention,
        "default_retention_days": config.default_retention_days,
    })
