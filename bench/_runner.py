"""Run cases in a fixed order, write one JSON per case and print the table."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from pathlib import Path

from rich.console import Console

from bench import batch, ceiling, online, serving, sql
from bench._lab import Lab, RunConfig, usable_cores
from bench._report import CaseResult, machine_facts, new_result, render_table, write_result

Case = Callable[[Lab], CaseResult]

CASES: dict[str, Case] = {
    "overhead": online.overhead,
    "serve": online.serve,
    "peer": serving.peer,
    "lone": serving.lone,
    "batching": online.batching,
    "naive": online.naive,
    "workflow": online.workflow,
    "cache": online.cache,
    "logging": online.logging,
    "isolation": online.isolation,
    "batch": batch.batch,
    "ceiling": ceiling.ceiling,
    "sql": sql.sql,
}
"""Every case, in the order a run takes them (servers of the tiny home first, in-process cases last)."""



def run(names: list[str], config: RunConfig, out_dir: Path, *, console: Console | None = None,
        force_python_load: bool = False) -> list[CaseResult]:
    """Run `names` (in CASES order), writing `out_dir/<case>.json` after each; returns the results."""
    console = console or Console()

    def say(message: str) -> None:
        console.print(message, highlight=False, soft_wrap=True)

    unknown = sorted(set(names) - set(CASES))
    if unknown:
        raise ValueError(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(CASES)}")
    machine = machine_facts(torch_threads=usable_cores())
    lab = Lab(config, say, force_python_load=force_python_load)
    machine["load_generator"] = lab.load.tool
    results = []
    try:
        selected = [n for n in CASES if n in names]
        for name in selected:
            say(f"[bold]{name}[/bold]")
            started = time.perf_counter()
            try:
                _start_processes(lab, name)
                result = CASES[name](lab)
            except Exception as exc:  # noqa: BLE001 - a broken case must not lose the others' results; reported
                console.print(traceback.format_exc(), markup=False, highlight=False, soft_wrap=True)
                result = new_result(name)
                result.skipped = f"failed: {type(exc).__name__}: {exc}"
            elapsed = time.perf_counter() - started
            path = write_result(out_dir, result, machine, quick=config.quick, elapsed_s=elapsed)
            say(f"  {name}: ratio {result.ratio if result.ratio is None else round(result.ratio, 3)} "
                f"(target {result.target}) in {elapsed:.0f} s -> {path}")
            results.append(result)
    finally:
        lab.close()
    render_table(results, console)
    return results


def _start_processes(lab: Lab, case: str) -> None:
    """Run `case` beside exactly the processes it uses and its home's `online.SHARED` ones.

    Processes of other homes stop; so do side apps of this home that `case` does not use (an idle
    LitServe app polls its queues at ~0.15-0.2 cores, which the measured side would pay); a later
    case that needs one starts it again.
    """
    if case not in online.NEEDS:
        lab.release(set())
        return
    kind, names = online.NEEDS[case]
    lab.release({kind})
    lab.stop_except(kind, {*names, *online.SHARED})
    lab.need(kind, *sorted(names))
