"""Problem documents: statuses, headers, and the handlers installed on a FastAPI app."""

from __future__ import annotations

import inspect
import logging

import orjson
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from lakehouse import errors as lake_errors
from models import errors as model_errors
from online.gateway.problems import (
    DOMAIN_ERRORS,
    OPENAI_ROUTES,
    PROBLEM_MEDIA_TYPE,
    Conflict,
    DeadlineExceeded,
    Forbidden,
    GatewayError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    QuotaExceeded,
    RateLimited,
    ServiceUnavailable,
    Unauthorized,
    UpstreamError,
    as_problem,
    install_problem_handlers,
    problem_response,
    retry_after_seconds,
)


@pytest.mark.parametrize(
    ("err", "status"),
    [
        (Unauthorized("x"), 401),
        (Forbidden("x"), 403),
        (NotFound("x"), 404),
        (Conflict("x"), 409),
        (PayloadTooLarge("x"), 413),
        (InvalidInput([{"field": "body.a", "message": "bad"}]), 422),
        (RateLimited(1.0), 429),
        (QuotaExceeded(10.0, limit=5), 429),
        (UpstreamError("x"), 502),
        (ServiceUnavailable("x"), 503),
        (DeadlineExceeded("x"), 504),
    ],
)
def test_each_error_renders_its_status_as_problem_json(err: GatewayError, status: int):
    resp = problem_response(err, "/v1/workflows/w/run", "req-1")
    body = orjson.loads(resp.body)
    assert resp.status_code == status
    assert resp.media_type == PROBLEM_MEDIA_TYPE
    assert body["status"] == status
    assert body["title"] == err.title
    assert body["detail"] == err.detail
    assert body["instance"] == "/v1/workflows/w/run"
    assert body["request_id"] == "req-1"
    assert body["type"].startswith("urn:tandem:problem:")
    assert resp.headers["x-request-id"] == "req-1"


def test_rate_and_quota_types_differ_although_both_are_429():
    assert RateLimited(1).type != QuotaExceeded(1, limit=1).type


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.001, "1"), (0.0, "1"), (1.0, "1"), (1.2, "2"), (59.01, "60")]
)
def test_rate_limited_retry_after_is_the_integer_ceiling(seconds: float, header: str):
    err = RateLimited(seconds)
    resp = problem_response(err, "/", "r")
    assert resp.headers["retry-after"] == header
    assert orjson.loads(resp.body)["retry_after"] == int(header)


def test_retry_after_ignores_float_noise_just_above_an_integer():
    assert retry_after_seconds(2.0000000000001) == 2


def test_quota_exceeded_says_when_it_resets_and_the_limit():
    err = QuotaExceeded(3600.5, limit=1000)
    resp = problem_response(err, "/", "r")
    body = orjson.loads(resp.body)
    assert resp.headers["retry-after"] == "3601"
    assert body["limit"] == 1000
    assert "00:00 UTC" in body["detail"]


def test_invalid_input_lists_errors_and_summarises_them_in_detail():
    err = InvalidInput([{"field": "body.input.text", "message": "Field required"}])
    body = orjson.loads(problem_response(err, "/", "r").body)
    assert body["errors"] == [{"field": "body.input.text", "message": "Field required"}]
    assert body["detail"] == "body.input.text: Field required"


def test_unauthorized_asks_for_bearer_auth():
    resp = problem_response(Unauthorized("no key"), "/", "r")
    assert resp.headers["www-authenticate"].startswith("Bearer")


class _Input(BaseModel):
    text: str


class _Body(BaseModel):
    input: _Input


@pytest.fixture
def client() -> TestClient:
    app = FastAPI()
    install_problem_handlers(app)

    @app.post("/run")
    def run(body: _Body) -> dict:
        return {"ok": True}

    @app.get("/limited")
    def limited() -> dict:
        raise RateLimited(2.5, detail="slow down")

    @app.get("/http")
    def http() -> dict:
        raise HTTPException(status_code=418, detail="short and stout", headers={"X-Teapot": "1"})

    @app.get("/boom")
    def boom() -> dict:
        raise RuntimeError("secret connection string postgres://u:p@h")

    return TestClient(app, raise_server_exceptions=False)


def test_gateway_error_raised_in_a_route_becomes_problem_json(client: TestClient):
    resp = client.get("/limited", headers={"X-Request-ID": "abc"})
    assert resp.status_code == 429
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert resp.headers["retry-after"] == "3"
    body = resp.json()
    assert body["detail"] == "slow down"
    assert body["request_id"] == "abc"
    assert body["instance"] == "/limited"


def test_validation_error_is_422_naming_each_field_path(client: TestClient):
    resp = client.post("/run", json={"input": {}})
    assert resp.status_code == 422
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = resp.json()
    assert body["errors"] == [{"field": "body.input.text", "message": "Field required"}]
    assert "body.input.text: Field required" in body["detail"]


def test_http_exception_and_unknown_routes_are_problem_json(client: TestClient):
    resp = client.get("/http")
    assert resp.status_code == 418
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert resp.headers["x-teapot"] == "1"
    assert resp.json()["detail"] == "short and stout"

    missing = client.get("/nope")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == PROBLEM_MEDIA_TYPE
    assert missing.json()["title"] == "Not Found"


def test_unhandled_error_is_500_logged_and_leaks_nothing(
    client: TestClient, caplog: pytest.LogCaptureFixture
):
    with caplog.at_level(logging.ERROR, logger="online.gateway.problems"):
        resp = client.get("/boom", headers={"X-Request-ID": "rid-9"})
    assert resp.status_code == 500
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = resp.json()
    assert "postgres" not in resp.text and "RuntimeError" not in resp.text
    assert body["request_id"] == "rid-9" and "rid-9" in body["detail"]
    assert any("rid-9" in r.getMessage() and r.exc_info for r in caplog.records)


# --- the domain-error table -------------------------------------------------------------------

def _declared(module) -> list[type[BaseException]]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if issubclass(c, BaseException) and c.__module__ == module.__name__]


@pytest.mark.parametrize("cls", [c for c in _declared(model_errors) + _declared(lake_errors)
                                 if c not in (model_errors.TandemModelError,)], ids=lambda c: c.__name__)
def test_every_declared_domain_error_maps_to_a_4xx_or_upstream_status_never_500(cls):
    err = as_problem(cls("what went wrong"))
    assert err is not None, f"{cls.__name__} has no entry in DOMAIN_ERRORS"
    assert err.status != 500 and (400 <= err.status < 500 or err.status in (502, 503, 504))
    assert err.detail == "what went wrong"
    resp = problem_response(err, "/v1/admin/models/x", "r")
    assert resp.media_type == PROBLEM_MEDIA_TYPE and orjson.loads(resp.body)["status"] == err.status


@pytest.mark.parametrize(("exc", "status"), [
    (model_errors.UnknownModelError("no model"), 404),
    (model_errors.UnknownVersionError("no version"), 404),
    (model_errors.UnknownTenantError("no tenant"), 404),
    (model_errors.SchemaHashMismatchError("hash"), 409),
    (model_errors.InvalidRegistryOperation("rollback"), 409),
    (model_errors.SchemaError("bad"), 422),
    (model_errors.WorkflowError("bad"), 422),
    (model_errors.TenancyError("bad"), 422),
    (model_errors.DigestMismatchError("sha"), 503),
    (lake_errors.CommitConflictError("busy"), 503),
])
def test_domain_errors_get_the_documented_status(exc, status):
    assert as_problem(exc).status == status


def test_a_subclass_takes_its_nearest_mapped_ancestor_and_the_unexpected_stays_unmapped():
    class Odd(model_errors.UnknownVersionError):
        pass

    assert as_problem(Odd("x")).status == 404
    assert as_problem(RuntimeError("x")) is None
    assert as_problem(lake_errors.CommitConflictError("x")).headers["Retry-After"] == "1"
    assert all(issubclass(c, BaseException) for c in DOMAIN_ERRORS)


def test_domain_errors_raised_in_a_route_are_answered_by_the_table(client: TestClient):
    app = client.app

    @app.get("/registry")
    def registry() -> dict:
        raise model_errors.UnknownModelError("no model named 'nope'")

    resp = client.get("/registry")
    assert resp.status_code == 404
    assert resp.json()["type"] == "urn:tandem:problem:unknown-model"


@pytest.mark.parametrize("text", [
    "model 'embedder' has no healthy server: http://127.0.0.1:40123 is unreachable: ClientConnectorError",
    "http://10.0.3.7:8080/predict answered 500: boom",
    "redis://user:pw@cache.internal:6379/0 refused",
    "10.1.2.3:9000 timed out",
    "localhost:8123 did not answer",
])
def test_details_never_carry_internal_addresses(text):
    body = orjson.loads(problem_response(ServiceUnavailable(text), "/v1/embeddings", "r").body)
    for leak in ("127.0.0.1", "10.0.3.7", "cache.internal", "10.1.2.3", "localhost:", "http://", "redis://"):
        assert leak not in body["detail"] and leak not in body["error"]["message"]
    assert "the model server" in body["detail"]


def test_openai_routes_also_carry_the_openai_error_object():
    err = InvalidInput([{"field": "body.input", "message": "Field required"}])
    for route in OPENAI_ROUTES:
        body = orjson.loads(problem_response(err, route, "r").body)
        assert body["error"] == {"message": "body.input: Field required", "type": "invalid_request_error",
                                 "param": "input", "code": "invalid_input"}
        assert body["status"] == 422  # still a problem document
    assert "error" not in orjson.loads(problem_response(err, "/v1/models/x/predict", "r").body)
    assert orjson.loads(problem_response(RateLimited(1), "/v1/embeddings", "r").body)["error"]["type"] == (
        "rate_limit_error")
