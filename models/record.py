"""The `requests` row contract, shared by the gateway (sync requests) and the async-job asset (job items).

What is stored of a request: its input as the tenant's PII policy allows (`models.pii`), a keyed hash of
the raw input, the final output as JSON with every embedding vector moved to the `embeddings` column
(float32; the output holds `"$embeddings[i]"` in its place), and what each step did. `read_record`
reads one back (pruned to the tenant's partitions); `public_record` puts the vectors back in place.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow.compute as pc

from models.pii import Privacy

if TYPE_CHECKING:
    from models.executor import BatchResult

__all__ = ["job_item_rows", "protect_output", "public_record", "read_record", "split_output", "stored_input", "with_vectors"]


def _strings(value: Any, into: set[str]) -> set[str]:
    if isinstance(value, str):
        into.add(value)
    elif isinstance(value, dict):
        for v in value.values():
            _strings(v, into)
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, into)
    return into


def _vector(value: Any) -> list[float] | None:
    if isinstance(value, str):  # OpenAI's encoding_format=base64
        try:
            return np.frombuffer(base64.b64decode(value, validate=True), dtype="<f4").tolist()
        except ValueError:
            return None
    if isinstance(value, list) and (not value or isinstance(value[0], int | float)):
        return value
    return None


def split_output(result: Any, inputs: set[str], protect: Callable[[str], Any]) -> tuple[Any, list[list[float]]]:
    """(the output as stored, its vectors): each `embedding` moves to the vector list (its place holds
    `"$embeddings[i]"`), `metadata` is left out (it goes to `steps`), and a string the input also holds
    (a rerank document echoed back) is stored as the PII policy stores inputs (`protect`)."""
    vectors: list[list[float]] = []

    def walk(v: Any) -> Any:
        if isinstance(v, dict):
            out = {}
            for k, x in v.items():
                if k == "metadata":
                    continue
                if k == "embedding" and (vec := _vector(x)) is not None:
                    out[k] = f"$embeddings[{len(vectors)}]"
                    vectors.append(vec)
                else:
                    out[k] = walk(x)
            return out
        if isinstance(v, list):
            return [walk(x) for x in v]
        if isinstance(v, str) and v in inputs:
            return protect(v)
        return v

    return walk(result), vectors


def protect_output(result: Any, raw_input: Any, policy: str, privacy: Privacy) -> tuple[Any, list[list[float]]]:
    """`split_output` with the strings the input holds stored as `policy` stores inputs."""
    inputs = _strings(raw_input, set()) if raw_input is not None and policy != "keep" else set()
    return split_output(result, inputs, lambda s: privacy.apply(policy, s))


# Built once: `json.dumps` with arguments builds an encoder per call (a visible cost per gateway request).
_COMPACT = json.JSONEncoder(separators=(",", ":"))
_CANONICAL = json.JSONEncoder(sort_keys=True, separators=(",", ":"), default=str)


def stored_input(raw: Any, policy: str, privacy: Privacy) -> tuple[str | None, str | None]:
    """(`input`, `input_hash`) columns for a raw input: the policy's form as JSON, and the keyed hash."""
    if raw is None:
        return None, None
    stored = privacy.apply(policy, raw)
    canonical = _CANONICAL.encode(raw).encode()
    return (None if stored is None else _COMPACT.encode(stored)), privacy.input_hash(canonical)


def job_item_rows(job: dict[str, Any], inputs: Sequence[dict], result: BatchResult, policy: str,
                  privacy: Privacy, *, ts: datetime | None = None) -> list[dict[str, Any]]:
    """One `requests` row per item of a finished async job (`request_id` = `<job_id>:<item>`)."""
    ts = ts or datetime.now(UTC)
    rows = []
    for i, (raw, r) in enumerate(zip(inputs, result.rows, strict=True)):
        stored, input_hash = stored_input(raw, policy, privacy)
        output, vectors = (None, None) if r.output is None else protect_output(r.output, raw, policy, privacy)
        steps = [{"step": step, "model": ref.partition("@")[0], "version": ref.partition("@")[2] or None,
                  "status": "skipped" if step in r.skipped else "fallback" if step in r.fallbacks else "ok"}
                 for step, ref in r.model_versions.items()]
        rows.append({
            "request_id": f"{job['job_id']}:{i}", "tenant": job["tenant"], "day": ts.date(), "ts": ts,
            "kind": "job_item", "route": "/v1/jobs", "job_id": job["job_id"], "item": i,
            "workflow": job["workflow"], "workflow_version": None, "steps": json.dumps(steps),
            "status": r.status, "problem_type": "urn:tandem:problem:job-item-failed" if r.status == "error" else None,
            "http_status": None, "latency_ms": None, "trace_id": None, "pii_policy": policy,
            "input": stored, "input_hash": input_hash,
            "output": None if output is None else _COMPACT.encode(output),
            "embeddings": vectors or None,
        })
    return rows


def public_record(row: dict[str, Any]) -> dict[str, Any]:
    """A stored row as the API and CLI show it: JSON columns parsed, vectors put back in place."""
    out = {k: v for k, v in row.items() if k not in ("day", "embeddings")}
    out["ts"] = row["ts"].isoformat() if isinstance(row["ts"], datetime) else row["ts"]
    for col in ("steps", "input", "output"):
        if isinstance(row.get(col), str):
            out[col] = json.loads(row[col])
    vectors = row.get("embeddings") or []
    if vectors and out.get("output") is not None:
        out["output"] = with_vectors(out["output"], vectors)
    return out


def with_vectors(value: Any, vectors: list) -> Any:
    """`value` with each `"$embeddings[i]"` replaced by vector i."""
    if isinstance(value, dict):
        return {k: with_vectors(v, vectors) for k, v in value.items()}
    if isinstance(value, list):
        return [with_vectors(v, vectors) for v in value]
    if isinstance(value, str) and value.startswith("$embeddings[") and value.endswith("]"):
        return [float(x) for x in vectors[int(value[12:-1])]]
    return value


def read_record(lake, tenant: str, request_id: str) -> dict[str, Any] | None:
    """A tenant's stored row of `request_id` (the newest if an id came twice), or None; the read is pruned
    to the tenant's partitions, so another tenant's id is not found, exactly like a missing one."""
    if lake.version("requests") is None:
        return None
    rows = lake.read("requests", filter=(pc.field("tenant") == tenant) & (pc.field("request_id") == request_id))
    if rows.num_rows == 0:
        return None
    return max(rows.to_pylist(), key=lambda r: r["ts"])
