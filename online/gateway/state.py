"""State shared by gateway replicas: rate, daily quota and idempotency records, in memory or on Redis.

    SharedState             what a gateway holds: `.limits` (limits.Limits), `.idempotency`
    │                       (idempotency.IdempotencyBackend), `.backend` ("memory" | "redis")
    ├── open_state(None)    in-process: InProcessLimits + IdempotencyStore (the embedded default)
    └── open_state(url)     Redis (`TANDEM_STATE_URL=redis://...`): RedisLimits + RedisIdempotency

On Redis, a request's token bucket and quota increment are one Lua script run on the server (one
round trip, atomic across replicas, timed by the server's clock, so replicas' clocks don't matter);
quota keys are per UTC day and expire an hour after it ends. Idempotency records are claimed with
a script too: the first caller owns the key (for at most `lease_s`), a twin with the same body
polls until the owner's answer is stored (bounded by its deadline, then 409), a different body is
409 at once.

When Redis does not answer (connection refused, or no reply within `timeout_s`), the gateway
skips it for `retry_s` and:
- limits fail **open**: the request is admitted unchecked, `tandem_state_fail_open_total` counts it
  and a warning is logged at most every `log_every_s`;
- idempotent requests fail **closed**: 503 with Retry-After, `tandem_state_fail_closed_total`
  counts it — running them without the record could run them twice.
Neither path ever waits longer than `timeout_s` for Redis.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge

from online.gateway.idempotency import (
    IdempotencyBackend,
    IdempotencyStore,
    StoredResponse,
    check_key,
    still_in_flight,
)
from online.gateway.limits import InProcessLimits, Limits, rate_limited, seconds_to_utc_midnight
from online.gateway.problems import Conflict, QuotaExceeded, ServiceUnavailable, retry_after_seconds

__all__ = ["RedisIdempotency", "RedisLimits", "SharedState", "StateHealth", "open_state"]

log = logging.getLogger("tandem.gateway.state")

_DAY_S = 86_400
_CONFLICT = "Idempotency-Key was already used with a different request body; use a new key"

# KEYS: bucket, quota-of-today. ARGV: rate, burst, take_token (0|1), quota_cost, quota_limit (-1: none),
# quota_expire_at (unix s). Returns {0, used} admitted, {1, wait_ms} rate-limited, {2, used} over quota.
_ADMIT = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local take, cost, limit = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local tokens, ts
if take == 1 then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local b = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
  tokens, ts = tonumber(b[1]), tonumber(b[2])
  if tokens == nil or ts == nil then tokens, ts = burst, now end
  if now > ts then tokens = tokens + (now - ts) * rate; ts = now end
  if tokens > burst then tokens = burst end
  if tokens < 1 then return {1, math.ceil((1 - tokens) / rate * 1000)} end
end
local used = 0
if cost > 0 then
  used = tonumber(redis.call('GET', KEYS[2]) or '0')
  if limit >= 0 and used + cost > limit then return {2, used} end
  used = redis.call('INCRBY', KEYS[2], cost)
  redis.call('EXPIREAT', KEYS[2], ARGV[6])
end
if take == 1 then
  redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens - 1), 'ts', string.format('%.6f', ts))
  redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
end
return {0, used}
"""

# KEYS: record. ARGV: body_hash, owner, lease_ms.
# Returns {0} claimed, {1} other body, {2, status, body, headers} stored answer, {3} in flight.
_CLAIM = """
local r = redis.call('HMGET', KEYS[1], 'h', 's', 'status', 'body', 'headers')
if not r[1] then
  redis.call('HSET', KEYS[1], 'h', ARGV[1], 's', 'run', 'o', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {0}
end
if r[1] ~= ARGV[1] then return {1} end
if r[2] == 'done' then return {2, r[3], r[4], r[5]} end
return {3}
"""

# KEYS: record. ARGV: body_hash, status, body, headers, ttl_ms. Stores the answer unless the record
# belongs to another body (then it is left alone).
_COMPLETE = """
local h = redis.call('HGET', KEYS[1], 'h')
if h and h ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'h', ARGV[1], 's', 'done', 'status', ARGV[2], 'body', ARGV[3], 'headers', ARGV[4])
redis.call('HDEL', KEYS[1], 'o')
redis.call('PEXPIRE', KEYS[1], ARGV[5])
return 1
"""

# KEYS: record. ARGV: body_hash. Deletes an in-flight record of this body.
_ABANDON = """
local r = redis.call('HMGET', KEYS[1], 'h', 's')
if r[1] == ARGV[1] and r[2] == 'run' then return redis.call('DEL', KEYS[1]) end
return 0
"""


class StateHealth:
    """Whether the shared store answers: after a failure it is skipped for `retry_s`; failures are
    counted in metrics and logged at most every `log_every_s`."""

    def __init__(
        self, registry: CollectorRegistry | None = None, *, retry_s: float = 1.0, log_every_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.retry_s = retry_s
        self.log_every_s = log_every_s
        self._clock = clock
        self._down_until = 0.0
        self._logged_at = -1e18
        self._suppressed = 0
        self.errors = Counter("tandem_state_errors_total", "Shared-state calls that failed, by operation.",
                              ["op"], registry=registry)
        self.fail_open = Counter("tandem_state_fail_open_total",
                                 "Requests admitted without a rate/quota check: the shared state did not answer.",
                                 registry=registry)
        self.fail_closed = Counter("tandem_state_fail_closed_total",
                                   "Idempotent requests refused (503): the shared state did not answer.",
                                   registry=registry)
        self.up = Gauge("tandem_state_up", "1 while the shared state answers, 0 after a failure.", registry=registry)
        self.up.set(1)

    def available(self) -> bool:
        return self._clock() >= self._down_until

    def succeeded(self) -> None:
        if self._down_until:
            self._down_until = 0.0
            self.up.set(1)
            log.warning("shared state answers again")

    def failed(self, op: str, exc: BaseException) -> None:
        now = self._clock()
        self._down_until = now + self.retry_s
        self.errors.labels(op).inc()
        self.up.set(0)
        if now - self._logged_at >= self.log_every_s:
            more = f" ({self._suppressed} more failures since the last report)" if self._suppressed else ""
            log.warning("shared state unreachable during %s: %s: %s%s; limits fail open, idempotent requests "
                        "get 503, retrying in %.1f s", op, type(exc).__name__, exc, more, self.retry_s)
            self._logged_at, self._suppressed = now, 0
        else:
            self._suppressed += 1

    def unavailable(self) -> ServiceUnavailable:
        return ServiceUnavailable(
            "the shared state store (Redis) is unreachable, so this Idempotency-Key cannot be honoured safely; "
            f"retry after {retry_after_seconds(self.retry_s)} s with the same key",
            headers={"Retry-After": str(retry_after_seconds(self.retry_s))},
        )


class _RedisOps:
    """Calls to Redis bounded by `timeout_s` whatever the socket does; errors mapped to one type."""

    def __init__(self, client: Any, health: StateHealth, timeout_s: float):
        from redis.exceptions import RedisError

        self.client = client
        self.health = health
        self.timeout_s = timeout_s
        self._errors = (RedisError, OSError, TimeoutError)

    async def run(self, op: str, script: Any, keys: list[str], args: list[Any]) -> Any:
        """The script's reply, or raise `_Unavailable` (the store is down or did not answer in time)."""
        if not self.health.available():
            raise _Unavailable(op)
        try:
            async with asyncio.timeout(self.timeout_s):
                reply = await script(keys=keys, args=args)
        except self._errors as exc:
            self.health.failed(op, exc)
            raise _Unavailable(op) from exc
        self.health.succeeded()
        return reply


class _Unavailable(Exception):
    """The shared store did not answer (already logged and counted)."""


class RedisLimits(Limits):
    """Token buckets and daily quotas in Redis, shared by every gateway on it."""

    name = "redis"

    def __init__(self, ops: _RedisOps, prefix: str = "tandem", wall_clock: Callable[[], float] = time.time):
        self._ops = ops
        self._prefix = prefix
        self._clock = wall_clock
        self._admit = ops.client.register_script(_ADMIT)

    def _keys(self, tenant_id: str, day: int) -> list[str]:
        # `{tenant}` is a hash tag: both keys land in one slot on Redis Cluster too.
        return [f"{self._prefix}:{{{tenant_id}}}:bucket", f"{self._prefix}:{{{tenant_id}}}:quota:{day}"]

    async def _run(self, tenant: Any, take: bool, cost: int) -> None:
        now = self._clock()
        day = int(now // _DAY_S)
        limit = -1 if tenant.daily_quota is None else tenant.daily_quota
        args = [repr(float(tenant.rate_per_s)), tenant.burst, int(take), cost, limit, (day + 1) * _DAY_S + 3600]
        try:
            code, value = await self._ops.run("admit", self._admit, self._keys(tenant.id, day), args)
        except _Unavailable:
            self._ops.health.fail_open.inc()
            return
        if code == 1:
            raise rate_limited(tenant, int(value) / 1000)
        if code == 2:
            raise QuotaExceeded(seconds_to_utc_midnight(now), limit=tenant.daily_quota)

    async def admit(self, tenant: Any, *, quota: bool = True) -> None:
        await self._run(tenant, True, 1 if quota else 0)

    async def consume_quota(self, tenant: Any, n: int = 1) -> None:
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        await self._run(tenant, False, n)

    def consume_quota_blocking(self, tenant: Any, n: int = 1) -> None:
        import anyio.from_thread

        anyio.from_thread.run(self.consume_quota, tenant, n)

    async def usage(self, tenant: Any) -> tuple[int, int | None]:
        day = int(self._clock() // _DAY_S)
        async with asyncio.timeout(self._ops.timeout_s):
            used = await self._ops.client.get(self._keys(tenant.id, day)[1])
        return int(used or 0), tenant.daily_quota


class RedisIdempotency(IdempotencyBackend):
    """Idempotency records in Redis: one claim per key across every gateway replica."""

    def __init__(self, ops: _RedisOps, *, ttl_s: float, lease_s: float, prefix: str = "tandem",
                 poll_s: tuple[float, float] = (0.01, 0.1)):
        self._ops = ops
        self.ttl_s = ttl_s
        self.lease_s = lease_s
        self._prefix = prefix
        self._poll_s = poll_s
        self._claim = ops.client.register_script(_CLAIM)
        self._complete = ops.client.register_script(_COMPLETE)
        self._abandon = ops.client.register_script(_ABANDON)

    def _key(self, tenant: str, key: str) -> str:
        return f"{self._prefix}:{{{tenant}}}:idem:{hashlib.sha256(key.encode()).hexdigest()[:40]}"

    async def begin(
        self, tenant: str, key: str, body_hash: str, *, wait_s: float | None = None
    ) -> StoredResponse | None:
        check_key(key)
        rk = self._key(tenant, key)
        owner = uuid.uuid4().hex
        loop = asyncio.get_running_loop()
        started = loop.time()
        give_up = started + (wait_s if wait_s is not None else self.lease_s)
        pause = self._poll_s[0]
        while True:
            try:
                reply = await self._ops.run("idempotency", self._claim, [rk],
                                            [body_hash, owner, int(self.lease_s * 1000)])
            except _Unavailable:
                self._ops.health.fail_closed.inc()
                raise self._ops.health.unavailable() from None
            code = int(reply[0])
            if code == 0:
                return None
            if code == 1:
                raise Conflict(_CONFLICT)
            if code == 2:
                headers = orjson.loads(reply[3]) if reply[3] else {}
                return StoredResponse(status=int(reply[1]), body=bytes(reply[2]), headers=headers)
            left = give_up - loop.time()
            if left <= 0:
                raise still_in_flight(loop.time() - started)
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, self._poll_s[1])

    async def complete(
        self, tenant: str, key: str, body_hash: str, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        if status >= 500:
            await self.abandon(tenant, key, body_hash)
            return
        args = [body_hash, status, bytes(body), orjson.dumps(dict(headers)), int(self.ttl_s * 1000)]
        try:
            await self._ops.run("idempotency", self._complete, [self._key(tenant, key)], args)
        except _Unavailable:
            # The answer still goes to this caller; the in-flight record expires after its lease.
            pass

    async def abandon(self, tenant: str, key: str, body_hash: str) -> None:
        try:
            await self._ops.run("idempotency", self._abandon, [self._key(tenant, key)], [body_hash])
        except _Unavailable:  # nothing to undo here: the record expires after its lease
            return


@dataclass
class SharedState:
    """Rate/quota limits and idempotency records of one gateway, on the backend chosen by URL."""

    backend: str
    limits: Limits
    idempotency: IdempotencyBackend
    health: StateHealth | None = None
    _client: Any = None

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            await self._client.connection_pool.disconnect()


def open_state(
    url: str | None,
    *,
    registry: CollectorRegistry | None = None,
    idempotency_ttl_s: float = 86_400.0,
    lease_s: float = 150.0,
    timeout_s: float = 0.5,
    retry_s: float = 1.0,
    max_connections: int = 64,
    prefix: str = "tandem",
) -> SharedState:
    """The in-process state when `url` is empty, else Redis at `url` (`redis://host:port/db`,
    `rediss://` for TLS, `unix:///path`). Nothing connects until the first request."""
    if not url:
        return SharedState("memory", InProcessLimits(), IdempotencyStore(ttl_s=idempotency_ttl_s,
                                                                         in_flight_ttl_s=lease_s))
    if not url.startswith(("redis://", "rediss://", "unix://")):
        raise ValueError(f"TANDEM_STATE_URL must be a redis://, rediss:// or unix:// URL, got {url!r}")
    import redis.asyncio as aioredis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=max_connections, timeout=timeout_s, socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0),
    )
    client = aioredis.Redis(connection_pool=pool)
    health = StateHealth(registry, retry_s=retry_s)
    ops = _RedisOps(client, health, timeout_s)
    return SharedState(
        "redis",
        RedisLimits(ops, prefix=prefix),
        RedisIdempotency(ops, ttl_s=idempotency_ttl_s, lease_s=lease_s, prefix=prefix),
        health,
        client,
    )
