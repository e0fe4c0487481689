"""`tandem tenants ...`: tenants, their keys and limits (one parser: `models.tenancy`)."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from orchestration._cli_common import console, friendly, settings, table

tenants_app = typer.Typer(help="Tenants and their API keys.", no_args_is_help=True)

def _tenant_store():
    from models.tenancy import TenantStore

    return TenantStore(settings().tenants_file)


def _pins(pin: list[str] | None) -> dict[str, str] | None:
    if pin is None:
        return None
    bad = [p for p in pin if "=" not in p]
    if bad:
        from models.errors import TenancyError

        raise TenancyError(f"--pin takes MODEL=VERSION, got {bad[0]!r}")
    return dict(p.split("=", 1) for p in pin)


def _csv(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


_SCOPES_HELP = "Comma-separated: predict,jobs,admin"
_WORKFLOWS_HELP = "Comma-separated workflow names, or *"
_PII_HELP = "What the request log keeps of inputs: keep, redact, hash or drop."


@tenants_app.command("create")
@friendly
def tenants_create(
    tenant_id: str,
    name: Annotated[str | None, typer.Option(help="Display name (default: the id).")] = None,
    scopes: Annotated[str, typer.Option(help=_SCOPES_HELP)] = "predict",
    workflows: Annotated[str, typer.Option(help=_WORKFLOWS_HELP)] = "*",
    rate: Annotated[float, typer.Option(help="Requests per second (token bucket rate).")] = 20.0,
    burst: Annotated[int, typer.Option(help="Token bucket size.")] = 40,
    daily_quota: Annotated[int | None, typer.Option(help="Requests per UTC day (default: unlimited).")] = None,
    max_in_flight: Annotated[
        int | None, typer.Option(help="Requests in flight at once per gateway (default: the gateway's).")] = None,
    retention_days: Annotated[int, typer.Option(help="Days its request/prediction records are kept.")] = 30,
    pii: Annotated[str, typer.Option(help=_PII_HELP)] = "redact",
    pin: Annotated[list[str] | None, typer.Option(help="Model pin MODEL=VERSION (repeatable).")] = None,
) -> None:
    """Create a tenant and print its API key (shown once)."""
    _, key = _tenant_store().create(
        tenant_id, name=name, scopes=set(_csv(scopes)), workflows=_csv(workflows), rate_per_s=rate, burst=burst,
        daily_quota=daily_quota, max_in_flight=max_in_flight, retention_days=retention_days, pii=pii,
        model_pins=_pins(pin) or {})
    console.print(f"tenant {tenant_id} created; API key (store it now, it is not kept):\n{key}", highlight=False)


@tenants_app.command("update")
@friendly
def tenants_update(
    tenant_id: str,
    name: Annotated[str | None, typer.Option(help="Display name.")] = None,
    scopes: Annotated[str | None, typer.Option(help=_SCOPES_HELP)] = None,
    workflows: Annotated[str | None, typer.Option(help=_WORKFLOWS_HELP)] = None,
    rate: Annotated[float | None, typer.Option(help="Requests per second.")] = None,
    burst: Annotated[int | None, typer.Option(help="Token bucket size.")] = None,
    daily_quota: Annotated[int | None, typer.Option(help="Requests per UTC day.")] = None,
    unlimited: Annotated[bool, typer.Option("--unlimited", help="Remove the daily quota.")] = False,
    max_in_flight: Annotated[int | None, typer.Option(help="Requests in flight at once per gateway.")] = None,
    retention_days: Annotated[int | None, typer.Option(help="Days its records are kept.")] = None,
    pii: Annotated[str | None, typer.Option(help=_PII_HELP)] = None,
    pin: Annotated[list[str] | None, typer.Option(help="Model pin MODEL=VERSION (repeatable; replaces all).")] = None,
) -> None:
    """Change some of a tenant's settings (a running gateway picks them up within seconds)."""
    changes = {"name": name, "scopes": None if scopes is None else set(_csv(scopes)), "workflows": _csv(workflows),
               "rate_per_s": rate, "burst": burst, "daily_quota": daily_quota, "max_in_flight": max_in_flight,
               "retention_days": retention_days, "pii": pii, "model_pins": _pins(pin)}
    changes = {k: v for k, v in changes.items() if v is not None}
    if unlimited:
        changes["daily_quota"] = None
    if not changes:
        raise typer.BadParameter("nothing to change; pass at least one option (see --help)")
    tenant = _tenant_store().update(tenant_id, **changes)
    console.print(f"tenant {tenant.id} updated: {', '.join(sorted(changes))}", highlight=False)


@tenants_app.command("list")
@friendly
def tenants_list() -> None:
    """Tenants, their scopes and limits."""
    rows = [[t.id, ",".join(sorted(t.scopes)), ",".join(t.workflows), t.rate_per_s, t.burst, t.daily_quota,
             t.max_in_flight, t.retention_days, t.pii, json.dumps(t.model_pins), len(t.key_hashes)]
            for t in _tenant_store().list()]
    table("tenants", ["id", "scopes", "workflows", "rate/s", "burst", "daily quota", "in flight", "retention d",
                       "pii", "pins", "keys"], rows)


@tenants_app.command("show")
@friendly
def tenants_show(tenant_id: str) -> None:
    """One tenant's settings as JSON (key hashes left out)."""
    tenant = _tenant_store().get(tenant_id)
    print(tenant.model_dump_json(exclude={"key_hashes"}, indent=2))


@tenants_app.command("rotate-key")
@friendly
def tenants_rotate(tenant_id: str, keep_old: bool = False) -> None:
    """Issue a new API key (the old one stops working unless --keep-old)."""
    key = _tenant_store().rotate_key(tenant_id, keep_old=keep_old)
    console.print(f"new API key for {tenant_id}:\n{key}", highlight=False)


@tenants_app.command("delete")
@friendly
def tenants_delete(tenant_id: str) -> None:
    """Remove a tenant and all its keys (its records stay until retention removes them)."""
    _tenant_store().delete(tenant_id)
    console.print(f"tenant {tenant_id} deleted", highlight=False)



def _remove_job_partitions(job_ids: list[str]) -> str:
    """Delete the async-job dynamic partitions of `job_ids` from this home's Dagster instance."""
    home = settings().dagster_home
    if not (home / "dagster.yaml").exists():
        return f"no Dagster instance at {home}: no job partitions to remove"
    from dagster import DagsterInstance

    from assets.partitions import ASYNC_JOBS

    with DagsterInstance.from_config(str(home)) as instance:
        existing = set(instance.get_dynamic_partitions(ASYNC_JOBS.name))
        gone = [j for j in job_ids if j in existing]
        for job_id in gone:
            instance.delete_dynamic_partition(ASYNC_JOBS.name, job_id)
        left = len(set(job_ids) & set(instance.get_dynamic_partitions(ASYNC_JOBS.name)))
    return f"removed {len(gone)} async-job partition(s) from Dagster; {left} left"


@tenants_app.command("purge")
@friendly
def tenants_purge(
    tenant_id: str,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete every record of a tenant from every table, vacuum the old files, and prove nothing is left."""
    from lakehouse.retention import JOB_TABLES, TENANT_TABLES, purge_tenant
    from orchestration._cli_common import platform, say

    tables = ", ".join([*TENANT_TABLES, *JOB_TABLES])
    if not yes and not typer.confirm(f"Delete every record of tenant {tenant_id!r} from {tables}, and the old "
                                     "files holding them (no time travel back)?"):
        raise typer.Exit(1)
    report = purge_tenant(platform().lake, tenant_id)
    say(_remove_job_partitions(report.job_ids))
    rows = [[name, report.deleted.get(name, 0), report.files_removed.get(name, 0), report.remaining_rows.get(name),
             "not checked (object store)" if report.remaining_files.get(name, 0) is None
             else report.remaining_files.get(name)] for name in report.deleted]
    table(f"purge of tenant {tenant_id} ({len(report.job_ids)} jobs)",
          ["table", "rows deleted", "files vacuumed", "rows left (SQL count)", "files on disk still holding its rows"],
          rows)
    if not report.clean:
        console.print(f"[red]error:[/red] tenant {tenant_id!r} still has records: {report.remaining_rows} "
                      f"(files: {report.remaining_files})", highlight=False)
        raise typer.Exit(1)
    say(f"[green]purged:[/green] every table counts 0 rows of {tenant_id!r} and no file on disk holds one")
