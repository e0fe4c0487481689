"""The OpenAPI document: every route documented, every request body with an example."""

from __future__ import annotations

from fastapi import FastAPI

from online.gateway.routes import admin, jobs, models, ops, workflows


def test_every_request_body_has_an_example_and_every_route_a_summary():
    app = FastAPI()
    for module in (workflows, models, jobs, admin, ops):
        app.include_router(module.router)
    spec = app.openapi()
    missing = []
    for path, methods in spec["paths"].items():
        for method, op in methods.items():
            assert op.get("summary"), f"{method} {path} has no summary"
            body = op.get("requestBody")
            if body:
                name = body["content"]["application/json"]["schema"]["$ref"].split("/")[-1]
                if not spec["components"]["schemas"][name].get("examples"):
                    missing.append(f"{method} {path}")
    assert missing == []
    assert "429" in spec["paths"]["/v1/workflows/{name}/run"]["post"]["responses"]


def _gateway(tmp_path):
    from fastapi.testclient import TestClient

    from models.settings import TandemSettings
    from online.gateway.app import create_app
    from online.gateway.settings import GatewaySettings

    app = create_app(TandemSettings(home=tmp_path), GatewaySettings(log_enabled=False))
    return TestClient(app)  # no lifespan: nothing here needs the runtime started


def test_openapi_declares_bearer_and_api_key_auth_on_every_v1_route(tmp_path):
    spec = _gateway(tmp_path).get("/openapi.json").json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["BearerAuth"] == {"type": "http", "scheme": "bearer", "description": schemes["BearerAuth"][
        "description"]}
    assert schemes["ApiKeyAuth"]["in"] == "header" and schemes["ApiKeyAuth"]["name"] == "X-API-Key"
    for path, operations in spec["paths"].items():
        for method, op in operations.items():
            params = {p["name"].lower() for p in op.get("parameters", [])}
            assert not params & {"authorization", "x-api-key"}, f"{method} {path} documents auth as a parameter"
            if path.startswith("/v1/"):
                assert op["security"] == [{"BearerAuth": []}, {"ApiKeyAuth": []}], f"{method} {path}"
            else:
                assert op.get("security", [{}])[-1] == {}, f"{method} {path} must stay open"


def test_docs_and_redoc_are_served_without_a_cdn(tmp_path):
    client = _gateway(tmp_path)
    for page, assets in (("/docs", ("swagger-ui-bundle.js", "swagger-ui.css")), ("/redoc", ("redoc.standalone.js",))):
        html = client.get(page)
        assert html.status_code == 200
        assert "cdn.jsdelivr.net" not in html.text and "fonts.googleapis.com" not in html.text, page
        for asset in assets:
            assert f"/docs/assets/{asset}" in html.text
            got = client.get(f"/docs/assets/{asset}")
            assert got.status_code == 200 and len(got.content) > 100_000, asset
