"""The model server's lean `POST /predict` endpoint against a stand-in for LitServe's queues."""

from __future__ import annotations

import asyncio
import pickle
from dataclasses import dataclass, field
from typing import Any

import orjson
from fastapi import HTTPException
from litserve.utils import LitAPIStatus, PickleableHTTPException
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from online.servers.predict_route import PredictEndpoint


@dataclass
class _Queue:
    """LitServe's request queue; `answer` plays the worker and the response reader."""

    answer: Any
    items: list = field(default_factory=list)
    server: Any = None

    def put(self, item: tuple) -> None:
        self.items.append(item)
        _, uid, _, payload = item
        buffer_item = self.server.response_buffer[uid]
        loop = asyncio.get_running_loop()

        def deliver() -> None:
            buffer_item.response = self.answer(payload)
            buffer_item.event.set()

        loop.call_soon(deliver)


class _App:
    response_queue_id = 0


class _Server:
    def __init__(self, answer: Any) -> None:
        self.app = _App()
        self.response_buffer: dict = {}
        self.queue = _Queue(answer, server=self)

    def _get_request_queue(self, api_path: str) -> _Queue:
        assert api_path == "/predict"
        return self.queue


def _client(answer: Any, **kwargs: Any) -> tuple[TestClient, _Server]:
    server = _Server(answer)
    app = Starlette(routes=[Route("/predict", PredictEndpoint(server, **kwargs), methods=["POST"])])
    return TestClient(app), server


def _echo(payload: dict) -> tuple[Response, str]:
    return Response(orjson.dumps({"got": payload}), media_type="application/json"), LitAPIStatus.OK


def test_the_body_goes_onto_the_request_queue_and_the_workers_response_comes_back() -> None:
    client, server = _client(_echo)
    resp = client.post("/predict", content=b'{"inputs": [{"text": "hi"}]}')
    assert resp.status_code == 200
    assert resp.json() == {"got": {"inputs": [{"text": "hi"}]}}
    (queue_id, uid, enqueued_at, payload), = server.queue.items
    assert queue_id == 0 and isinstance(uid, str) and enqueued_at > 0
    assert payload == {"inputs": [{"text": "hi"}]}
    assert server.response_buffer == {}  # nothing left behind


def test_each_request_gets_its_own_id() -> None:
    client, server = _client(_echo)
    for i in range(3):
        assert client.post("/predict", json={"i": i}).json() == {"got": {"i": i}}
    assert len({item[1] for item in server.queue.items}) == 3


def test_a_body_that_is_not_json_is_422_saying_where_and_never_reaches_the_worker() -> None:
    client, server = _client(_echo)
    resp = client.post("/predict", content=b'{"inputs": [')
    assert resp.status_code == 422
    (error,) = resp.json()["detail"]
    assert error["loc"] == ["body"] and error["type"] == "json_invalid"
    assert "not valid JSON" in error["msg"]
    assert server.queue.items == []


def test_an_oversized_body_is_413_and_never_reaches_the_worker() -> None:
    client, server = _client(_echo, max_body=64)
    resp = client.post("/predict", json={"inputs": [{"text": "x" * 100}]})
    assert resp.status_code == 413
    assert "over 64 bytes" in resp.json()["detail"]
    assert server.queue.items == []
    assert client.post("/predict", json={"inputs": []}).status_code == 200


def test_a_worker_error_keeps_its_http_status_and_detail() -> None:
    # The worker sends an HTTPException through the queue pickled (LitServe's PickleableHTTPException).
    sent = PickleableHTTPException.from_exception(HTTPException(504, "Request timed out"))
    client, _ = _client(lambda payload: (pickle.loads(pickle.dumps(sent)), LitAPIStatus.ERROR))
    resp = client.post("/predict", json={})
    assert resp.status_code == 504 and resp.json() == {"detail": "Request timed out"}


def test_an_unexpected_worker_exception_is_a_500() -> None:
    client, _ = _client(lambda payload: (RuntimeError("boom"), LitAPIStatus.ERROR))
    resp = client.post("/predict", json={})
    assert resp.status_code == 500
    assert resp.json() == {"detail": "Internal server error"}
