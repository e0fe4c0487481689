"""The API docs, served offline: Swagger UI at /docs and ReDoc at /redoc, their assets from a package.

FastAPI's own pages load Swagger UI and ReDoc from a CDN and stay blank without the internet; the
assets here come from the `fastapi-offline` wheel. The OpenAPI document declares how to
authenticate (HTTP bearer or the `X-API-Key` header, a separate bearer token for /metrics), so
Swagger UI's "Authorize" button works.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS_PATH", "SECURITY_SCHEMES", "install_docs"]

ASSETS_PATH = "/docs/assets"
_ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
SECURITY_SCHEMES: dict[str, dict[str, Any]] = {
    "BearerAuth": {"type": "http", "scheme": "bearer", "description": "`Authorization: Bearer <API key>`"},
    "ApiKeyAuth": {"type": "apiKey", "in": "header", "name": "X-API-Key", "description": "The API key"},
    "MetricsToken": {"type": "http", "scheme": "bearer",
                     "description": "GET /metrics, when TANDEM_GATEWAY_METRICS_TOKEN is set"},
}
_API_KEY = [{"BearerAuth": []}, {"ApiKeyAuth": []}]


def install_docs(app: FastAPI) -> None:
    """Serve /docs, /redoc and their assets from disk, and declare the security schemes in OpenAPI."""
    app.mount(ASSETS_PATH, StaticFiles(directory=_ASSETS_DIR), name="docs-assets")
    title = app.title

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=app.openapi_url, title=f"{title} — Swagger UI",
            oauth2_redirect_url="/docs/oauth2-redirect",
            swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js", swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    @app.get("/docs/oauth2-redirect", include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(openapi_url=app.openapi_url, title=f"{title} — ReDoc",
                              redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                              redoc_favicon_url=f"{ASSETS_PATH}/favicon.png", with_google_fonts=False)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes)
            spec.setdefault("components", {})["securitySchemes"] = SECURITY_SCHEMES
            for path, ops in spec.get("paths", {}).items():
                for op in ops.values():
                    if not isinstance(op, dict):
                        continue
                    if path.startswith("/v1/"):
                        op["security"] = _API_KEY
                    elif path == "/metrics":
                        op["security"] = [{"MetricsToken": []}, {}]  # optional: only when a token is set
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
