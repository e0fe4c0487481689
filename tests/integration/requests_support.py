"""Rows of the `requests` log shaped like the gateway writes them, answered by a real (tiny) model version."""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Sequence
from datetime import UTC, date, datetime, time

from assets.canary_replay import run_version
from models.executor import OpResolver

_STEP = {"classifier": "classify", "embedder": "embed"}


def request_rows(
    resolve: OpResolver, *, model: str, task: str, version: str, texts: Sequence[str], tenant: str = "acme",
    day: date | None = None, workflow: str | None = None, pii_policy: str = "keep", latency_ms: float = 20.0,
    job_id: str | None = None,
) -> list[dict]:
    """One logged request per text through `model@version`: single-model predict route, or the `classify` /
    `enrich` workflow when `workflow` is given; the input stored as `pii_policy` allows (hash, drop)."""
    day = day or datetime.now(UTC).date()
    answers = run_version(task, model, version, [{"text": t} for t in texts], resolve)
    rows = []
    for i, (text, answer) in enumerate(zip(texts, answers)):
        vector = answer.pop("embedding", None)
        if workflow is None:
            step, route = model, "/v1/models/{name}/predict"
            inp, out = {"instances": [{"text": text}]}, {"predictions": [answer]}
        else:
            step, route = _STEP[model], "/v1/workflows/{name}/run"
            inp, out = {"text": text}, dict(answer)
        stored = {"keep": json.dumps(inp), "redact": json.dumps(inp), "drop": None,
                  "hash": json.dumps("sha256:" + hashlib.sha256(json.dumps(inp).encode()).hexdigest())}[pii_policy]
        rows.append({
            "request_id": uuid.uuid4().hex, "tenant": tenant, "day": day,
            "ts": datetime.combine(day, time(12, 0, i % 60), tzinfo=UTC), "kind": "job_item" if job_id else "sync",
            "route": route, "job_id": job_id, "item": i if job_id else None, "workflow": workflow,
            "workflow_version": 1 if workflow else None,
            "steps": json.dumps([{"step": step, "model": model, "version": version, "arm": "stable", "status": "ok",
                                  "error_type": None, "cached": False}]),
            "status": "ok", "problem_type": None, "http_status": 200, "latency_ms": latency_ms,
            "trace_id": uuid.uuid4().hex, "pii_policy": pii_policy, "input": stored,
            "input_hash": hashlib.sha256(text.encode()).hexdigest(), "output": json.dumps(out),
            "embeddings": [vector] if vector is not None else None,
        })
    return rows
