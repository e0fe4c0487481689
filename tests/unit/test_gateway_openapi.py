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
