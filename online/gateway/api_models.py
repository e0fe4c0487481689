"""Request and response bodies of the public API (they make the OpenAPI docs)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunRequest(_Body):
    input: dict[str, Any] = Field(description="The workflow's input fields.", examples=[{"text": "Stocks rallied."}])
    params: dict[str, Any] | None = Field(
        default=None, description="Optional tuning fields (e.g. top_n), merged into the input.")
    model_versions: dict[str, str] | None = Field(
        default=None, description="Pin versions by step id or model name, e.g. {\"classifier\": \"2\"}.")

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"input": {"text": "The striker scored twice in the final."}},
        {"input": {"query": "cheap flights", "documents": ["Flights to Rome from 40 EUR", "Knee injury care"]},
         "params": {"top_n": 1}},
    ]})


class StepMeta(BaseModel):
    step: str
    model: str
    version: str | None
    arm: str | None = Field(description="stable | canary | pinned | fallback")
    cached: bool
    latency_ms: float
    attempts: int
    status: str = Field(description="ok | fallback | skipped")
    degraded: bool
    error: str | None = None


class RunMetadata(BaseModel):
    request_id: str
    trace_id: str
    workflow: str | None = None
    workflow_version: int | None = None
    degraded: bool
    latency_ms: float
    steps: list[StepMeta]


class RunResponse(BaseModel):
    output: dict[str, Any]
    metadata: RunMetadata


class PredictRequest(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"instances": [{"text": "Tandem serves models."}], "version": "1"}]})

    instances: list[dict[str, Any]] = Field(min_length=1, examples=[[{"text": "Tandem serves models."}]])
    version: str | None = Field(default=None, description="Pin a version; default: the routed alias.")


class PredictResponse(BaseModel):
    predictions: list[dict[str, Any]]
    metadata: RunMetadata


class EmbeddingsRequest(_Body):
    """OpenAI-compatible embeddings request."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"model": "embedder", "input": ["first text", "second text"]}]})

    input: str | list[str] = Field(description="One text or a list of texts.")
    model: str = Field(default="embedder", description="Registry model name, optionally `name@version`.")
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingsResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: dict[str, int]


class RerankDocument(BaseModel):
    text: str


class RerankRequest(_Body):
    """Rerank request in the common {query, documents, top_n} shape."""

    model_config = ConfigDict(extra="ignore", json_schema_extra={"examples": [
        {"query": "cheap flights", "documents": ["Flights to Rome from 40 EUR", "Knee injury care"], "top_n": 1}]})

    query: str = Field(min_length=1)
    documents: list[str | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(default=None, ge=1)
    model: str = "reranker"
    return_documents: bool = True


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(BaseModel):
    id: str
    model: str
    results: list[RerankResult]


class AliasBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"version": "2", "reason": "int8 passed the canary"}, {"version": None}]})

    version: str | None = Field(default=None, description="The version; null clears (shadow only).")
    reason: str | None = None


class CanaryBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [
        {"version": "2", "weight": 0.1, "reason": "try the int8 embedder on 10% of traffic"}]})

    version: str
    weight: float = Field(ge=0.0, le=1.0, description="Share of traffic routed to the canary, 0..1.")
    reason: str | None = None
    force: bool = Field(default=False, description="Past the offline gate without a passing evaluation; "
                                                   "needs a `reason`, recorded in the history.")


class ReasonBody(_Body):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "p95 latency regressed"}]})

    reason: str | None = None


class Problem(BaseModel):
    """An RFC 7807 problem document (`application/problem+json`)."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    request_id: str | None = None
    errors: list[dict[str, str]] | None = None


_PROBLEM_TEXT = {
    401: "Unknown or missing API key", 403: "Missing scope or workflow not allowed",
    404: "Unknown workflow, model or version",
    409: "Idempotency-Key reused with another body, or a registry move the registry's state forbids",
    413: "Body or instance count over the limit", 415: "Body not sent as Content-Type: application/json",
    422: "Malformed body, or input that does not match the schema (fields named)",
    429: "Rate limit or daily quota (see Retry-After)", 431: "Headers too large",
    502: "A model server failed", 503: "No healthy model server for a required step",
    504: "The request deadline passed",
}


def problem_responses(*statuses: int) -> dict[int, dict]:
    """OpenAPI `responses` entries for the problem statuses a route can answer."""
    return {s: {"model": Problem, "description": _PROBLEM_TEXT.get(s, "Error"),
                "content": {"application/problem+json": {}}} for s in statuses}
