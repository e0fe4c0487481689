"""Operational routes: liveness, readiness and Prometheus metrics (no API key; /metrics may take a scrape token)."""

from __future__ import annotations

import asyncio
import hmac
from typing import Annotated

from fastapi import APIRouter, Header, Response
from prometheus_client import CONTENT_TYPE_LATEST

from online.gateway.deps import RuntimeDep
from online.gateway.problems import Unauthorized

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict:
    """200 while the process serves HTTP."""
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness")
async def readyz(runtime: RuntimeDep, response: Response) -> dict:
    """200 when the registry is loaded and every deployed model server is healthy; 503 otherwise."""
    servers = dict(runtime.servers())
    checks = await asyncio.gather(*(runtime.client.health(url) for url in servers.values()))
    health = dict(zip(servers, checks))
    ready = runtime.last_refresh > 0 and bool(servers) and all(checks)
    response.status_code = 200 if ready else 503
    return {"status": "ready" if ready else "not ready", "registry_loaded": runtime.last_refresh > 0,
            "model_servers": {name: ("healthy" if ok else "unhealthy") for name, ok in health.items()}}


@router.get("/metrics", summary="Prometheus metrics")
def metrics(runtime: RuntimeDep, authorization: Annotated[str | None, Header(include_in_schema=False)] = None
            ) -> Response:
    """Requests, latencies, errors, cache, breakers and log-buffer depth in Prometheus format.

    With `TANDEM_GATEWAY_METRICS_TOKEN` set, the scraper sends `Authorization: Bearer <token>`."""
    token = runtime.gateway.metrics_token
    if token is not None:
        sent = (authorization or "").removeprefix("Bearer ").removeprefix("bearer ").strip()
        if not hmac.compare_digest(sent.encode(), token.get_secret_value().encode()):
            raise Unauthorized("GET /metrics needs `Authorization: Bearer <metrics token>` "
                               "(the gateway's TANDEM_GATEWAY_METRICS_TOKEN)")
    if runtime.log is not None:
        runtime.metrics.log_depth.set(runtime.log.depth)
    return Response(runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)
