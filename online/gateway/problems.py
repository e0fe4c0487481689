"""The gateway's errors, each answered as an RFC 7807 `application/problem+json` document.

    GatewayError                 any error the gateway answers with a problem document
    ├── Unauthorized             401 no API key, or one no tenant holds
    ├── Forbidden                403 the tenant lacks a scope or may not run the workflow
    ├── NotFound                 404 no such workflow, job or model
    ├── Conflict                 409 an Idempotency-Key reused with a different body
    ├── PayloadTooLarge          413 the request body or its batch is over the limit
    ├── UnsupportedMediaType     415 a body sent as anything but `application/json`
    ├── InvalidInput             422 the request does not match its schema (lists each field)
    ├── RateLimited              429 the tenant's token bucket is empty (Retry-After)
    ├── HeadersTooLarge          431 a header, or all of them together, is over the limit
    ├── QuotaExceeded            429 the tenant's daily quota is used up (Retry-After: UTC midnight)
    ├── UpstreamError            502 a model server failed and no fallback answered
    ├── ServiceUnavailable       503 no healthy model server, or no stable version to route to
    └── DeadlineExceeded         504 the request's deadline passed before the workflow finished

Status codes are chosen here and nowhere else. The errors of the packages below the gateway
(`models.errors`, `lakehouse.errors`, the job executor's and the model client's) are mapped once, by
`DOMAIN_ERRORS` (`as_problem` walks an exception's classes and takes the first entry):

    models.errors                                   lakehouse.errors
    UnknownModelError / UnknownVersionError  404    TableNotFoundError    503 (nothing written yet)
    UnknownTaskError / UnknownTenantError    404    SchemaMismatchError   422
    SchemaHashMismatchError                  409    CommitConflictError   503 Retry-After: 1
    InvalidRegistryOperation                 409    QueryError            422
    UnevaluatedVersionError (models.gate)    409
    RegistryError (any other)                409    LakehouseError        503
    SchemaError / WorkflowError              422
    TenancyError                             422    models.jobs.JobConflictError      409
    ArtifactError (DigestMismatchError)      503    online.gateway.client: CallTimeout 504,
                                                    EndpointUnreachable 503, ModelCallError 502

A domain error's message becomes the detail, with internal addresses (`http://127.0.0.1:PORT`)
replaced by "the model server". `install_problem_handlers` also renders FastAPI's validation errors,
`HTTPException`s and unhandled exceptions (a 500 that names only the request id: always a bug).
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Iterable, Mapping
from http import HTTPStatus
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from lakehouse import errors as lake_errors
from models import errors as model_errors
from models.executor import BatchFailedError
from models.jobs import JobConflictError
from online.gateway import client as model_client
from online.gateway.tracing import request_id_from

__all__ = [
    "DOMAIN_ERRORS",
    "OPENAI_ROUTES",
    "PROBLEM_MEDIA_TYPE",
    "Conflict",
    "DeadlineExceeded",
    "Forbidden",
    "GatewayError",
    "HeadersTooLarge",
    "InvalidInput",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "RateLimited",
    "ServiceUnavailable",
    "Unauthorized",
    "UnsupportedMediaType",
    "UpstreamError",
    "as_problem",
    "install_problem_handlers",
    "invalid_input",
    "problem_response",
    "redact_addresses",
    "redact_step_errors",
    "retry_after_seconds",
    "unhandled_response",
]

logger = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:tandem:problem:"


class GatewayError(Exception):
    """An error the gateway answers with a problem document of status `status`."""

    status: int = 500
    title: str = "Internal Server Error"
    slug: str = "internal"

    def __init__(
        self,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ):
        super().__init__(detail)
        self.detail = detail
        self.headers: dict[str, str] = dict(headers or {})
        self.extra: dict[str, Any] = dict(extra or {})

    @property
    def type(self) -> str:
        return _TYPE_PREFIX + self.slug


class Unauthorized(GatewayError):
    """No API key was sent, or no tenant holds the one sent."""

    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str, **kwargs: Any):
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="tandem"'})
        super().__init__(detail, **kwargs)


class Forbidden(GatewayError):
    """The tenant is known but may not do this (missing scope, workflow not allowed)."""

    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(GatewayError):
    """No such workflow, job, model or route."""

    status, title, slug = 404, "Not Found", "not-found"


class Conflict(GatewayError):
    """The request conflicts with an earlier one (e.g. an Idempotency-Key reused)."""

    status, title, slug = 409, "Conflict", "conflict"


class PayloadTooLarge(GatewayError):
    """The request body, or the number of inputs in it, is over the limit."""

    status, title, slug = 413, "Payload Too Large", "payload-too-large"


class UnsupportedMediaType(GatewayError):
    """A body sent with a content type other than `application/json`."""

    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class HeadersTooLarge(GatewayError):
    """One header, or all of them together, is longer than the gateway reads."""

    status, title, slug = 431, "Request Header Fields Too Large", "headers-too-large"


class InvalidInput(GatewayError):
    """The request does not match its schema; `errors` names each offending field."""

    status, title, slug = 422, "Invalid Input", "invalid-input"

    def __init__(self, errors: list[dict[str, str]], detail: str | None = None, **kwargs: Any):
        self.errors = [{"field": str(e["field"]), "message": str(e["message"])} for e in errors]
        if detail is None:
            detail = "; ".join(f"{e['field']}: {e['message']}" for e in self.errors[:10])
            if len(self.errors) > 10:
                detail += f"; and {len(self.errors) - 10} more (see errors)"
        super().__init__(detail or "the request is invalid", **kwargs)


def invalid_input(errors: Iterable[Mapping[str, Any]], *prefix: str) -> InvalidInput:
    """An `InvalidInput` from pydantic/FastAPI error dicts, each field named `prefix.loc` (`body.instances.0.text`)."""
    return InvalidInput([{"field": ".".join([*prefix, *(str(p) for p in e.get("loc", ()))]) or "body",
                          "message": str(e.get("msg", ""))} for e in errors])


def unhandled_response(method: str, path: str, request_id: str, exc: BaseException) -> Response:
    """The 500 for an unexpected error: logged with its traceback, answered naming only the request id."""
    logger.error("unhandled error on %s %s (request_id=%s)", method, path, request_id, exc_info=exc)
    err = GatewayError(f"the gateway failed unexpectedly; quote request_id {request_id} when reporting it")
    return problem_response(err, path, request_id)


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for Retry-After, at least 1: rounding up never invites a retry refused again."""
    return max(1, math.ceil(seconds - 1e-9))


class RateLimited(GatewayError):
    """The tenant's token bucket is empty; `retry_after` is whole seconds until a token is back."""

    status, title, slug = 429, "Too Many Requests", "rate-limited"

    def __init__(self, retry_after_s: float, detail: str | None = None, **kwargs: Any):
        self.retry_after = retry_after_seconds(retry_after_s)
        headers = {**kwargs.pop("headers", {}), "Retry-After": str(self.retry_after)}
        extra = {**kwargs.pop("extra", {}), "retry_after": self.retry_after}
        detail = detail or f"rate limit exceeded; retry after {self.retry_after} s"
        super().__init__(detail, headers=headers, extra=extra, **kwargs)


class QuotaExceeded(GatewayError):
    """The tenant's daily quota is used up; `retry_after` is whole seconds until it resets."""

    status, title, slug = 429, "Quota Exceeded", "quota-exceeded"

    def __init__(self, retry_after_s: float, *, limit: int, detail: str | None = None, **kwargs: Any):
        self.retry_after = retry_after_seconds(retry_after_s)
        self.limit = limit
        headers = {**kwargs.pop("headers", {}), "Retry-After": str(self.retry_after)}
        extra = {**kwargs.pop("extra", {}), "retry_after": self.retry_after, "limit": limit}
        detail = detail or (
            f"daily quota of {limit} requests used up; it resets at 00:00 UTC, in {self.retry_after} s"
        )
        super().__init__(detail, headers=headers, extra=extra, **kwargs)


class UpstreamError(GatewayError):
    """A model server failed and no fallback answered."""

    status, title, slug = 502, "Bad Gateway", "upstream-error"


class ServiceUnavailable(GatewayError):
    """No healthy model server (circuit open) or nothing to route to; says when to retry."""

    status, title, slug = 503, "Service Unavailable", "service-unavailable"

    def __init__(self, detail: str, *, retry_after_s: float = 1.0, **kwargs: Any):
        headers = {"Retry-After": str(retry_after_seconds(retry_after_s)), **kwargs.pop("headers", {})}
        super().__init__(detail, headers=headers, **kwargs)


class DeadlineExceeded(GatewayError):
    """The request's deadline passed before the workflow finished."""

    status, title, slug = 504, "Gateway Timeout", "deadline-exceeded"


class _DomainProblem(GatewayError):
    """A domain error (`models`, `lakehouse`, ...) answered with the status `DOMAIN_ERRORS` gives it."""

    def __init__(self, status: int, slug: str, detail: str, headers: Mapping[str, str] | None = None):
        self.status, self.title, self.slug = status, HTTPStatus(status).phrase, slug
        super().__init__(detail, headers=headers)


# (status, problem-type slug, extra headers); the first of an exception's classes found here wins.
DOMAIN_ERRORS: dict[type[BaseException], tuple[int, str, dict[str, str]]] = {
    model_errors.UnknownModelError: (404, "unknown-model", {}),
    model_errors.UnknownVersionError: (404, "unknown-version", {}),
    model_errors.UnknownTaskError: (404, "unknown-task", {}),
    model_errors.UnknownTenantError: (404, "unknown-tenant", {}),
    model_errors.SchemaHashMismatchError: (409, "schema-hash-mismatch", {}),
    model_errors.InvalidRegistryOperation: (409, "invalid-registry-operation", {}),
    model_errors.UnevaluatedVersionError: (409, "unevaluated-version", {}),
    model_errors.RegistryError: (409, "registry-conflict", {}),
    model_errors.SchemaError: (422, "schema-mismatch", {}),
    model_errors.WorkflowError: (422, "invalid-workflow", {}),
    model_errors.TenancyError: (422, "invalid-tenant", {}),
    model_errors.ArtifactError: (503, "artifact-unavailable", {}),
    JobConflictError: (409, "job-conflict", {}),
    BatchFailedError: (502, "batch-failed", {}),
    lake_errors.TableNotFoundError: (503, "table-unavailable", {}),
    lake_errors.SchemaMismatchError: (422, "table-schema-mismatch", {}),
    lake_errors.CommitConflictError: (503, "commit-conflict", {"Retry-After": "1"}),
    lake_errors.QueryError: (422, "invalid-query", {}),
    lake_errors.LakehouseError: (503, "lakehouse-unavailable", {}),
    model_client.CallTimeout: (504, "deadline-exceeded", {}),
    model_client.EndpointUnreachable: (503, "service-unavailable", {}),
    model_client.ModelCallError: (502, "upstream-error", {}),
}

# Where a model server or a store lives is nobody's business but the operator's.
_ADDRESS = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+|\b\d{1,3}(?:\.\d{1,3}){3}(?::\d+)?\b|\blocalhost:\d+\b",
                      re.IGNORECASE)


def redact_addresses(text: str) -> str:
    """`text` with URLs and host:port pairs replaced by "the model server" (errors name the model instead)."""
    return _ADDRESS.sub("the model server", text) if ("://" in text or ":" in text) else text


def redact_step_errors(meta: dict[str, Any]) -> dict[str, Any]:
    """Response `metadata` with each step's `error` (a fallback's or a skipped step's reason) redacted."""
    for step in meta.get("steps", ()):
        if step.get("error"):
            step["error"] = redact_addresses(step["error"])
    return meta


def as_problem(exc: BaseException) -> GatewayError | None:
    """The problem a known error answers with (a `GatewayError` as it is); None for an unexpected one."""
    if isinstance(exc, GatewayError):
        return exc
    for cls in type(exc).__mro__:
        entry = DOMAIN_ERRORS.get(cls)
        if entry is not None:
            status, slug, headers = entry
            return _DomainProblem(status, slug, str(exc) or HTTPStatus(status).phrase, headers)
    return None


# The OpenAI-compatible routes also carry OpenAI's error object, so the `openai` client shows the message
# (a problem document may hold extension members; the client reads `error`).
OPENAI_ROUTES = frozenset({"/v1/embeddings", "/v1/rerank"})
_OPENAI_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                 404: "not_found_error", 409: "conflict_error", 413: "invalid_request_error",
                 415: "invalid_request_error", 422: "invalid_request_error", 429: "rate_limit_error"}


def _openai_error(err: GatewayError, detail: str, errors: list[dict[str, str]] | None) -> dict[str, Any]:
    param = errors[0]["field"].removeprefix("body.").split(".", 1)[0] if errors else None
    return {"message": detail, "type": _OPENAI_TYPES.get(err.status, "server_error" if err.status >= 500
                                                         else "invalid_request_error"),
            "param": None if param == "body" else param, "code": err.slug.replace("-", "_")}


def problem_response(err: GatewayError, instance: str, request_id: str) -> Response:
    """Render `err` as an `application/problem+json` response with its headers."""
    body: dict[str, Any] = {
        **err.extra,
        "type": err.type,
        "title": err.title,
        "status": err.status,
        "detail": redact_addresses(err.detail),
        "instance": instance,
        "request_id": request_id,
    }
    errors = getattr(err, "errors", None)
    if errors:
        body["errors"] = errors
    if instance in OPENAI_ROUTES:
        body["error"] = _openai_error(err, body["detail"], errors)
    headers = {**err.headers, "X-Request-ID": request_id}
    return Response(
        orjson.dumps(body, default=str), status_code=err.status, headers=headers, media_type=PROBLEM_MEDIA_TYPE
    )


def install_problem_handlers(app: FastAPI) -> None:
    """Answer every error of `app` as problem+json: ours, validation, HTTPException and the unexpected."""
    app.add_exception_handler(GatewayError, _on_gateway_error)
    for cls in DOMAIN_ERRORS:
        app.add_exception_handler(cls, _on_domain_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_exception)
    app.add_exception_handler(Exception, _on_unhandled)


def _request_id(request: Request) -> str:
    """The id the request middleware assigned, else the caller's X-Request-ID if valid, else a new one."""
    rid = getattr(request.state, "request_id", None)
    if not rid:
        rid = request_id_from(request.headers.raw and dict(request.headers.raw).get(b"x-request-id"))
        request.state.request_id = rid
    return str(rid)


async def _on_gateway_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, GatewayError)
    return problem_response(exc, request.url.path, _request_id(request))


async def _on_domain_error(request: Request, exc: Exception) -> Response:
    err = as_problem(exc)
    assert err is not None
    return problem_response(err, request.url.path, _request_id(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    return problem_response(invalid_input(exc.errors()), request.url.path, _request_id(request))


class _HTTPProblem(GatewayError):
    """An HTTPException raised by FastAPI/Starlette (unknown route, wrong method, ...)."""

    def __init__(self, status: int, detail: str, headers: Mapping[str, str] | None):
        try:
            phrase = HTTPStatus(status).phrase
        except ValueError:
            phrase = "Error"
        self.status, self.title, self.slug = status, phrase, "http-" + str(status)
        super().__init__(detail or phrase, headers=headers)


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else orjson.dumps(exc.detail, default=str).decode()
    err = _HTTPProblem(exc.status_code, detail, exc.headers)
    return problem_response(err, request.url.path, _request_id(request))


async def _on_unhandled(request: Request, exc: Exception) -> Response:
    if (err := as_problem(exc)) is not None:
        return problem_response(err, request.url.path, _request_id(request))
    return unhandled_response(request.method, request.url.path, _request_id(request), exc)
