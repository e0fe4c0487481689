"""Token buckets, the per-tenant rate limiter, the daily quota and the in-flight cap: in process on fake
clocks, and on a real redis-server (started on a free port, stopped by PID)."""

from __future__ import annotations

import asyncio
import math
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from prometheus_client import CollectorRegistry

from online.gateway.limits import (
    InFlight,
    InProcessLimits,
    QuotaTracker,
    RateLimiter,
    TokenBucket,
    seconds_to_utc_midnight,
)
from online.gateway.problems import QuotaExceeded, RateLimited, problem_response
from online.gateway.state import open_state
from tests.redis_support import free_port, fresh_replica_states, start_redis


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


@dataclass
class T:
    id: str = "acme"
    rate_per_s: float = 2.0
    burst: int = 3
    daily_quota: int | None = None


def test_bucket_allows_a_burst_then_refills_at_the_rate():
    clock = FakeClock()
    bucket = TokenBucket(rate=2.0, burst=3, clock=clock)
    assert [bucket.try_acquire() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_acquire() == pytest.approx(0.5)
    clock.t += 0.5
    assert bucket.try_acquire() == 0.0
    clock.t += 100
    assert bucket.tokens == pytest.approx(3.0)  # never above burst


def test_bucket_validates_its_arguments():
    with pytest.raises(ValueError, match="rate"):
        TokenBucket(0, 1)
    with pytest.raises(ValueError, match="burst"):
        TokenBucket(1, 0)
    with pytest.raises(ValueError, match="cannot take"):
        TokenBucket(1, 2).try_acquire(3)


def test_rate_limiter_raises_429_with_retry_after_until_the_next_token():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    tenant = T(rate_per_s=0.25, burst=2)  # one token every 4 s
    limiter.check(tenant)
    limiter.check(tenant)
    with pytest.raises(RateLimited) as exc:
        limiter.check(tenant)
    assert exc.value.retry_after == 4
    assert problem_response(exc.value, "/", "r").headers["retry-after"] == "4"
    assert "acme" in exc.value.detail and "0.25 requests/s" in exc.value.detail

    clock.t += 2.5  # 1.5 s to go -> ceil to 2
    with pytest.raises(RateLimited) as exc:
        limiter.check(tenant)
    assert exc.value.retry_after == 2
    clock.t += 1.5
    limiter.check(tenant)


def test_rate_limiter_keeps_tenants_apart():
    limiter = RateLimiter(clock=FakeClock())
    a, b = T(id="a", burst=1), T(id="b", burst=1)
    limiter.check(a)
    limiter.check(b)
    with pytest.raises(RateLimited):
        limiter.check(a)


def test_rate_limiter_applies_changed_limits_after_a_reload():
    clock = FakeClock()
    limiter = RateLimiter(clock=clock)
    limiter.check(T(rate_per_s=2.0, burst=1))
    clock.t += 0.1  # 0.2 tokens back at the old rate
    raised = T(rate_per_s=100.0, burst=50)
    with pytest.raises(RateLimited):
        limiter.check(raised)  # what was left carries over...
    clock.t += 0.01  # ...and refills at the new rate from now on
    limiter.check(raised)
    clock.t += 10
    for _ in range(50):
        limiter.check(raised)  # the new burst holds, and no more
    with pytest.raises(RateLimited):
        limiter.check(raised)


def test_seconds_to_utc_midnight():
    noon = datetime(2026, 3, 1, 12, 0, tzinfo=UTC).timestamp()
    assert seconds_to_utc_midnight(noon) == 12 * 3600
    midnight = datetime(2026, 3, 2, tzinfo=UTC).timestamp()
    assert seconds_to_utc_midnight(midnight) == 86400


def test_quota_exceeded_until_utc_midnight_then_reset():
    clock = FakeClock(datetime(2026, 3, 1, 23, 59, 30, tzinfo=UTC).timestamp())
    quota = QuotaTracker(clock=clock)
    tenant = T(daily_quota=2)
    quota.consume(tenant)
    quota.consume(tenant)
    with pytest.raises(QuotaExceeded) as exc:
        quota.consume(tenant)
    assert exc.value.retry_after == 30
    assert exc.value.limit == 2
    assert problem_response(exc.value, "/", "r").headers["retry-after"] == "30"
    assert quota.usage(tenant) == (2, 2)  # the refused request was not counted

    clock.t += 29.5
    with pytest.raises(QuotaExceeded) as exc:
        quota.consume(tenant)
    assert exc.value.retry_after == 1
    clock.t += 0.5  # 00:00:00 UTC
    assert quota.usage(tenant) == (0, 2)
    quota.consume(tenant)
    assert quota.usage(tenant) == (1, 2)


def test_quota_refuses_a_batch_that_would_pass_the_limit_without_counting_it():
    quota = QuotaTracker(clock=FakeClock(1_000_000.0))
    tenant = T(daily_quota=10)
    quota.consume(tenant, 8)
    with pytest.raises(QuotaExceeded):
        quota.consume(tenant, 3)
    quota.consume(tenant, 2)
    assert quota.usage(tenant) == (10, 10)


def test_unlimited_tenants_are_counted_but_never_refused():
    quota = QuotaTracker(clock=FakeClock(0.0))
    tenant = T(daily_quota=None)
    for _ in range(1000):
        quota.consume(tenant)
    assert quota.usage(tenant) == (1000, None)


def test_zero_quota_refuses_everything():
    quota = QuotaTracker(clock=FakeClock(0.0))
    with pytest.raises(QuotaExceeded):
        quota.consume(T(daily_quota=0))


# --- the shared-state interface: in-process and Redis backends ---------------------------------------


@dataclass
class Tenant:
    id: str = "acme"
    rate_per_s: float = 10.0
    burst: int = 3
    daily_quota: int | None = None
    max_in_flight: int | None = None


async def test_in_process_admit_takes_a_token_and_counts_the_quota_in_one_call():
    clock, wall = FakeClock(), FakeClock(1_000_000.0)
    limits = InProcessLimits(clock, wall)
    tenant = Tenant(burst=2, daily_quota=3)
    await limits.admit(tenant)
    await limits.admit(tenant, quota=False)  # a rate-only call (non-prediction routes)
    with pytest.raises(RateLimited):
        await limits.admit(tenant)
    clock.t += 1
    await limits.admit(tenant)
    await limits.admit(tenant)
    assert await limits.usage(tenant) == (3, 3)
    clock.t += 1
    with pytest.raises(QuotaExceeded):
        await limits.admit(tenant)
    assert limits.rates.bucket(tenant).tokens == pytest.approx(2.0)  # the refused request took no token
    wall.t += 86_400
    await limits.admit(tenant)  # a new UTC day


def test_in_flight_caps_each_tenant_separately_and_frees_slots_on_exit():
    rejected: list[str] = []
    gate = InFlight(default=2, on_reject=rejected.append)
    a, b, small = Tenant("a"), Tenant("b"), Tenant("small", max_in_flight=1)
    with gate.slot(a), gate.slot(a):
        with pytest.raises(RateLimited) as exc, gate.slot(a):
            pass
        assert exc.value.headers["Retry-After"] == "1" and "2 requests in flight" in exc.value.detail
        with gate.slot(b):  # another tenant is not held back by a's backlog
            assert gate.count("b") == 1
        with gate.slot(small), pytest.raises(RateLimited), gate.slot(small):
            pass
    assert gate.count("a") == 0 and rejected == ["a", "small"]
    with pytest.raises(ValueError, match="in-flight cap"):
        InFlight(default=0)
    with InFlight(default=None).slot(a):  # no cap
        pass


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis-limits"))
    yield server
    server.stop()


@pytest.fixture
async def replicas(redis_server):
    """Two gateways' shared state on one Redis, emptied first."""
    states = await fresh_replica_states(redis_server.url)
    yield states
    for s in states:
        await s.close()


async def test_redis_buckets_are_shared_by_replicas(replicas):
    a, b = (s.limits for s in replicas)
    tenant = Tenant(rate_per_s=2.0, burst=4)
    for limits in (a, b, a, b):
        await limits.admit(tenant)
    for limits in (a, b):
        with pytest.raises(RateLimited) as exc:
            await limits.admit(tenant)
        assert 1 <= exc.value.retry_after <= 1 and "2 requests/s" in exc.value.detail
    await asyncio.sleep(0.55)  # one token back at 2/s, timed by the Redis server's clock
    await b.admit(tenant)
    with pytest.raises(RateLimited):
        await a.admit(tenant)


async def test_redis_quota_is_per_utc_day_shared_and_survives_a_restart(replicas, redis_server):
    a, b = (s.limits for s in replicas)
    tenant = Tenant(burst=100, daily_quota=3)
    await a.admit(tenant)
    await b.admit(tenant)
    await b.consume_quota(tenant)  # the quota-only call
    with pytest.raises(QuotaExceeded) as exc:
        await a.admit(tenant)
    assert exc.value.limit == 3 and exc.value.headers["Retry-After"] == str(
        max(1, math.ceil(seconds_to_utc_midnight(time.time()))))
    restarted = open_state(redis_server.url, registry=CollectorRegistry())  # a gateway restart
    try:
        assert await restarted.limits.usage(tenant) == (3, 3)
        with pytest.raises(QuotaExceeded):
            await restarted.limits.admit(tenant)
        ttl = await restarted._client.ttl(f"tandem:{{acme}}:quota:{int(time.time() // 86_400)}")
        assert 0 < ttl <= seconds_to_utc_midnight(time.time()) + 3600 + 1  # gone an hour after the day ends
    finally:
        await restarted.close()
    other = Tenant(id="beta", burst=100, daily_quota=1)
    await a.admit(other)  # tenants apart


async def test_redis_quota_refusal_takes_no_token_and_a_rate_refusal_counts_no_quota(replicas):
    limits = replicas[0].limits
    tenant = Tenant(rate_per_s=0.5, burst=1, daily_quota=5)
    await limits.admit(tenant)
    with pytest.raises(RateLimited):
        await limits.admit(tenant)
    assert await limits.usage(tenant) == (1, 5)
    full = Tenant(id="full", rate_per_s=0.5, burst=1, daily_quota=0)
    with pytest.raises(QuotaExceeded):
        await limits.admit(full)
    await limits.admit(full, quota=False)  # the token was still there


async def test_redis_quota_can_be_counted_from_a_worker_thread(replicas):
    import anyio.to_thread

    limits = replicas[0].limits
    tenant = Tenant(daily_quota=1)
    await anyio.to_thread.run_sync(limits.consume_quota_blocking, tenant)
    with pytest.raises(QuotaExceeded):
        await anyio.to_thread.run_sync(limits.consume_quota_blocking, tenant)


async def test_redis_down_limits_fail_open_fast_with_a_metric_and_one_log_line(caplog):
    registry = CollectorRegistry()
    closed_port = free_port()
    state = open_state(f"redis://127.0.0.1:{closed_port}/0", registry=registry, timeout_s=0.3, retry_s=0.2)
    tenant = Tenant(burst=1, daily_quota=0)
    try:
        started = time.monotonic()
        for _ in range(20):
            await state.limits.admit(tenant)  # neither the bucket nor the quota of 0 is enforced
        assert time.monotonic() - started < 2.0
        assert registry.get_sample_value("tandem_state_fail_open_total") == 20
        assert registry.get_sample_value("tandem_state_up") == 0
        assert registry.get_sample_value("tandem_state_errors_total", {"op": "admit"}) >= 1
        assert caplog.text.count("shared state unreachable") == 1  # rate-limited logging
    finally:
        await state.close()


async def test_a_redis_that_does_not_answer_is_given_up_on_after_the_timeout():
    # A listening socket that never replies: the call must not hang past timeout_s.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(16)
        state = open_state(f"redis://127.0.0.1:{silent.getsockname()[1]}/0", registry=CollectorRegistry(),
                           timeout_s=0.3)
        try:
            started = time.monotonic()
            await state.limits.admit(Tenant())
            assert 0.25 < time.monotonic() - started < 1.5
        finally:
            await state.close()


def test_the_state_url_must_name_redis():
    with pytest.raises(ValueError, match="redis://"):
        open_state("postgres://x")
    assert open_state(None).backend == "memory"


async def test_limits_are_enforced_again_once_redis_is_back(tmp_path, caplog):
    server = start_redis(tmp_path / "redis")
    registry = CollectorRegistry()
    state = open_state(server.url, registry=registry, timeout_s=0.3, retry_s=0.2)
    tenant = Tenant(rate_per_s=0.1, burst=1)
    try:
        await state.limits.admit(tenant)
        server.stop()
        await state.limits.admit(tenant)  # over the limit, but Redis is gone: open
        assert registry.get_sample_value("tandem_state_up") == 0
        server = start_redis(tmp_path / "redis", port=server.port)  # a fresh, empty Redis
        await asyncio.sleep(0.25)
        await state.limits.admit(tenant)
        with pytest.raises(RateLimited):
            await state.limits.admit(tenant)
        assert registry.get_sample_value("tandem_state_up") == 1
        assert "shared state answers again" in caplog.text
    finally:
        await state.close()
        server.stop()
