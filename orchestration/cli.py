"""The `tandem` command line: models, workflows, SQL, tenants, serving and the local launcher."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from orchestration._cli_common import Actor, Reason, console, err, friendly, platform, say, settings, table
from orchestration.cli_replay import replay
from orchestration.cli_requests import requests_app
from orchestration.cli_tenants import tenants_app

app = typer.Typer(help="Tandem: ML inference orchestration, online and batch.", no_args_is_help=True,
                  pretty_exceptions_enable=False)
models_app = typer.Typer(help="The model registry: versions and aliases.", no_args_is_help=True)
workflows_app = typer.Typer(help="Workflow specs.", no_args_is_help=True)
serve_app = typer.Typer(help="Run one component in the foreground.", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(workflows_app, name="workflows")
app.add_typer(tenants_app, name="tenants")
app.add_typer(requests_app, name="requests")
app.add_typer(serve_app, name="serve")
app.command()(replay)

def _state_line(state) -> str:
    """One readable line for a model's alias state, e.g. `classifier: stable 1 · canary 2 at 10% · no shadow`."""
    parts = [f"stable {state.stable}" if state.stable else "no stable version"]
    parts.append(f"canary {state.canary} at {state.canary_weight:.0%}" if state.canary else "no canary")
    parts.append(f"shadow {state.shadow}" if state.shadow else "no shadow")
    return f"{state.name}: " + " · ".join(parts)


Wait = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait until the running model servers have loaded it.")]
Force = Annotated[bool, typer.Option(help="Record the alias even if no running model server can serve it.")]
WaitTimeout = Annotated[float, typer.Option(help="Seconds --wait waits at most.")]


def _move_alias(name: str, version: str, move, *, wait: bool, force: bool, timeout: float) -> None:
    """Check a server can serve `version`, move the alias, then wait for (or explain) the load."""
    from orchestration.serving import NotServableError, check_servable, wait_until_loaded

    s = settings()
    reg = platform().registry
    target = reg.resolve(name, version).version
    try:
        servers = check_servable(s, name)
    except NotServableError:
        if not force:
            raise
        servers = []  # forced: recorded anyway, loaded by the next `tandem up`
    state = move(reg, target)
    say(_state_line(state))
    if not servers:
        if not force:
            say("the platform is not running; `tandem up` serves this version")
        return
    if all(target in r.loaded for r in servers):
        say(f"{name}@{target} is loaded on {len(servers)} server(s) and takes traffic now")
    elif wait:
        say(f"waiting for {name}@{target} to load on the model server(s) ...")
        waited = wait_until_loaded(s, name, target, timeout_s=timeout, say=say)
        say(f"[green]{name}@{target} loaded in {waited:.0f} s[/green]; the gateway routes to it within a second")
    else:
        say(f"the model server is loading {name}@{target}; the gateway routes to it once loaded "
             f"(`tandem models status {name}`, or pass --wait next time)")


@app.command()
@friendly
def init(corpus_size: Annotated[int, typer.Option(help="Demo corpus size for the classifier.")] = 4000) -> None:
    """Create TANDEM_HOME and register the reference models (safe to run again)."""
    from orchestration.bootstrap import init_home

    s = settings()
    init_home(s, corpus_size=corpus_size, say=lambda m: console.print(m, highlight=False, soft_wrap=True))
    console.print(f"[green]ready:[/green] {s.home.absolute()}")


# --- models --------------------------------------------------------------------------------


@models_app.command("list")
@friendly
def models_list() -> None:
    """Models with their versions and aliases."""
    rows = [[m.name, m.task, ", ".join(m.versions), m.state.stable, m.state.canary,
             f"{m.state.canary_weight:.0%}" if m.state.canary else "", m.state.shadow]
            for m in platform().registry.list_models()]
    table("models", ["name", "task", "versions", "stable", "canary", "weight", "shadow"], rows)


@models_app.command("show")
@friendly
def models_show(name: str, version: Annotated[str | None, typer.Argument()] = None) -> None:
    """A model's versions (or one version in full)."""
    reg = platform().registry
    if version:
        console.print_json(json.dumps(asdict(reg.resolve(name, version)), default=str))
        return
    rows = [[v.version, v.sha256[:12], v.schema_hash[:12], json.dumps(v.metrics)[:60], v.created_at, v.description]
            for v in reg.versions(name)]
    table(f"{name}", ["version", "sha256", "schema", "metrics", "created", "description"], rows)
    say(_state_line(reg.state(name)))


@models_app.command("status")
@friendly
def models_status(name: Annotated[str | None, typer.Argument(help="One model; default: all.")] = None) -> None:
    """What the running model servers have loaded, next to where the registry's aliases point."""
    from orchestration.serving import server_reports

    reports = server_reports(settings(), name)
    if not reports:
        say("no model servers recorded: start the platform with `tandem up`")
        return
    states = platform().registry.states()
    rows = []
    for r in reports:
        st = states.get(r.model)
        aliases = _state_line(st).split(": ", 1)[1] if st else ""
        rows.append([r.model, r.url, "yes" if r.reachable else "NO", ", ".join(r.loaded), ", ".join(r.loading),
                     "; ".join(f"{v}: {why}" for v, why in r.failed.items()), aliases])
    table("model servers", ["model", "server", "up", "loaded", "loading", "failed", "registry"], rows)


@models_app.command("history")
@friendly
def models_history(name: str, limit: int = 20) -> None:
    """Alias moves, newest first."""
    rows = [[e.at, e.alias, e.version or "(cleared)", e.weight, e.actor, e.reason]
            for e in platform().registry.history(name, limit=limit)]
    table(f"{name} history", ["at", "alias", "version", "weight", "actor", "reason"], rows)


@models_app.command("register")
@friendly
def models_register(
    name: str,
    task: str,
    artifact_dir: Path,
    version: Annotated[str | None, typer.Option(help="Default: the next integer.")] = None,
    metrics: Annotated[str | None, typer.Option(help="JSON object of offline metrics.")] = None,
    description: str | None = None,
    actor: Actor = "cli",
) -> None:
    """Register an artifact directory as a new immutable version."""
    mv = platform().registry.register(name, task, artifact_dir, version=version,
                                       metrics=json.loads(metrics) if metrics else None,
                                       description=description, actor=actor)
    console.print(f"registered {mv.name}@{mv.version} sha256={mv.sha256[:16]}")
    say(f"next: tandem models canary {mv.name} {mv.version} --weight 0.1 --wait   (a running model server "
         "loads it; the gateway sends it 10% of traffic once loaded)")


@models_app.command("train")
@friendly
def models_train(
    data: Annotated[Path, typer.Argument(help="Labelled CSV, Parquet or JSONL file.")],
    text_col: str = "text",
    label_col: str = "label",
    name: str = "classifier",
    epochs: int = 30,
    promote: Annotated[bool, typer.Option(help="Make the new version stable right away.")] = False,
    actor: Actor = "cli",
) -> None:
    """Train a classifier version on your own labelled data and register it (not promoted)."""
    import tempfile

    from models.classifier import train_classifier
    from models.corpus import load_labelled

    rows = load_labelled(data, text_col=text_col, label_col=label_col)
    console.print(f"training on {len(rows)} rows from {data}")
    reg = platform().registry
    with tempfile.TemporaryDirectory() as tmp:
        result = train_classifier(rows, Path(tmp) / "clf", epochs=epochs,
                                  progress=lambda m: console.print(f"  {m}", highlight=False))
        mv = reg.register(name, "classify", result.artifact_dir, metrics=result.metrics,
                          training_data_hash=result.training_data_hash, actor=actor,
                          lineage={"data": str(data.absolute()), "encoder": "embedder@1"},
                          description=f"classifier head trained on {data.name}")
    console.print(f"registered {mv.name}@{mv.version}: accuracy={result.metrics['accuracy']:.3f} "
                  f"macro_f1={result.metrics['macro_f1']:.3f}")
    if promote:
        reg.promote(name, mv.version, actor=actor, reason="trained and promoted from the CLI")
        console.print(f"{mv.name}@{mv.version} is now stable")
    else:
        say(f"next: tandem models canary {name} {mv.version} --weight 0.1 --wait   (a running model server "
             "loads it; the gateway sends it 10% of traffic once loaded)")


@models_app.command("promote")
@friendly
def models_promote(name: str, version: str, actor: Actor = "cli", reason: Reason = None, wait: Wait = False,
                   force: Force = False, timeout: WaitTimeout = 300) -> None:
    """Make VERSION the stable version."""
    _move_alias(name, version, lambda reg, v: reg.promote(name, v, actor=actor, reason=reason),
                wait=wait, force=force, timeout=timeout)


@models_app.command("canary")
@friendly
def models_canary(
    name: str,
    version: str,
    weight: Annotated[float, typer.Option(help="Share of traffic, 0..1.")] = 0.1,
    actor: Actor = "cli",
    reason: Reason = None,
    wait: Wait = False,
    force: Annotated[bool, typer.Option(help="Move it anyway: past the offline gate (needs --reason, recorded) "
                                             "and with no running model server to serve it.")] = False,
    timeout: WaitTimeout = 300,
) -> None:
    """Route WEIGHT of traffic (sticky per routing key) to VERSION, once it passed an offline evaluation."""
    from models.gate import require_evaluation

    p = platform()
    verdict, why = require_evaluation(p.registry, p.lake, name, version, force=force, reason=reason)
    if verdict.passed:
        say(f"offline gate: [green]passed[/green] ({verdict.summary})")
    else:
        say(f"offline gate: [yellow]forced[/yellow] ({verdict.summary}); the reason is recorded in the history")
    _move_alias(name, version, lambda reg, v: reg.set_canary(name, v, weight, actor=actor, reason=why),
                wait=wait, force=force, timeout=timeout)


@models_app.command("shadow")
@friendly
def models_shadow(
    name: str,
    version: Annotated[str | None, typer.Argument(help="Omit to clear the shadow.")] = None,
    actor: Actor = "cli",
    reason: Reason = None,
    wait: Wait = False,
    force: Force = False,
    timeout: WaitTimeout = 300,
) -> None:
    """Copy traffic to VERSION off the response path."""
    if version is None:
        say(_state_line(platform().registry.set_shadow(name, None, actor=actor, reason=reason)))
        return
    _move_alias(name, version, lambda reg, v: reg.set_shadow(name, v, actor=actor, reason=reason),
                wait=wait, force=force, timeout=timeout)


@models_app.command("rollback")
@friendly
def models_rollback(name: str, actor: Actor = "cli", reason: Reason = None) -> None:
    """Clear the canary, or move stable back to the previous stable version."""
    say(_state_line(platform().registry.rollback(name, actor=actor, reason=reason)))


# --- workflows -----------------------------------------------------------------------------


@workflows_app.command("list")
@friendly
def workflows_list() -> None:
    """Shipped and configured workflows."""
    from models.workflows import load_workflows

    rows = [[w.name, w.version, " → ".join("‖".join(s.id for s in level) for level in w.levels()), w.description]
            for w in load_workflows(settings().workflow_dir).values()]
    table("workflows", ["name", "version", "steps (‖ = parallel)", "description"], rows)


@workflows_app.command("show")
@friendly
def workflows_show(name: str) -> None:
    """A workflow's spec, as validated."""
    from models.errors import WorkflowError
    from models.workflows import load_workflows

    found = load_workflows(settings().workflow_dir)
    if name not in found:
        raise WorkflowError(f"no workflow {name!r}; available: {', '.join(sorted(found))}")
    console.print_json(found[name].model_dump_json())


# --- sql -----------------------------------------------------------------------------------


@app.command()
@friendly
def sql(
    query: str,
    format: Annotated[str, typer.Option("--format", "-f", help="table | csv | json")] = "table",
    limit: Annotated[int, typer.Option(help="Rows shown in table format.")] = 100,
) -> None:
    """Run SQL (DuckDB) over the Delta tables, e.g. `tandem sql "SELECT count(*) FROM predictions"`."""
    result = platform().lake.sql(query)
    if format == "json":
        sys.stdout.write(json.dumps(result.to_pylist(), default=str) + "\n")
    elif format == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(result, sys.stdout.buffer)
    elif format == "table":
        rows = result.slice(0, limit).to_pylist()
        table(f"{result.num_rows} rows", result.column_names, [list(r.values()) for r in rows])
    else:
        err.print(f"[red]error:[/red] unknown --format {format!r}; use table, csv or json")
        raise typer.Exit(2)


# --- serving -------------------------------------------------------------------------------


@serve_app.command("model")
@friendly
def serve_model(
    name: str,
    versions: Annotated[str | None, typer.Option(help="Comma-separated; default: stable, canary, shadow.")] = None,
    host: str = "127.0.0.1",
    port: int = 8100,
    max_batch_size: int | None = None,
    batch_timeout: float | None = None,
) -> None:
    """Serve one model (its aliased versions) with LitServe and dynamic batching."""
    from online.servers import serve_model as run

    run(settings(), name, versions=versions.split(",") if versions else None, host=host, port=port,
        max_batch_size=max_batch_size, batch_timeout=batch_timeout)


@serve_app.command("gateway")
@friendly
def serve_gateway(host: str = "127.0.0.1", port: int = 8000, access_log: bool = False) -> None:
    """Serve the workflow gateway."""
    from online.gateway.serve import serve_gateway as run

    run(settings(), host, port, access_log=access_log)


@app.command()
@friendly
def up(
    host: str = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Gateway port; model servers take the ports after it.")] = 8000,
    dagster_port: Annotated[int, typer.Option(help="Dagster UI port; 0 leaves Dagster out.")] = 3000,
    replicas: Annotated[list[str] | None, typer.Option(
        help="MODEL=N model-server replicas for MODEL (repeatable), e.g. --replicas embedder=2")] = None,
) -> None:
    """Start the whole platform locally: model servers, gateway, Dagster UI + daemon (Ctrl-C stops all)."""
    from orchestration.launcher import LauncherError, run_platform

    counts: dict[str, int] = {}
    for item in replicas or []:
        model, _, n = item.partition("=")
        if not model or not n.isdigit() or int(n) < 1:
            err.print(f"[red]error:[/red] --replicas takes MODEL=N with N >= 1, e.g. embedder=2; got {item!r}")
            raise typer.Exit(2)
        counts[model] = int(n)
    try:
        code = run_platform(settings(), host=host, port=port, dagster_port=dagster_port or None, replicas=counts,
                            say=say)
    except LauncherError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def main() -> None:
    try:
        app()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    # The command is done and its output written: leave without interpreter teardown, where a native
    # library's worker threads (seen: "terminate called without an active exception" after
    # `tandem models status`, 1 run in ~10) could abort the process and turn a success into exit 134.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
