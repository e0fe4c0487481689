"""The catalog: every Delta table Tandem writes, with its Arrow schema and partition columns."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from lakehouse.errors import TableNotFoundError

_TS = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class TableDef:
    """A Delta table's name, Arrow schema, partition columns and (for merges) key columns."""

    name: str
    schema: pa.Schema
    partition_by: tuple[str, ...] = ()
    keys: tuple[str, ...] = field(default=())
    description: str = ""


def _schema(*fields: tuple) -> pa.Schema:
    return pa.schema([pa.field(name, typ, nullable) for name, typ, nullable in fields])


CATALOG: dict[str, TableDef] = {
    t.name: t
    for t in [
        TableDef(
            "documents",
            _schema(
                ("doc_id", pa.string(), False),
                ("day", pa.date32(), False),
                ("text", pa.string(), False),
                ("label", pa.string(), True),
                ("source", pa.string(), True),
                ("attributes", pa.string(), True),  # JSON object
                ("ingested_at", _TS, False),
            ),
            partition_by=("day",),
            keys=("day", "doc_id"),
            description="Input documents for batch scoring, one partition per day.",
        ),
        TableDef(
            "predictions",
            _schema(
                ("request_id", pa.string(), False),
                ("trace_id", pa.string(), True),
                ("tenant", pa.string(), False),
                ("workflow", pa.string(), True),
                ("workflow_version", pa.int32(), True),
                ("step", pa.string(), True),
                ("model", pa.string(), False),
                ("version", pa.string(), True),
                ("arm", pa.string(), True),  # stable | canary | shadow | pinned | fallback
                ("input_hash", pa.string(), True),
                ("output_summary", pa.string(), True),  # JSON
                ("latency_ms", pa.float64(), True),
                ("status", pa.string(), False),  # ok | error | fallback | skipped
                ("error", pa.string(), True),
                ("cached", pa.bool_(), True),
                ("ts", _TS, False),
                ("day", pa.date32(), False),
                # Added later (nullable, at the end): appends merge them into tables created before.
                # timeout | upstream_error | unavailable | circuit_open | rejected | deadline | cancelled
                ("error_type", pa.string(), True),
            ),
            partition_by=("day",),
            description="Every model call of every online request (the prediction log).",
        ),
        TableDef(
            "requests",
            _schema(
                ("request_id", pa.string(), False),
                ("tenant", pa.string(), False),
                ("day", pa.date32(), False),
                ("ts", _TS, False),
                ("kind", pa.string(), False),  # sync | job_item
                ("route", pa.string(), True),  # the route template, e.g. /v1/workflows/{name}/run
                ("job_id", pa.string(), True),  # job items only
                ("item", pa.int64(), True),  # the item's index in its job
                ("workflow", pa.string(), True),
                ("workflow_version", pa.int32(), True),
                ("steps", pa.string(), True),  # JSON [{step, model, version, arm, status, error_type, cached}]
                ("status", pa.string(), False),  # ok | degraded | error
                ("problem_type", pa.string(), True),  # the problem+json type of an error
                ("http_status", pa.int32(), True),
                ("latency_ms", pa.float64(), True),
                ("trace_id", pa.string(), True),
                ("pii_policy", pa.string(), False),  # keep | redact | hash | drop: how `input` was stored
                ("input", pa.string(), True),  # JSON, as the tenant's PII policy allows (null for drop)
                ("input_hash", pa.string(), True),  # keyed hash of the raw input (joins equal inputs)
                ("output", pa.string(), True),  # JSON final output, embedding vectors left out
                ("embeddings", pa.list_(pa.list_(pa.float32())), True),  # the final output's vectors
            ),
            partition_by=("tenant", "day"),
            keys=("request_id",),
            description="One row per online request and per async-job item: what was asked, by whom, "
                        "through which versions, and the final answer.",
        ),
        TableDef(
            "batch_predictions",
            _schema(
                ("day", pa.date32(), False),
                ("doc_id", pa.string(), False),
                ("workflow", pa.string(), False),
                ("workflow_version", pa.int32(), False),
                ("output", pa.string(), True),  # JSON
                ("model_versions", pa.string(), False),  # JSON {step: "model@version"}
                ("status", pa.string(), False),
                ("error", pa.string(), True),
                ("run_id", pa.string(), True),
                ("scored_at", _TS, False),
            ),
            partition_by=("day",),
            keys=("day", "doc_id", "workflow"),
            description="Workflow outputs of the daily batch scoring.",
        ),
        TableDef(
            "model_versions",
            _schema(
                ("name", pa.string(), False),
                ("version", pa.string(), False),
                ("task", pa.string(), False),
                ("artifact_uri", pa.string(), False),
                ("sha256", pa.string(), False),
                ("schema_hash", pa.string(), False),
                ("training_data_hash", pa.string(), True),
                ("metrics", pa.string(), True),  # JSON
                ("lineage", pa.string(), True),  # JSON
                ("description", pa.string(), True),
                ("created_by", pa.string(), True),
                ("created_at", _TS, False),
            ),
            keys=("name", "version"),
            description="Immutable model versions.",
        ),
        TableDef(
            "registry_events",
            _schema(
                ("event_id", pa.string(), False),
                ("name", pa.string(), False),
                ("alias", pa.string(), False),  # stable | canary | shadow
                ("version", pa.string(), True),  # null clears the alias
                ("weight", pa.float64(), True),  # canary traffic share in [0, 1]
                ("actor", pa.string(), False),
                ("reason", pa.string(), True),
                ("at", _TS, False),
            ),
            description="Append-only alias moves; the registry's state is their fold.",
        ),
        TableDef(
            "canary_evaluations",
            _schema(
                ("eval_id", pa.string(), False),
                ("model", pa.string(), False),
                ("stable_version", pa.string(), False),
                ("canary_version", pa.string(), False),
                ("canary_weight", pa.float64(), True),
                ("window_start", _TS, True),
                ("window_end", _TS, True),
                ("stable_requests", pa.int64(), True),
                ("canary_requests", pa.int64(), True),
                ("stable_error_rate", pa.float64(), True),
                ("canary_error_rate", pa.float64(), True),
                ("stable_p95_ms", pa.float64(), True),
                ("canary_p95_ms", pa.float64(), True),
                ("output_distance", pa.float64(), True),
                ("quality_stable", pa.float64(), True),
                ("quality_canary", pa.float64(), True),
                ("quality_delta", pa.float64(), True),
                ("passed", pa.bool_(), False),  # decision == "pass"
                ("reasons", pa.string(), True),  # JSON list: breaches, then what is missing, then notes
                ("run_id", pa.string(), True),
                ("evaluated_at", _TS, False),
                # Added later (nullable, at the end): appends merge them into tables created before.
                ("decision", pa.string(), True),  # rollback | hold | pass (assets.canary_guard)
                ("task", pa.string(), True),
                ("confidence", pa.float64(), True),  # of every one-sided test and bound below
                ("error_rate_p_value", pa.float64(), True),  # canary error rate > stable's, two-proportion z
                ("replay_rows", pa.int64(), True),  # items replayed through both versions
                ("agreement", pa.float64(), True),  # cosine (embed), label (classify), top-1 (rerank)
                ("agreement_upper", pa.float64(), True),  # its upper confidence bound
                ("topk_overlap", pa.float64(), True),  # rerank
                ("accuracy_drop_lower", pa.float64(), True),  # classify: lower bound of the paired drop
                ("guard_action", pa.string(), True),  # the guard's move: rollback | hold | advance | promote
                ("next_weight", pa.float64(), True),  # for advance
                ("evidence", pa.string(), True),  # JSON: every number the decision used
            ),
            description="Canary-versus-stable comparisons: the evidence, the decision and the guard's move.",
        ),
        TableDef(
            "replay_evaluations",
            _schema(
                ("replay_id", pa.string(), False),
                ("model", pa.string(), False),
                ("task", pa.string(), False),
                ("candidate_version", pa.string(), False),
                ("baseline_versions", pa.string(), True),  # JSON list: the versions that answered the log
                ("filters", pa.string(), True),  # JSON {since, tenant, limit}
                ("tenant", pa.string(), True),  # the tenant filter (purge removes its evaluations)
                ("n_replayed", pa.int64(), False),
                ("n_skipped", pa.int64(), False),
                ("skipped", pa.string(), True),  # JSON {reason: count}
                ("agreement", pa.float64(), True),  # cosine (embed), label (classify), top-1 (rerank)
                ("agreement_upper", pa.float64(), True),  # its upper confidence bound (the guard's statistic)
                ("topk_overlap", pa.float64(), True),  # rerank
                ("score_distance", pa.float64(), True),  # mean per-item distance of scores / vectors
                ("candidate_p50_ms", pa.float64(), True),  # in-process, per item
                ("candidate_p95_ms", pa.float64(), True),
                ("logged_p50_ms", pa.float64(), True),  # the logged requests' latency (over HTTP)
                ("logged_p95_ms", pa.float64(), True),
                ("confidence", pa.float64(), True),
                ("passed", pa.bool_(), False),
                ("reasons", pa.string(), True),  # JSON list
                ("run_id", pa.string(), True),
                ("evaluated_at", _TS, False),
                ("evidence", pa.string(), True),  # JSON: every number the decision used
            ),
            keys=("replay_id",),
            description="Logged requests replayed through a candidate version before it takes traffic "
                        "(aggregates only: no inputs or outputs).",
        ),
        TableDef(
            "drift_metrics",
            _schema(
                ("day", pa.date32(), False),
                ("model", pa.string(), False),
                ("version", pa.string(), True),
                ("feature", pa.string(), False),
                ("metric", pa.string(), False),
                ("value", pa.float64(), False),
                ("warn_threshold", pa.float64(), True),
                ("fail_threshold", pa.float64(), True),
                ("status", pa.string(), False),  # ok | warn | fail
                ("run_id", pa.string(), True),
                ("computed_at", _TS, False),
            ),
            partition_by=("day",),
            description="Daily distribution distances against each version's reference window.",
        ),
        TableDef(
            "jobs",
            _schema(
                ("job_id", pa.string(), False),
                ("tenant", pa.string(), False),
                ("workflow", pa.string(), False),
                ("status", pa.string(), False),  # queued | running | succeeded | failed
                ("n_inputs", pa.int64(), False),
                ("n_done", pa.int64(), False),
                ("attempts", pa.int32(), False),
                ("idempotency_key", pa.string(), True),
                ("request_hash", pa.string(), True),
                ("run_id", pa.string(), True),
                ("error", pa.string(), True),
                ("submitted_at", _TS, False),
                ("updated_at", _TS, False),
            ),
            keys=("job_id",),
            description="Async jobs submitted through the gateway.",
        ),
        TableDef(
            "job_inputs",
            _schema(
                ("job_id", pa.string(), False),
                ("idx", pa.int64(), False),
                ("input", pa.string(), False),  # JSON
            ),
            description="The inputs of each async job.",
        ),
        TableDef(
            "job_results",
            _schema(
                ("job_id", pa.string(), False),
                ("idx", pa.int64(), False),
                ("output", pa.string(), True),  # JSON
                ("model_versions", pa.string(), True),  # JSON
                ("status", pa.string(), False),
                ("error", pa.string(), True),
                ("finished_at", _TS, False),
            ),
            keys=("job_id", "idx"),
            description="Per-input results of async jobs.",
        ),
        TableDef(
            "alerts",
            _schema(
                ("alert_id", pa.string(), False),
                ("kind", pa.string(), False),  # drift | canary | ...
                ("model", pa.string(), True),
                ("version", pa.string(), True),
                ("severity", pa.string(), False),
                ("message", pa.string(), False),
                ("run_id", pa.string(), True),
                ("at", _TS, False),
            ),
            description="Alerts raised by sensors (drift, canary).",
        ),
    ]
}


def get_table(name: str) -> TableDef:
    try:
        return CATALOG[name]
    except KeyError:
        raise TableNotFoundError(
            f"no table {name!r} in the catalog; known tables: {', '.join(sorted(CATALOG))}"
        ) from None
