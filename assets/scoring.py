"""The `batch_predictions` asset: a day's documents through a workflow, in-process, with stable versions.

Re-runs and backfills are idempotent: each run replaces exactly its (day, workflow) slice.
"""

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import pyarrow.compute as pc

from assets.documents import documents
from assets.partitions import DAILY, partition_day
from assets.resources import LakeResource, ModelLoader, RegistryResource, TandemConfig
from lakehouse import sql_literal
from models.executor import BatchResult, run_workflow_batch
from models.registry import Registry
from models.workflows import WorkflowSpec


class ScoringConfig(dg.Config):
    """Which workflow scores the documents, and how many instances go into one model call."""

    workflow: str = "enrich"
    batch_size: int = 64
    input_field: str = "text"  # the workflow request field that receives each document's text


def stable_versions(registry: Registry, spec: WorkflowSpec) -> dict[str, str]:
    """The stable version of every model `spec` may call (fallback models included when they have one)."""
    states = registry.states()
    out: dict[str, str] = {}
    for model in sorted(spec.models()):
        stable = states[model].stable if model in states else None
        if stable is None and model in {s.model for s in spec.steps}:
            raise dg.Failure(
                f"workflow {spec.name!r} calls {model!r}, which has no stable version; "
                f"promote one with `tandem models promote {model} VERSION`"
            )
        if stable is not None:
            out[model] = stable
    return out


def prediction_rows(
    day: date, doc_ids: list[str], spec: WorkflowSpec, result: BatchResult, run_id: str, now: datetime
) -> list[dict[str, Any]]:
    """`batch_predictions` rows: one per document, with the versions that produced it."""
    return [
        {
            "day": day, "doc_id": doc_id, "workflow": spec.name, "workflow_version": spec.version,
            "output": json.dumps(r.output, sort_keys=True) if r.output is not None else None,
            "model_versions": json.dumps(r.model_versions, sort_keys=True),
            "status": r.status, "error": r.error, "run_id": run_id, "scored_at": now,
        }
        for doc_id, r in zip(doc_ids, result.rows)
    ]


def run_metadata(result: BatchResult, versions: Mapping[str, str]) -> dict[str, Any]:
    return {
        "rows": len(result.rows),
        "ok": result.count("ok"),
        "degraded": result.count("degraded"),
        "errors": result.count("error"),
        "rows_per_s": round(result.rows_per_s, 1),
        "elapsed_s": round(result.elapsed_s, 3),
        "model_calls": result.model_calls,
        "versions": dict(versions),
    }


@dg.asset(partitions_def=DAILY, deps=[documents], group_name="batch", kinds={"delta", "pytorch"})
def batch_predictions(
    context: dg.AssetExecutionContext,
    config: ScoringConfig,
    tandem: TandemConfig,
    lake: LakeResource,
    registry: RegistryResource,
    models: ModelLoader,
) -> dg.MaterializeResult:
    """The day's documents run through a workflow in-process with the registry's stable versions."""
    day = partition_day(context)
    spec = tandem.workflow(config.workflow)
    reg = registry.registry()
    versions = stable_versions(reg, spec)
    the_lake = lake.lake()
    docs = the_lake.read("documents", filter=pc.field("day") == day, columns=["doc_id", "text"])
    doc_ids, texts = docs.column("doc_id").to_pylist(), docs.column("text").to_pylist()
    context.log.info(f"scoring {len(texts)} documents of {day} with {spec.name} v{spec.version}: {versions}")
    result = run_workflow_batch(
        spec, [{config.input_field: t} for t in texts], models.resolver(registry), versions,
        batch_size=config.batch_size,
    )
    rows = prediction_rows(day, doc_ids, spec, result, context.run.run_id, datetime.now(UTC))
    the_lake.replace_where(
        "batch_predictions", rows, f"day = {sql_literal(day)} AND workflow = {sql_literal(spec.name)}"
    )
    if result.count("error"):
        context.log.warning(f"{result.count('error')} of {len(rows)} documents failed; see their `error` column")
    return dg.MaterializeResult(metadata={**run_metadata(result, result.versions), "workflow": spec.name})
