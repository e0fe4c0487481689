"""Tenant data in the lake: per-tenant retention, and purging one tenant with proof it is gone.

Where each table keeps tenant data (`TENANT_TABLES`):

    requests, predictions   `tenant` column, cut by `day`
    jobs                    `tenant` column, cut by `submitted_at` (queued and running jobs are kept)
    job_inputs, job_results no tenant column: they follow their job (`job_id`)
    replay_evaluations      `tenant` = the replay's tenant filter; aggregates only, so retention keeps them
                            (they are the offline gate's evidence) and purge removes them

`apply_retention` deletes rows past each tenant's `retention_days`; `purge_tenant` deletes every row of
one tenant, vacuums the touched tables with retention 0 (so the old files holding its rows are deleted,
not only unreferenced) and counts what is left: rows by SQL, and files on disk that still hold its rows.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from urllib.parse import unquote

import pyarrow.parquet as pq

from lakehouse.catalog import get_table
from lakehouse.lake import Lake
from lakehouse.maintenance import delete_older_than, vacuum
from lakehouse.sql import sql_literal

__all__ = ["JOB_TABLES", "TENANT_TABLES", "PurgeReport", "RetentionReport", "apply_retention", "purge_tenant",
           "retention_plan", "tenant_files"]

TENANT_TABLES: dict[str, str | None] = {  # table -> the column retention cuts by (None: purge only)
    "requests": "day", "predictions": "day", "jobs": "submitted_at", "replay_evaluations": None,
}
JOB_TABLES = ("job_inputs", "job_results")  # rows follow their job
_LIVE_JOBS = ("queued", "running")
_IN_CHUNK = 500


@dataclass
class RetentionReport:
    """Rows deleted per table, per (cutoff, tenant predicate), and the ids of the jobs that expired."""

    deleted: dict[str, int] = field(default_factory=dict)
    by_predicate: dict[str, dict[str, int]] = field(default_factory=dict)
    expired_jobs: list[str] = field(default_factory=list)


@dataclass
class PurgeReport:
    """What purging a tenant did and what is left: rows deleted, files vacuumed, rows and files remaining."""

    tenant: str
    job_ids: list[str] = field(default_factory=list)
    deleted: dict[str, int] = field(default_factory=dict)
    files_removed: dict[str, int] = field(default_factory=dict)
    remaining_rows: dict[str, int] = field(default_factory=dict)
    remaining_files: dict[str, int | None] = field(default_factory=dict)  # None: not checkable (object store)

    @property
    def clean(self) -> bool:
        return not any(self.remaining_rows.values()) and not any(self.remaining_files.values())


def retention_plan(retention: dict[str, int], default_days: int, today: date) -> list[tuple[date, str]]:
    """(cutoff day, Delta predicate on tenant) pairs: one per listed tenant, one for everyone else."""
    plan = [(today - timedelta(days=days), f"tenant = {sql_literal(tenant)}")
            for tenant, days in sorted(retention.items())]
    others = f"tenant NOT IN ({', '.join(sql_literal(t) for t in sorted(retention))})" if retention else "true"
    plan.append((today - timedelta(days=default_days), others))
    return plan


def apply_retention(lake: Lake, retention: dict[str, int], default_days: int, today: date) -> RetentionReport:
    """Delete every table's tenant rows past each tenant's retention (see the module docstring)."""
    report = RetentionReport()
    for cutoff, where in retention_plan(retention, default_days, today):
        counts: dict[str, int] = {}
        expired = _ids(lake, "SELECT job_id FROM jobs WHERE submitted_at < ? AND status NOT IN ('queued', 'running') "
                             f"AND ({where})", [cutoff]) if lake.exists("jobs") else []
        for name in JOB_TABLES:
            counts[name] = _delete_ids(lake, name, expired)
        counts["jobs"] = _delete_ids(lake, "jobs", expired)
        for name in ("requests", "predictions"):
            counts[name] = delete_older_than(lake, name, TENANT_TABLES[name], cutoff, where=where)
        report.by_predicate[where] = counts
        report.expired_jobs += expired
        for name, n in counts.items():
            report.deleted[name] = report.deleted.get(name, 0) + n
    return report


def purge_tenant(lake: Lake, tenant: str) -> PurgeReport:
    """Delete every row of `tenant`, vacuum the touched tables with retention 0, and count what is left."""
    report = PurgeReport(tenant)
    report.job_ids = _ids(lake, "SELECT job_id FROM jobs WHERE tenant = ?", [tenant]) if lake.exists("jobs") else []
    mine = f"tenant = {sql_literal(tenant)}"
    for name in JOB_TABLES:
        report.deleted[name] = _delete_ids(lake, name, report.job_ids)
    for name in TENANT_TABLES:
        report.deleted[name] = lake.delete(name, mine) if lake.exists(name) else 0
    for name, n in report.deleted.items():
        if n:
            report.files_removed[name] = len(vacuum(lake, name, retention_hours=0, enforce_retention=False))
    for name in TENANT_TABLES:
        report.remaining_rows[name] = _count(lake, f"SELECT count(*) AS n FROM {name} WHERE tenant = ?", [tenant], name)
        report.remaining_files[name] = tenant_files(lake, name, "tenant", [tenant])
    for name in JOB_TABLES:
        report.remaining_rows[name] = sum(
            _count(lake, f"SELECT count(*) AS n FROM {name} WHERE job_id IN ({', '.join('?' * len(chunk))})",
                   list(chunk), name) for chunk in _chunks(report.job_ids))
        report.remaining_files[name] = tenant_files(lake, name, "job_id", report.job_ids)
    return report


def tenant_files(lake: Lake, name: str, column: str, values: Sequence[str]) -> int | None:
    """Parquet files under the table's directory, live or not, holding a row whose `column` is in `values`.

    Reads the files on disk, not the Delta log, so it proves a vacuum deleted the old files; None for
    object-store lakes (not checked here).
    """
    if "://" in lake.root and not lake.root.startswith("file://"):
        return None
    root = Path(lake.uri(name).removeprefix("file://"))
    if not root.exists() or not values:
        return 0
    wanted, partitioned = set(values), column in get_table(name).partition_by
    found = 0
    for path in root.rglob("*.parquet"):
        if partitioned:
            found += any(unquote(part) in {f"{column}={v}" for v in wanted} for part in path.parts)
        else:
            col = pq.read_table(path, columns=[column]).column(column).to_pylist()
            found += any(v in wanted for v in col)
    return found


def _ids(lake: Lake, query: str, params: list) -> list[str]:
    return sorted(lake.sql(query, params).column("job_id").to_pylist())


def _count(lake: Lake, query: str, params: list, name: str) -> int:
    return int(lake.sql(query, params).column("n")[0].as_py()) if lake.exists(name) else 0


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    return (ids[i:i + _IN_CHUNK] for i in range(0, len(ids), _IN_CHUNK))


def _delete_ids(lake: Lake, name: str, ids: Sequence[str]) -> int:
    if not ids or not lake.exists(name):
        return 0
    return sum(lake.delete(name, f"job_id IN ({', '.join(sql_literal(i) for i in chunk)})") for chunk in _chunks(ids))
