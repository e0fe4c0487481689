"""Single-model routes: generic predict, OpenAI-compatible embeddings, and rerank."""

from __future__ import annotations

import base64
import time

import numpy as np
from fastapi import APIRouter, Response

from models.schemas import get_task
from models.workflows import RetryPolicy
from online.gateway.api_models import (
    EmbeddingsRequest,
    EmbeddingsResponse,
    PredictRequest,
    PredictResponse,
    RerankRequest,
    RerankResponse,
    problem_responses,
)
from online.gateway.deps import Caller
from online.gateway.engine import StepReport
from online.gateway.execution import Call, metadata, request_context, respond, validate
from online.gateway.pipeline import PredictCall, pipeline_route
from online.gateway.problems import InvalidInput, PayloadTooLarge, redact_step_errors
from online.gateway.record import note_body, note_steps
from online.gateway.runtime import Runtime

router = APIRouter(tags=["models"])
_ERRORS = problem_responses(401, 403, 404, 409, 413, 415, 422, 429, 502, 503, 504)


def _check_count(runtime: Runtime, n: int) -> None:
    """413 over the per-call cap, before any instance is validated (each validation builds objects)."""
    if n > runtime.gateway.max_instances:
        raise PayloadTooLarge(
            f"{n} instances in one call; send at most {runtime.gateway.max_instances} or submit an async job")


async def _call(runtime: Runtime, caller: Caller, model: str, task: str, instances: list[dict],
                version: str | None, deadline: int | None, *, raw: bool = False,
                ) -> tuple[list[dict], StepReport, dict]:
    _check_count(runtime, len(instances))
    ctx = request_context(runtime, caller, deadline_ms=deadline, spec=None,
                          pins={model: version} if version else None)
    started = time.perf_counter()
    report, outputs = await runtime.engine.call_step(
        step_id=model, model=model, task=task, instances=instances, ctx=ctx,
        timeout_ms=int(ctx.budget_ms), retry=RetryPolicy(), raw=raw,
    )
    note_steps([report])
    return outputs or [], report, redact_step_errors(metadata(ctx, [report], started))


def _split_model(ref: str) -> tuple[str, str | None]:
    name, _, version = ref.partition("@")
    return name, version or None


async def predict_core(call: Call, name: str, body: PredictRequest) -> Response:
    runtime = call.runtime
    note_body(body, name)
    task = get_task(runtime.model_task(name))
    _check_count(runtime, len(body.instances))
    instances = [validate(task.input, inst, f"instances.{i}") for i, inst in enumerate(body.instances)]

    async def run() -> dict:
        # Only serialised: cached outputs go out as the cache's bytes, never parsed.
        outputs, _, meta = await _call(runtime, call.caller, name, task.name, instances, body.version,
                                       call.deadline_ms, raw=True)
        return {"predictions": outputs, "metadata": meta}

    return await respond(runtime, call.caller, call.idempotency_key, body, f"predict:{name}", run,
                         deadline_ms=call.deadline_ms)


async def embeddings_core(call: Call, body: EmbeddingsRequest) -> Response:
    runtime = call.runtime
    note_body(body)
    name, version = _split_model(body.model)
    if runtime.model_task(name) != "embed":
        raise InvalidInput([{"field": "model", "message": f"{name!r} is not an embedding model; use e.g. 'embedder'"}])
    texts = [body.input] if isinstance(body.input, str) else body.input
    if not texts:
        raise InvalidInput([{"field": "input", "message": "must hold at least one text"}])
    _check_count(runtime, len(texts))
    task = get_task("embed")
    instances = [validate(task.input, {"text": t}, f"input.{i}") for i, t in enumerate(texts)]

    async def run() -> dict:
        outputs, report, _ = await _call(runtime, call.caller, name, "embed", instances, version, call.deadline_ms)
        data = []
        for i, out in enumerate(outputs):
            vec = out["embedding"][: body.dimensions] if body.dimensions else out["embedding"]
            if body.encoding_format == "base64":
                vec = base64.b64encode(np.asarray(vec, dtype="<f4").tobytes()).decode()
            data.append({"object": "embedding", "index": i, "embedding": vec})
        tokens = sum(len(t.split()) for t in texts)
        return {"object": "list", "data": data, "model": f"{name}@{report.version}",
                "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

    return await respond(runtime, call.caller, call.idempotency_key, body, "embeddings", run,
                         deadline_ms=call.deadline_ms)


async def rerank_core(call: Call, body: RerankRequest) -> Response:
    runtime = call.runtime
    note_body(body)
    name, version = _split_model(body.model)
    if runtime.model_task(name) != "rerank":
        raise InvalidInput([{"field": "model", "message": f"{name!r} is not a reranker; use e.g. 'reranker'"}])
    docs = [d if isinstance(d, str) else d.text for d in body.documents]
    instance = validate(get_task("rerank").input, {"query": body.query, "documents": docs, "top_n": body.top_n},
                        "body")

    async def run() -> dict:
        outputs, report, _ = await _call(runtime, call.caller, name, "rerank", [instance], version,
                                         call.deadline_ms)
        results = [
            {"index": r["index"], "relevance_score": r["score"],
             **({"document": {"text": r["document"]}} if body.return_documents else {})}
            for r in outputs[0]["results"]
        ]
        return {"id": call.caller.request_id, "model": f"{name}@{report.version}", "results": results}

    return await respond(runtime, call.caller, call.idempotency_key, body, "rerank", run,
                         deadline_ms=call.deadline_ms)


# The routes: FastAPI documents them from these signatures, a PipelineRoute serves them (online.gateway.pipeline).


@pipeline_route(router, "/v1/models/{name}/predict", response_model=PredictResponse, responses=_ERRORS,
                summary="Predict with one model")
async def predict(name: str, body: PredictRequest, call: PredictCall) -> PredictResponse:
    """Run one model over `instances` (each validated against the model's task schema)."""
    return await predict_core(call, name, body)


@pipeline_route(router, "/v1/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS,
                summary="Create embeddings (OpenAI-compatible)")
async def embeddings(body: EmbeddingsRequest, call: PredictCall) -> EmbeddingsResponse:
    """Embed one text or a list of texts; works with the `openai` Python client."""
    return await embeddings_core(call, body)


@pipeline_route(router, "/v1/rerank", response_model=RerankResponse, responses=_ERRORS, summary="Rerank documents")
async def rerank(body: RerankRequest, call: PredictCall) -> RerankResponse:
    """Order `documents` by relevance to `query`; returns the top `top_n` with scores."""
    return await rerank_core(call, body)
