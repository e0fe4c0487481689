"""Problem documents: statuses, headers, and the handlers installed on a FastAPI app."""

from __future__ import annotations

import logging

import orjson
import pytest
from fastapi import FastAPI, HTTPException
from fastapi.testclient import TestClient
from pydantic import BaseModel

from online.gateway.problems import (
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
