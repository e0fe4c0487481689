"""`tandem replay MODEL --candidate VERSION`: logged requests through a candidate in-process (assets.offline_replay)."""

from __future__ import annotations

import json
import threading
from datetime import date
from typing import Annotated

import typer

from orchestration._cli_common import console, friendly, platform, say, settings, table


def _resolver(p):
    """`(model, version) -> op`, each loaded once from the artifact store (digest checked)."""
    from models.ops import load_op

    cache, lock = {}, threading.Lock()

    def resolve(model: str, version: str):
        with lock:
            if (model, version) not in cache:
                mv = p.registry.get(model, version)
                cache[(model, version)] = load_op(p.store.fetch(mv.artifact_uri, mv.sha256))
            return cache[(model, version)]

    return resolve


def _day(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"--since takes a UTC day like 2026-11-01, got {value!r}") from None


@friendly
def replay(
    model: Annotated[str, typer.Argument(help="The model whose logged calls are replayed, e.g. classifier.")],
    candidate: Annotated[str, typer.Option(help="The version to evaluate, e.g. 3.")],
    since: Annotated[str | None, typer.Option(help="Only requests logged on or after this UTC day (YYYY-MM-DD).")]
    = None,
    tenant: Annotated[str | None, typer.Option(help="Only this tenant's requests.")] = None,
    limit: Annotated[int | None, typer.Option(min=1, help="At most the newest N requests that called MODEL.")] = None,
    min_replay: Annotated[int, typer.Option(min=1, help="Items a passing evaluation needs at least.")] = 30,
    batch_size: Annotated[int, typer.Option(min=1, help="Items per in-process batch.")] = 32,
) -> None:
    """Replay logged requests through a candidate version in-process and record the offline evaluation.

    Compares the candidate's answers with what the serving version answered (agreement with its
    confidence bound, score distance, latency) into `replay_evaluations`; a pass lets
    `tandem models canary` send it traffic. Exits 1 when the evaluation did not pass.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from assets.offline_replay import ReplayFilters, ReplayThresholds, evaluate_candidate
    from models.workflows import load_workflows

    p = platform()
    filters = ReplayFilters(since=_day(since), tenant=tenant, limit=limit)
    thresholds = ReplayThresholds(min_replay=min_replay, batch_size=batch_size)
    say(f"replaying logged {model} calls through {model}@{candidate} in-process "
        f"(since {since or 'the start'}, tenant {tenant or 'any'}, limit {limit or 'none'})")
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console, transient=False) as bar:
        task = bar.add_task(f"{model}@{candidate}", total=None)
        row = evaluate_candidate(p.lake, p.registry, _resolver(p), load_workflows(settings().workflow_dir), model,
                                 candidate, filters, thresholds,
                                 progress=lambda done, total: bar.update(task, completed=done, total=total))
    p.lake.append("replay_evaluations", [row])
    _report(row)
    if not row["passed"]:
        raise typer.Exit(1)


def _fmt(value, unit: str = "") -> str:
    return "-" if value is None else f"{value:.4f}{unit}" if not unit else f"{value:.1f}{unit}"


def _report(row: dict) -> None:
    ev = json.loads(row["evidence"])
    table(f"replay {row['replay_id'][:12]}: {row['model']}@{row['candidate_version']} ({row['task']})",
          ["measure", "value"], [
              ["answered by (baseline)", ", ".join(json.loads(row["baseline_versions"])) or "-"],
              ["requests considered", ev.get("requests_considered")],
              ["items replayed", row["n_replayed"]],
              ["items skipped", row["n_skipped"]],
              ["agreement", _fmt(row["agreement"])],
              [f"agreement upper {row['confidence']:.0%} bound", _fmt(row["agreement_upper"])],
              ["top-k overlap", _fmt(row["topk_overlap"])],
              ["score distance", _fmt(row["score_distance"])],
              ["candidate per item p50 / p95 (in-process)",
               f"{_fmt(row['candidate_p50_ms'], ' ms')} / {_fmt(row['candidate_p95_ms'], ' ms')}"],
              ["logged request p50 / p95 (HTTP)",
               f"{_fmt(row['logged_p50_ms'], ' ms')} / {_fmt(row['logged_p95_ms'], ' ms')}"],
              ["candidate failures", ev.get("candidate_failures")],
          ])
    for why, n in sorted(json.loads(row["skipped"]).items()):
        say(f"  skipped {n}: {why}")
    reasons = json.loads(row["reasons"]) if row["reasons"] else []
    model, v = row["model"], row["candidate_version"]
    if row["passed"]:
        say(f"[green]passed[/green]: {model}@{v} may take canary traffic: tandem models canary {model} {v} --weight 0.1")
    else:
        for r in reasons:
            if not r.startswith("skipped "):
                say(f"  - {r}")
        say(f"[red]not passed[/red]: the offline gate refuses {model}@{v} (recorded as replay {row['replay_id']})")
