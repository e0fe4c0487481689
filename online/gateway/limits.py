"""Per-tenant admission: request rate (token bucket), daily quota (per UTC day), requests in flight.

    Limits                      the shared-state interface for rate and quota (one call per request)
    ├── InProcessLimits         this process only (the embedded default): a dict of buckets, a lock
    └── state.RedisLimits       every gateway replica on one Redis (`TANDEM_STATE_URL`)
    InFlight                    per-tenant cap on requests in flight in *this* gateway (fair admission)

`admit(tenant, quota=True)` takes one token and counts one request against today's quota, or takes
nothing and raises `RateLimited` / `QuotaExceeded` (429 with Retry-After). The in-process backend
does no I/O: `admit` is a coroutine only so that both backends share one call site.
"""

from __future__ import annotations

import abc
import threading
import time
from collections.abc import Callable
from typing import Protocol

from online.gateway.problems import QuotaExceeded, RateLimited, retry_after_seconds

__all__ = [
    "InFlight",
    "InProcessLimits",
    "Limits",
    "QuotaTracker",
    "RateLimiter",
    "TokenBucket",
    "seconds_to_utc_midnight",
]

_DAY_S = 86_400


class _Limited(Protocol):
    id: str
    rate_per_s: float
    burst: int
    daily_quota: int | None


class _Concurrency(Protocol):
    id: str
    max_in_flight: int | None


def rate_limited(tenant: _Limited, wait_s: float) -> RateLimited:
    return RateLimited(
        wait_s,
        detail=(
            f"tenant {tenant.id!r} is over its rate limit of {tenant.rate_per_s:g} requests/s "
            f"(burst {tenant.burst}); retry after {retry_after_seconds(wait_s)} s"
        ),
    )


def seconds_to_utc_midnight(now: float) -> float:
    """Seconds from the Unix time `now` to the next 00:00 UTC (Unix days are exactly 86,400 s)."""
    return (now // _DAY_S + 1) * _DAY_S - now


class Limits(abc.ABC):
    """Rate and daily quota per tenant, wherever their state lives."""

    name: str = "?"

    @abc.abstractmethod
    async def admit(self, tenant: _Limited, *, quota: bool = True) -> None:
        """Take one token (and, if `quota`, count one request today) or raise 429 taking nothing."""

    @abc.abstractmethod
    async def consume_quota(self, tenant: _Limited, n: int = 1) -> None:
        """Count `n` requests against today's quota, or none and raise `QuotaExceeded`."""

    @abc.abstractmethod
    async def usage(self, tenant: _Limited) -> tuple[int, int | None]:
        """(requests counted today, daily limit or None)."""

    @abc.abstractmethod
    def consume_quota_blocking(self, tenant: _Limited, n: int = 1) -> None:
        """`consume_quota` for plain `def` routes, which FastAPI runs in a worker thread."""

    async def close(self) -> None:
        """Release connections, if any."""


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

    def wait_s(self, n: int = 1) -> float:
        """0.0 if `n` tokens are there now, else the seconds until they are (takes nothing)."""
        if n > self.burst:
            raise ValueError(f"cannot take {n} tokens from a bucket of burst {self.burst}")
        self._refill()
        return 0.0 if self._tokens >= n else (n - self._tokens) / self.rate

    def try_acquire(self, n: int = 1) -> float:
        """Take `n` tokens and return 0.0, or take none and return the seconds until `n` are there."""
        wait = self.wait_s(n)
        if wait == 0.0:
            self._tokens -= n
        return wait


class RateLimiter:
    """One token bucket per tenant, sized from the tenant's `rate_per_s` and `burst`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._lock = threading.Lock()

    def check(self, tenant: _Limited) -> None:
        """Take one token for `tenant` or raise `RateLimited` with Retry-After until one is back."""
        with self._lock:
            wait = self.bucket(tenant).try_acquire()
        if wait > 0:
            raise rate_limited(tenant, wait)

    def bucket(self, tenant: _Limited) -> TokenBucket:
        """The tenant's bucket (the caller holds the lock)."""
        bucket = self._buckets.get(tenant.id)
        if bucket is None or bucket.rate != tenant.rate_per_s or bucket.burst != tenant.burst:
            # New tenant, or its limits changed on a reload: keep what it had left, capped by the new burst.
            fresh = TokenBucket(tenant.rate_per_s, tenant.burst, self._clock)
            if bucket is not None:
                fresh._tokens = min(bucket.tokens, fresh.burst)
            self._buckets[tenant.id] = bucket = fresh
        return bucket


class QuotaTracker:
    """Requests per tenant per UTC day, against the tenant's `daily_quota` (None = unlimited)."""

    def __init__(self, clock: Callable[[], float] = time.time):
        self._clock = clock
        self._used: dict[str, tuple[int, int]] = {}  # tenant id -> (UTC day number, used)
        self._lock = threading.Lock()

    def consume(self, tenant: _Limited, n: int = 1) -> None:
        """Count `n` requests, or count none and raise `QuotaExceeded` if they would pass the quota."""
        with self._lock:
            self.consume_locked(tenant, n)

    def check_locked(self, tenant: _Limited, n: int = 1) -> tuple[int, int]:
        """(day, used) if `n` more fit today; raise `QuotaExceeded` otherwise (the caller holds the lock)."""
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        now = self._clock()
        day = int(now // _DAY_S)
        used = self._used_today(tenant.id, day)
        limit = tenant.daily_quota
        if limit is not None and used + n > limit:
            raise QuotaExceeded(seconds_to_utc_midnight(now), limit=limit)
        return day, used

    def consume_locked(self, tenant: _Limited, n: int = 1) -> None:
        day, used = self.check_locked(tenant, n)
        self._used[tenant.id] = (day, used + n)

    def usage(self, tenant: _Limited) -> tuple[int, int | None]:
        """(requests counted today, daily limit or None)."""
        day = int(self._clock() // _DAY_S)
        with self._lock:
            return self._used_today(tenant.id, day), tenant.daily_quota

    def _used_today(self, tenant_id: str, day: int) -> int:
        counted_day, used = self._used.get(tenant_id, (day, 0))
        return used if counted_day == day else 0


class InProcessLimits(Limits):
    """Buckets and quotas of this gateway process only: with N replicas each enforces its own."""

    name = "memory"

    def __init__(self, clock: Callable[[], float] = time.monotonic, wall_clock: Callable[[], float] = time.time):
        self.rates = RateLimiter(clock)
        self.quotas = QuotaTracker(wall_clock)
        self._lock = threading.Lock()  # one lock over both, so a refused quota takes no token

    async def admit(self, tenant: _Limited, *, quota: bool = True) -> None:
        self.admit_now(tenant, quota=quota)

    def admit_now(self, tenant: _Limited, *, quota: bool = True) -> None:
        """`admit` without the coroutine, for synchronous callers."""
        with self._lock:
            bucket = self.rates.bucket(tenant)
            wait = bucket.wait_s()
            if wait > 0:
                raise rate_limited(tenant, wait)
            if quota:
                self.quotas.consume_locked(tenant)
            bucket.try_acquire()

    async def consume_quota(self, tenant: _Limited, n: int = 1) -> None:
        self.consume_quota_blocking(tenant, n)

    def consume_quota_blocking(self, tenant: _Limited, n: int = 1) -> None:
        with self._lock:
            self.quotas.consume_locked(tenant, n)

    async def usage(self, tenant: _Limited) -> tuple[int, int | None]:
        return self.quotas.usage(tenant)


class InFlight:
    """Per-tenant cap on requests in flight in this gateway, so one tenant's backlog cannot fill
    the model servers' queues ahead of the others': over the cap a request is refused at once
    (429, Retry-After), never queued. A tenant's `max_in_flight` overrides `default`."""

    def __init__(self, default: int | None, on_reject: Callable[[str], None] | None = None):
        if default is not None and default < 1:
            raise ValueError(f"the default in-flight cap must be >= 1 or None (no cap), got {default!r}")
        self.default = default
        self._counts: dict[str, int] = {}
        self._on_reject = on_reject

    def count(self, tenant_id: str) -> int:
        return self._counts.get(tenant_id, 0)

    def slot(self, tenant: _Concurrency) -> _Slot:
        """`with in_flight.slot(tenant):` holds one of the tenant's slots for the block, or raises
        `RateLimited` (a plain class, not a generator: this runs on every request)."""
        cap = tenant.max_in_flight or self.default
        n = self._counts.get(tenant.id, 0)
        if cap is not None and n >= cap:
            if self._on_reject is not None:
                self._on_reject(tenant.id)
            raise RateLimited(
                1.0,
                detail=(
                    f"tenant {tenant.id!r} already has {n} requests in flight on this gateway, its limit; "
                    "wait for some to finish, then retry after 1 s"
                ),
                extra={"limit": cap, "in_flight": n},
            )
        # Only the event loop's thread touches the counts (no await between read and write).
        self._counts[tenant.id] = n + 1
        return _Slot(self._counts, tenant.id)


class _Slot:
    __slots__ = ("_counts", "_id")

    def __init__(self, counts: dict[str, int], tenant_id: str):
        self._counts, self._id = counts, tenant_id

    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        left = self._counts[self._id] - 1
        if left:
            self._counts[self._id] = left
        else:
            del self._counts[self._id]
