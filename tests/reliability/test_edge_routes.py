"""The gateway's edge in-process, on both request paths: domain errors, hostile headers and bodies,
metrics labels and the order of checks (no model server needed: every request here is refused)."""

from __future__ import annotations

import asyncio

import orjson
import pytest

from online.gateway.problems import PROBLEM_MEDIA_TYPE

pytestmark = pytest.mark.reliability

ADMIN = "/v1/admin/models"
PREDICTION_ROUTES = [
    ("/v1/models/classifier/predict", {"instances": [{"text": "x"}]}),
    ("/v1/embeddings", {"input": "x"}),
    ("/v1/rerank", {"query": "q", "documents": ["a"]}),
    ("/v1/workflows/classify/run", {"input": {"text": "x"}}),
]
BODY_ROUTES = [*PREDICTION_ROUTES, ("/v1/jobs", {"workflow": "classify", "inputs": [{"text": "x"}]}),
               (f"{ADMIN}/embedder/promote", {"version": "1"})]


def auth(client, tenant="acme", **extra) -> dict:
    return {"Authorization": f"Bearer {client.keys[tenant]}", **extra}


@pytest.fixture(autouse=True)
def _keys(client, home):
    client.keys = home.keys


def assert_problem(resp, status: int, needle: str) -> dict:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == PROBLEM_MEDIA_TYPE
    body = resp.json()
    assert body["status"] == status
    assert needle in body["detail"], body
    return body


# --- 1. domain errors of every admin route ----------------------------------------------------


@pytest.mark.parametrize(("method", "path", "body", "status", "needle"), [
    ("GET", f"{ADMIN}/nope", None, 404, "no model named 'nope'"),
    ("GET", f"{ADMIN}/nope/history", None, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/nope/promote", {"version": "1"}, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/embedder/promote", {"version": "9"}, 404, "no version or alias '9'"),
    ("POST", f"{ADMIN}/nope/canary", {"version": "2", "weight": 0.1}, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/embedder/canary", {"version": "9", "weight": 0.1}, 404, "'9'"),
    ("POST", f"{ADMIN}/embedder/canary", {"version": "1", "weight": 0.1}, 409, "already stable"),
    ("DELETE", f"{ADMIN}/nope/canary", None, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/nope/shadow", {"version": "2"}, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/nope/shadow", {"version": None}, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/embedder/shadow", {"version": "9"}, 404, "'9'"),
    ("POST", f"{ADMIN}/embedder/shadow", {"version": "1"}, 409, "already stable"),
    ("POST", f"{ADMIN}/nope/rollback", {}, 404, "no model named 'nope'"),
    ("POST", f"{ADMIN}/classifier/rollback", {"reason": "x"}, 409, "no previous stable version"),
])
def test_admin_routes_answer_unknown_models_versions_and_impossible_moves_with_4xx(
        client, method, path, body, status, needle):
    resp = client.request(method, path, json=body, headers=auth(client))
    problem = assert_problem(resp, status, needle)
    assert problem["type"].startswith("urn:tandem:problem:")


def test_unknown_model_on_a_prediction_route_is_404(client):
    resp = client.post("/v1/models/nope/predict", json={"instances": [{"text": "x"}]}, headers=auth(client))
    assert_problem(resp, 404, "nope")


# --- 2. hostile headers ----------------------------------------------------------------------


@pytest.mark.parametrize("rid", [b"\xff\xfe\x00bad", b"a b", b"x" * 129, b"caf\xc3\xa9"])
def test_an_invalid_request_id_is_replaced_never_echoed(client, rid):
    resp = client.post("/v1/embeddings", content=b"{}", headers=[*auth(client).items(),
                                                                  ("content-type", "application/json"),
                                                                  ("x-request-id", rid)])
    assert resp.status_code == 422
    [sent] = resp.headers.get_list("x-request-id")
    assert sent.encode() != rid and len(sent) == 32 and sent.isalnum()
    assert resp.json()["request_id"] == sent
    assert rid not in resp.content


def test_a_valid_request_id_is_kept_and_every_route_sends_each_header_once(client):
    for path, body in BODY_ROUTES:
        resp = client.post(path, json=body, headers=auth(client, **{"X-Request-ID": "req-123_abc.DEF"}))
        assert resp.headers.get_list("x-request-id") == ["req-123_abc.DEF"], path
        names = [k.lower() for k, _ in resp.headers.multi_items()]
        assert len(names) == len(set(names)), (path, names)


def test_oversized_headers_get_431(client):
    resp = client.get("/v1/workflows", headers=auth(client, **{"X-Junk": "j" * 20_000}))
    assert_problem(resp, 431, "the limit is")


@pytest.mark.parametrize("header", ["Authorization", "X-API-Key", "X-Routing-Key", "traceparent",
                                    "X-Deadline-Ms", "Idempotency-Key"])
def test_non_utf8_header_values_get_4xx_not_500(client, header):
    headers = [("content-type", "application/json"), (header, b"\xff\xfe\xfd")]
    if header not in ("Authorization", "X-API-Key"):
        headers += list(auth(client).items())
    for path, body in BODY_ROUTES:
        resp = client.post(path, json=body, headers=headers)
        assert resp.status_code < 500 or resp.json()["type"].endswith("service-unavailable"), (path, resp.text)
        reads_it = {"Authorization": True, "X-API-Key": True, "X-Deadline-Ms": (path, body) in PREDICTION_ROUTES,
                    "Idempotency-Key": "/admin/" not in path}.get(header, False)
        if reads_it:
            assert 400 <= resp.status_code < 500, (path, resp.text)


# --- 3. bodies --------------------------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/jsonx"])
def test_bodies_must_be_sent_as_application_json(client, content_type):
    for path, body in BODY_ROUTES:
        headers = auth(client) | ({"content-type": content_type} if content_type else {})
        resp = client.post(path, content=orjson.dumps(body), headers=headers)
        assert_problem(resp, 415, "Content-Type: application/json")


def test_json_with_a_charset_is_accepted(client):
    resp = client.post("/v1/embeddings", content=b'{"input": ""}',
                       headers=auth(client, **{"content-type": "application/json; charset=utf-8"}))
    assert resp.status_code == 422 and "input" in resp.json()["detail"]


MALFORMED = [
    (b"", "the request body is empty"),
    (b"   ", "the request body is empty"),
    (b'{"input": "\xff\xfe"}', "not valid UTF-8"),
    (b'{"input": NaN}', "NaN and Infinity are not JSON numbers"),
    (b'{"input": -Infinity}', "NaN and Infinity are not JSON numbers"),
    (b'{"input": "a\x00b"}', "NUL"),
    (b'{"input": "a\\u0000b"}', "NUL"),
    (b"[" * 10_000 + b"]" * 10_000, "nested deeper than 32 levels"),
    (b'{"input": ' + b'{"a": ' * 5_000 + b"1" + b"}" * 5_001, "nested deeper than 32 levels"),
    (b'{"input": "x"', "not valid JSON"),
    (b'["input"]', "must be a JSON object"),
]


@pytest.mark.parametrize(("raw", "needle"), MALFORMED, ids=lambda v: repr(v)[:30] if isinstance(v, bytes) else "")
def test_malformed_bodies_are_422_naming_the_problem_on_every_body_route(client, raw, needle):
    details = set()
    for path, _ in BODY_ROUTES:
        resp = client.post(path, content=raw, headers=auth(client, **{"content-type": "application/json"}))
        body = assert_problem(resp, 422, needle)
        assert body["errors"][0]["field"] == "body"
        details.add(body["detail"])
    assert len(details) == 1  # the same words on the prediction pipeline and the edge-read routes (jobs)


def test_an_empty_body_without_a_content_type_is_422_not_415(client):
    resp = client.post(f"{ADMIN}/classifier/rollback", headers=auth(client))
    assert_problem(resp, 422, "empty")


def test_bodies_over_the_limit_are_413_whether_declared_or_streamed(client):
    big = b'{"input": "' + b"a" * (100 << 10) + b'"}'
    resp = client.post("/v1/embeddings", content=big, headers=auth(client, **{"content-type": "application/json"}))
    assert_problem(resp, 413, "the limit is 65536 bytes")

    def chunks():  # no Content-Length: the edge stops reading past the limit
        yield b'{"input": "'
        for _ in range(1100):
            yield b"a" * 1024
        yield b'"}'

    resp = client.post("/v1/jobs", content=chunks(), headers=auth(client, **{"content-type": "application/json"}))
    assert_problem(resp, 413, "the limit is 1048576 bytes")


def test_the_job_input_cap_applies_before_the_inputs_are_built(client):
    raw = b'{"workflow": "classify", "inputs": [' + b"{}," * 300_000 + b"{}]}"  # 900 kB, 300k objects
    resp = client.post("/v1/jobs", content=raw, headers=auth(client, **{"content-type": "application/json"}))
    assert_problem(resp, 413, "more than 100000 items")


# --- order of checks: a throttled or anonymous request never has its body read ---------------


def _asgi_post(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """POST `path` straight through ASGI; returns (status, whether the app read the body)."""
    read = {"body": False}
    sent: dict = {}

    async def receive():
        read["body"] = True
        return {"type": "http.request", "body": b'{"input": "x"}', "more_body": False}

    async def send(message):
        if message["type"] == "http.response.start":
            sent["status"] = message["status"]

    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "headers": [(b"content-type", b"application/json"), (b"content-length", b"14"), *headers],
             "http_version": "1.1", "scheme": "http", "server": ("t", 80), "client": ("c", 1), "root_path": "",
             "app": app}
    asyncio.run(app(scope, receive, send))
    return sent["status"], read["body"]


@pytest.mark.parametrize("path", [p for p, _ in BODY_ROUTES])
def test_throttled_and_anonymous_requests_are_refused_before_their_body_is_read(client, path):
    app = client.app
    assert _asgi_post(app, path, []) == (401, False)
    key = [(b"authorization", f"Bearer {client.keys['slow']}".encode())]
    statuses = [_asgi_post(app, path, key) for _ in range(2)]
    assert statuses[-1] == (429, False), statuses


# --- 4. metrics --------------------------------------------------------------------------------


def test_metrics_labels_are_bounded_and_429s_carry_their_tenant(client):
    for i in range(20):  # unauthenticated calls to random workflow names and random paths
        client.post(f"/v1/workflows/random-{i}/run", json={"input": {}})
        client.get(f"/v1/nowhere-{i}")
    client.post("/v1/workflows/classify/run", json={"input": {}}, headers=auth(client, "slow"))
    client.post("/v1/workflows/classify/run", json={"input": {}}, headers=auth(client, "slow"))
    text = client.get("/metrics").text
    series = [line for line in text.splitlines() if line.startswith("tandem_requests_total{")]
    assert not any("random-" in s or "nowhere-" in s for s in series), series
    assert any('workflow="<unknown>"' in s for s in series)
    assert any('route="<unmatched>"' in s for s in series)
    assert any('tenant="slow"' in s and 'status="429"' in s for s in series), series


def test_metrics_can_require_a_scrape_token(client, monkeypatch):
    from pydantic import SecretStr
    monkeypatch.setattr(client.runtime.gateway, "metrics_token", SecretStr("scrape-me"))
    assert_problem(client.get("/metrics"), 401, "metrics token")
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 401
    ok = client.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
    assert ok.status_code == 200 and "tandem_requests_total" in ok.text


def test_errors_never_name_internal_addresses(client):
    from online.gateway.problems import ServiceUnavailable
    client.runtime.servers._current = {"embedder": "http://127.0.0.1:1"}  # nothing listens there
    try:
        resp = client.post("/v1/models/embedder/predict", json={"instances": [{"text": "x"}]},
                           headers=auth(client, **{"X-Deadline-Ms": "3000"}))
    finally:
        client.runtime.servers._current = {}
    assert resp.status_code in (502, 503, 504), resp.text
    assert "127.0.0.1" not in resp.text and "http://" not in resp.text
    assert "embedder" in resp.json()["detail"]
    assert ServiceUnavailable  # the class the engine raises for this
