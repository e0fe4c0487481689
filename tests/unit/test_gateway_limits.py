"""Token buckets, the per-tenant rate limiter and the daily quota, on fake clocks."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

import pytest

from online.gateway.limits import QuotaTracker, RateLimiter, TokenBucket, seconds_to_utc_midnight
from online.gateway.problems import QuotaExceeded, RateLimited, problem_response


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
