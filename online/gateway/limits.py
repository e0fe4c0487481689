"""Per-tenant request rate (token bucket) and daily quota (per UTC day), both in memory.

The state lives in one gateway process: with N replicas each enforces its own bucket and quota.
Both keep a lock because FastAPI runs plain `def` dependencies in a thread pool.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol

from online.gateway.problems import QuotaExceeded, RateLimited, retry_after_seconds

__all__ = ["QuotaTracker", "RateLimiter", "TokenBucket", "seconds_to_utc_midnight"]

_DAY_S = 86_400


class _RateLimited(Protocol):
    id: str
    rate_per_s: float
    burst: int


class _Quota(Protocol):
    id: str
    daily_quota: int | None


class TokenBucket:
    """`burst` tokens, refilled at `rate` per second; not locked itself (its owner locks)."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic):
        if rate <= 0:
            raise ValueError(f"rate must be > 0 tokens per second, got {rate!r}")
        if burst < 1:
            raise ValueError(f"burst must be at least 1 token, got {burst!r}")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._tokens = float(burst)
        self._updated = clock()

    def _refill(self) -> None:
        now = self._clock()
        if now > self._updated:
            self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = max(now, self._updated)

    @property
    def tokens(self) -> float:
        self._refill()
        return self._tokens

    def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens and return 0.0, or take none and return the seconds until `n` are there."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of burst {self.burst}")
        self._refill()
        if self._tokens >= n:
            self._tokens -= n
            return 0.0
        return (n - self._tokens) / self.rate


class RateLimiter:
    """One token bucket per tenant, sized from the tenant's `rate_per_s` and `burst`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, tenant: _RateLimited) -> None:
        """Take one token for `tenant` or raise `RateLimited` with Retry-After until one is back."""
        with self._lock:
            bucket = self._bucket(tenant)
            wait = bucket.try_acquire()
        if wait > 0:
            raise RateLimited(
                wait,
                detail=(
                    f"tenant {tenant.id!r} is over its rate limit of {tenant.rate_per_s:g} requests/s "
                    f"(burst {tenant.burst}); retry after {retry_after_seconds(wait)} s"
                ),
            )

    def _bucket(self, tenant: _RateLimited) -> TokenBucket:
        bucket = self._buckets.get(tenant.id)
        if bucket is None or bucket.rate != tenant.rate_per_s or bucket.burst != tenant.burst:
            # New tenant, or its limits changed on a reload: keep what it had left, capped by the new burst.
            fresh = TokenBucket(tenant.rate_per_s, tenant.burst, self._clock)
            if bucket is not None:
                fresh._tokens = min(bucket.tokens, fresh.burst)
            self._buckets[tenant.id] = bucket = fresh
        return bucket


def seconds_to_utc_midnight(now: float) -> float:
    """Seconds from the Unix time `now` to the next 00:00 UTC (Unix days are exactly 86,400 s)."""
    return (now // _DAY_S + 1) * _DAY_S - now


class QuotaTracker:
    """Requests per tenant per UTC day, against the tenant's `daily_quota` (None = unlimited)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._used: dict[str, tuple[int, int]] = {}  # tenant id -> (UTC day number, used)
        self._lock = threading.Lock()

    def consume(self, tenant: _Quota, n: int = 1) -> None:
        """Count `n` requests, or count none and raise `QuotaExceeded` if they would pass the quota."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        now = self._clock()
        day = int(now // _DAY_S)
        limit = tenant.daily_quota
        with self._lock:
            used = self._used_today(tenant.id, day)
            if limit is not None and used + n > limit:
                raise QuotaExceeded(seconds_to_utc_midnight(now), limit=limit)
            self._used[tenant.id] = (day, used + n)

    def usage(self, tenant: _Quota) -> tuple[int, int | None]:
        """(requests counted today, daily limit or None)."""
        day = int(self._clock() // _DAY_S)
        with self._lock:
            return self._used_today(tenant.id, day), tenant.daily_quota

    def _used_today(self, tenant_id: str, day: int) -> int:
        counted_day, used = self._used.get(tenant_id, (day, 0))
        return used if counted_day == day else 0
