"""What a workflow step is and leaves behind: the request's context, the step's report, its log summary.

Shared by the engine (which fills them) and the routes (which answer with them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from online.gateway.cache import content_hash
from online.gateway.client import CallTimeout, ModelCallError, RejectedCall
from online.gateway.problems import (
    DeadlineExceeded,
    GatewayError,
    InvalidInput,
    ServiceUnavailable,
    UpstreamError,
)

__all__ = ["RequestContext", "StepReport", "both_failed", "call_error_type", "first_gateway_error", "log_facts",
           "rejected_error", "summarize", "unavailable_error"]


@dataclass
class RequestContext:
    """Who asks, under which ids and until when."""

    request_id: str
    trace_id: str
    traceparent: str
    tenant: str
    routing_key: str
    deadline: float  # on the engine's clock
    budget_ms: float = 0.0  # the deadline as the caller gave it, for messages
    tenant_pins: Mapping[str, str] = field(default_factory=dict)
    explicit_pins: Mapping[str, str] = field(default_factory=dict)  # by step id or model name
    workflow: str | None = None
    workflow_version: int | None = None


@dataclass
class StepReport:
    """What one step did, returned in the response metadata."""

    step: str
    model: str
    version: str | None
    arm: str | None
    cached: bool = False
    latency_ms: float = 0.0
    attempts: int = 0
    status: str = "ok"  # ok | fallback | skipped
    degraded: bool = False
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        # Spelled out: dataclasses.asdict deep-copies field by field, a visible cost per request.
        return {"step": self.step, "model": self.model, "version": self.version, "arm": self.arm,
                "cached": self.cached, "latency_ms": self.latency_ms, "attempts": self.attempts,
                "status": self.status, "degraded": self.degraded, "error": self.error}


def call_error_type(exc: ModelCallError) -> str:
    """The `error_type` of a failed model call: timeout, unavailable (no answer / overloaded) or upstream_error."""
    if isinstance(exc, CallTimeout):
        return "timeout"
    if isinstance(exc, RejectedCall):
        return "rejected"
    if exc.status is None or exc.status in (429, 503):
        return "unavailable"
    return "upstream_error"


def both_failed(primary: GatewayError, fallback: str, error: GatewayError) -> GatewayError:
    """The fallback's error (its status decides), its detail naming the primary's failure first."""
    if type(error) in (ServiceUnavailable, DeadlineExceeded, UpstreamError):
        return type(error)(f"{primary.detail}; its fallback {fallback} failed too: {error.detail}",
                           headers=error.headers, extra=error.extra)
    return error


def first_gateway_error(group: BaseExceptionGroup) -> GatewayError | None:
    for exc in group.exceptions:
        if isinstance(exc, GatewayError):
            return exc
        if isinstance(exc, BaseExceptionGroup) and (found := first_gateway_error(exc)) is not None:
            return found
    return None


def summarize(inp: dict, out: dict | None) -> str:
    """A small JSON summary of one prediction: enough for drift and canary checks, not the payload."""
    summary: dict[str, Any] = {}
    text = inp.get("text") or inp.get("query")
    if isinstance(text, str):
        summary["input_chars"] = len(text)
        summary["input_words"] = len(text.split())
    if out:
        if "label" in out:
            summary["label"] = out["label"]
            summary["score"] = round(float(out["score"]), 6)
        elif "embedding" in out:
            vec = out["embedding"]
            n = len(vec) or 1
            # A plain sum and `math.hypot` (the vector's norm, in C: 3 us for 384 floats against 14 for
            # a Python sum of squares, and `math.fsum` took ~6% of the gateway's CPU on cache hits).
            mean = sum(vec) / n
            norm = math.hypot(*vec)
            summary["dim"] = len(vec)
            summary["mean"] = round(mean, 6)
            summary["std"] = round(max(0.0, norm * norm / n - mean * mean) ** 0.5, 6)
            summary["head"] = [round(v, 5) for v in vec[:4]]
        elif "results" in out:
            res = out["results"]
            summary["n"] = len(res)
            if res:
                summary["top_index"] = res[0]["index"]
                summary["top_score"] = round(float(res[0]["score"]), 6)
    return orjson.dumps(summary).decode()


def rejected_error(model: str, version: str, exc: ModelCallError) -> GatewayError:
    """What a caller is told when a model server refused a call (4xx other than 429)."""
    if exc.status == 404:
        return ServiceUnavailable(
            f"version {version} of {model!r} is not served: no model server has it loaded yet "
            "(servers load a version once it gains an alias); "
            f"`tandem models status {model}` shows what each server has loaded")
    if exc.status == 422:
        return InvalidInput([{"field": "input", "message": f"model {model!r} rejected it: {exc}"}])
    return UpstreamError(f"model {model!r} refused the call: {exc}")


def unavailable_error(model: str, exc: ModelCallError) -> GatewayError:
    """What a caller is told when a model's servers failed, timed out or could not be reached."""
    # Details name the model, never a server's address (they go to external callers).
    if isinstance(exc, CallTimeout):
        return DeadlineExceeded(f"model {model!r} did not answer within the step's timeout")
    if exc.status is not None and exc.status < 500 and exc.status != 429:
        return UpstreamError(f"model {model!r} failed (its server answered {exc.status})")
    why = f"its server answered {exc.status}" if exc.status is not None else "its server is unreachable"
    return ServiceUnavailable(f"model {model!r} has no healthy server ({why}); retry in a few seconds")


def log_facts(inst: dict, out: dict | None) -> tuple[str, str]:
    """What the prediction log keeps of one call: the input's hash and the output's summary."""
    return content_hash(inst), summarize(inst, out)
