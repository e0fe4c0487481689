"""The prediction routes' one pipeline: declared once for OpenAPI, answered the same way from the edge or FastAPI's router."""

from __future__ import annotations

import os

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from models.settings import TandemSettings
from online.gateway.app import create_app
from online.gateway.pipeline import PipelineRoute, PredictCall, pipeline_route
from online.gateway.problems import install_problem_handlers
from online.gateway.routes import models, workflows
from online.gateway.runtime import Runtime
from online.gateway.settings import GatewaySettings
from tests.reliability.conftest import make_home


def test_a_pipeline_endpoint_must_take_a_body_model_and_a_call():
    async def no_body(name: str, call: PredictCall) -> dict:
        return {}

    with pytest.raises(TypeError, match="body: <pydantic model>"):
        pipeline_route(APIRouter(), "/x/{name}")(no_body)


def test_the_four_prediction_routes_are_pipeline_routes_and_documented_once(tmp_path):
    routes = {r.path: r for m in (models, workflows) for r in m.router.routes if isinstance(r, PipelineRoute)}
    assert set(routes) == {"/v1/models/{name}/predict", "/v1/embeddings", "/v1/rerank", "/v1/workflows/{name}/run"}
    spec = create_app(TandemSettings(home=tmp_path), GatewaySettings(log_enabled=False)).openapi()
    for path in routes:
        op = spec["paths"][path]["post"]
        params = {p["name"] for p in op["parameters"]}
        assert {"x-deadline-ms", "Idempotency-Key", "x-request-id"} <= params, (path, params)
        assert "requestBody" in op and "429" in op["responses"], path
        assert not params & {"call", "body"}, path  # the call is built by the pipeline, not a parameter


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return make_home(tmp_path_factory.mktemp("home"))


def test_fastapi_router_answers_a_pipeline_route_as_the_edge_does(home):
    """Without the edge in front (a bare FastAPI app), the same handler answers: same statuses and problems."""
    gateway = GatewaySettings(log_enabled=False)
    bare = FastAPI()
    bare.state.runtime = Runtime(home.settings, gateway)
    install_problem_handlers(bare)
    bare.include_router(models.router)
    key = home.keys["acme"]
    cases = [
        ({}, {"instances": [{"text": "x"}]}, 401),
        ({"Authorization": f"Bearer {key}"}, {"instances": []}, 422),
        ({"Authorization": f"Bearer {key}"}, {"instances": [{"text": "x"}], "extra": 1}, 422),
        ({"Authorization": f"Bearer {key}", "X-Deadline-Ms": "soon"}, {"instances": [{"text": "x"}]}, 422),
    ]
    with TestClient(create_app(home.settings, gateway)) as full, TestClient(bare) as plain:
        for headers, body, status in cases:
            a = full.post("/v1/models/embedder/predict", json=body, headers=headers)
            b = plain.post("/v1/models/embedder/predict", json=body, headers=headers)
            assert a.status_code == b.status_code == status, (a.text, b.text)
            assert a.headers["content-type"] == b.headers["content-type"] == "application/problem+json"
            assert a.json()["detail"] == b.json()["detail"]
            assert a.headers["x-request-id"] and b.headers["x-request-id"]


def test_fastapis_own_telemetry_is_on_only_where_the_environment_configures_opentelemetry(tmp_path, monkeypatch):
    from online.gateway.app import native_telemetry

    assert native_telemetry({"PATH": "/bin", "TANDEM_HOME": "/x"}) == {"tracing": False, "metrics": False, "logs": False}
    assert native_telemetry({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}) is None  # FastAPI's defaults
    assert native_telemetry({"FASTAPI_OTEL_AUTO_CONFIGURE": "true"}) is None
    for name in [k for k in os.environ if k.startswith(("OTEL_", "FASTAPI_OTEL_"))]:
        monkeypatch.delenv(name)
    app = create_app(TandemSettings(home=tmp_path), GatewaySettings(log_enabled=False))
    assert not app._native_telemetry.enabled()
    monkeypatch.setenv("OTEL_SERVICE_NAME", "tandem-gateway")
    app = create_app(TandemSettings(home=tmp_path), GatewaySettings(log_enabled=False))
    assert app._telemetry["tracing"] and app._telemetry["metrics"]
