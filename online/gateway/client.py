"""HTTP client for the model servers: one pooled keep-alive connection set, errors mapped once.

    ModelCallError                  a call to a model server failed
    ├── RetryableCallError          worth another attempt (connect error, timeout, 5xx)
    │   ├── EndpointUnreachable     no connection could be made (server down)
    │   └── CallTimeout             the attempt's timeout passed
    └── RejectedCall                the server refused the request (4xx): retrying cannot help
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
import orjson


class ModelCallError(Exception):
    """A call to a model server failed."""

    def __init__(self, message: str, *, status: int | None = None):
        super().__init__(message)
        self.status = status


class RetryableCallError(ModelCallError):
    """A failure worth another attempt."""


class EndpointUnreachable(RetryableCallError):
    """No connection could be made to the model server."""


class CallTimeout(RetryableCallError):
    """The attempt's timeout passed before the server answered."""


class RejectedCall(ModelCallError):
    """The server refused the request (4xx); another attempt would be refused too."""


@dataclass(frozen=True)
class ModelReply:
    """A model server's answer: the version that served and one output per input."""

    version: str
    outputs: list[dict]


class ModelClient:
    """Calls `POST {base_url}/predict` with `{"version", "inputs"}` over pooled HTTP/1.1 keep-alive."""

    def __init__(self, *, transport: httpx.AsyncBaseTransport | None = None, max_connections: int = 256):
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(transport=transport, limits=limits, timeout=None)

    async def predict(
        self,
        base_url: str,
        version: str,
        inputs: list[dict],
        *,
        timeout_s: float,
        headers: Mapping[str, str] | None = None,
    ) -> ModelReply:
        body = orjson.dumps({"version": version, "inputs": inputs})
        # identity: compressing JSON on one side of a loopback/LAN hop only to inflate it on the other
        # costs CPU on both and saves nothing worth having.
        hdrs = {"content-type": "application/json", "accept-encoding": "identity", **(headers or {})}
        try:
            resp = await self._http.post(
                f"{base_url}/predict", content=body, headers=hdrs, timeout=httpx.Timeout(timeout_s)
            )
        except httpx.TimeoutException as exc:
            raise CallTimeout(f"{base_url} did not answer within {timeout_s * 1000:.0f} ms") from exc
        except httpx.TransportError as exc:
            raise EndpointUnreachable(f"{base_url} is unreachable: {type(exc).__name__}") from exc
        if resp.status_code >= 500 or resp.status_code == 429:
            raise RetryableCallError(
                f"{base_url} answered {resp.status_code}: {_detail(resp)}", status=resp.status_code
            )
        if resp.status_code >= 400:
            raise RejectedCall(f"{base_url} refused the input: {_detail(resp)}", status=resp.status_code)
        data = orjson.loads(resp.content)
        outputs = data.get("outputs")
        if not isinstance(outputs, list) or len(outputs) != len(inputs):
            raise RetryableCallError(f"{base_url} returned a malformed reply ({len(outputs or [])} outputs)")
        return ModelReply(version=str(data.get("version", version)), outputs=outputs)

    async def health(self, base_url: str, timeout_s: float = 1.0) -> bool:
        try:
            resp = await self._http.get(f"{base_url}/health", timeout=timeout_s)
        except httpx.HTTPError:
            return False
        return resp.status_code == 200

    async def aclose(self) -> None:
        await self._http.aclose()


def _detail(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:300]
    if isinstance(data, dict):
        return str(data.get("detail") or data)[:300]
    return str(data)[:300]
