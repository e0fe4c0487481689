"""`tandem requests ...`: read the request record (`requests` table) back, by request id."""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer

from orchestration._cli_common import console, err, friendly, say, settings, table

requests_app = typer.Typer(help="The request record: one row per request and async-job item.",
                           no_args_is_help=True)


def _find(request_id: str, tenant: str | None) -> list[dict[str, Any]]:
    import pyarrow.compute as pc

    from lakehouse import Lake
    from models.record import public_record

    s = settings()
    lake = Lake(s.lake_root, s.storage_options or None)
    if lake.version("requests") is None:
        return []
    where = pc.field("request_id") == request_id
    if tenant is not None:
        where = (pc.field("tenant") == tenant) & where  # prunes the read to the tenant's partitions
    rows = sorted(lake.read("requests", filter=where).to_pylist(), key=lambda r: r["ts"], reverse=True)
    return [public_record(r) for r in rows]


def summarise(value: Any, *, head: int = 4) -> Any:
    """`value` with every long list of numbers (an embedding) shown as `<384 floats: 0.0123, ...>`."""
    if isinstance(value, dict):
        return {k: summarise(v, head=head) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) > head and all(isinstance(x, int | float) for x in value):
            shown = ", ".join(f"{x:.4f}" for x in value[:head])
            return f"<{len(value)} floats: {shown}, ...>"
        return [summarise(v, head=head) for v in value]
    return value


@requests_app.command("show")
@friendly
def requests_show(
    request_id: str,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's record (required if several share the id).")]
    = None,
    as_json: Annotated[bool, typer.Option("--json", help="The full record as JSON, vectors included.")] = False,
) -> None:
    """Show one request: who, when, status, the steps, the input (as its PII policy stored it), the output."""
    found = _find(request_id, tenant)
    if not found:
        err.print(f"[red]error:[/red] no request {request_id!r}" + (f" for tenant {tenant!r}" if tenant else "")
                  + " in the record (the gateway writes it within seconds of the answer)", highlight=False)
        raise typer.Exit(1)
    tenants = sorted({r["tenant"] for r in found})
    if len(tenants) > 1:
        err.print(f"[red]error:[/red] request id {request_id!r} belongs to several tenants "
                  f"({', '.join(tenants)}); pass --tenant", highlight=False)
        raise typer.Exit(1)
    rec = found[0]
    if as_json:
        console.print_json(json.dumps(rec, default=str))
        return
    what = rec["workflow"] or rec["route"] or ""
    say(f"[bold]{rec['request_id']}[/bold]  tenant {rec['tenant']}  {rec['ts']}  {rec['kind']}  {what}")
    problem = f"  {rec['problem_type']}" if rec["problem_type"] else ""
    http = f"  HTTP {rec['http_status']}" if rec["http_status"] is not None else ""
    latency = f"  {rec['latency_ms']:.1f} ms" if rec["latency_ms"] is not None else ""
    say(f"status {rec['status']}{http}{problem}{latency}  trace {rec['trace_id'] or '-'}")
    if rec["job_id"]:
        say(f"job {rec['job_id']} item {rec['item']}")
    if rec["steps"]:
        table("steps", ["step", "model", "version", "arm", "status", "cached"],
              [[s.get("step"), s.get("model"), s.get("version"), s.get("arm"), s.get("status"), s.get("cached")]
               for s in rec["steps"]])
    say(f"input ({rec['pii_policy']}): " + ("not stored" if rec["input"] is None
                                            else json.dumps(rec["input"], ensure_ascii=False)))
    say("output: " + ("none" if rec["output"] is None
                      else json.dumps(summarise(rec["output"]), ensure_ascii=False, indent=2)))
