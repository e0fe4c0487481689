"""The model server's `POST /predict`: one lean ASGI endpoint in front of LitServe's queues.

LitServe's own endpoint is a FastAPI route: every request solves its (sync, so thread-pooled) auth
dependency, parses JSON with the standard library and walks the router. This endpoint does the same
job on the same transport — the request goes onto LitServe's request queue as LitServe puts it,
the worker's answer comes back through LitServe's response buffer — and does nothing else. It is
inserted ahead of LitServe's route, which stays registered so `/openapi.json` still documents
`/predict`, and is never reached.

A body that is not JSON gets the 422 FastAPI gave (`loc ["body"]`, saying where it broke); valid
JSON of the wrong shape reaches the worker, whose schema check answers 422 naming the field.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import orjson
from fastapi import HTTPException
from litserve.server import RegularRequestHandler
from litserve.utils import LitAPIStatus, ResponseBufferItem
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

__all__ = ["install_predict_route"]

MAX_BODY = 64 * 1024 * 1024  # bytes; a larger request body is refused (413) before it is parsed


class PredictEndpoint:
    """ASGI app: the body onto LitServe's request queue, the worker's `Response` back to the client."""

    def __init__(self, server: Any, api_path: str = "/predict", *, max_body: int = MAX_BODY) -> None:
        self.server = server
        self.api_path = api_path
        self.max_body = max_body
        self._ids = itertools.count()  # unique within an HTTP process, which has its own response queue

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        body = await _read_body(receive, self.max_body)
        if body is None:
            await _error(413, f"request body over {self.max_body} bytes; send fewer inputs per request")(
                scope, receive, send
            )
            return
        try:
            payload = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            detail = [{"type": "json_invalid", "loc": ["body"], "msg": f"request body is not valid JSON: {exc}"}]
            await _error(422, detail)(scope, receive, send)
            return
        await (await self.submit(payload))(scope, receive, send)

    async def submit(self, payload: Any) -> Response:
        """Queue `payload` for the inference worker and wait for its answer."""
        server = self.server
        uid = str(next(self._ids))
        item = ResponseBufferItem(asyncio.Event())
        # Registered before the put: the answer is read on this event loop, so it cannot arrive
        # before this coroutine yields, but a buffer entry must exist when it does.
        server.response_buffer[uid] = item
        try:
            server._get_request_queue(self.api_path).put(
                (server.app.response_queue_id, uid, time.monotonic(), payload)
            )
            await item.event.wait()
        finally:
            server.response_buffer.pop(uid, None)
        response, status = item.response
        if status == LitAPIStatus.ERROR:
            try:
                RegularRequestHandler._handle_error_response(response)  # always raises
            except HTTPException as exc:
                return _error(exc.status_code, exc.detail)
        return response


def install_predict_route(server: Any, api_path: str = "/predict") -> PredictEndpoint:
    """Serve `api_path` with a `PredictEndpoint`, ahead of LitServe's route (kept for OpenAPI)."""
    endpoint = PredictEndpoint(server, api_path)
    server.app.router.routes.insert(0, Route(api_path, endpoint, methods=["POST"]))
    return endpoint


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _error(status: int, detail: Any) -> Response:
    return Response(orjson.dumps({"detail": detail}), status_code=status, media_type="application/json")
