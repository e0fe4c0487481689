"""Idempotency-Key handling: the same key and body get the same answer, once computed.

    result = await store.begin(tenant, key, body_hash)
    if result is not None:          # replay of a completed request
        return result
    try:
        response = await run()      # this caller owns the key until complete/abandon
    except BaseException:
        await store.abandon(tenant, key, body_hash)
        raise
    await store.complete(tenant, key, body_hash, response.status, response.body, response.headers)

A second caller with the same key and body while the first is in flight waits for it, then
replays its response (or, if it was abandoned, runs itself). Responses with status >= 500 are
not kept, so a retry runs again. `begin(..., wait_s=)` bounds the wait (the request's deadline):
past it the waiter gets 409 (`still_in_flight`); a waiter that gives up leaves the owner untouched.

    IdempotencyBackend          the interface
    ├── IdempotencyStore        in memory, one gateway process (the embedded default)
    └── state.RedisIdempotency  shared by every gateway replica on one Redis
"""

from __future__ import annotations

import abc
import asyncio
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from online.gateway.problems import Conflict, InvalidInput

__all__ = ["MAX_KEY_LENGTH", "IdempotencyBackend", "IdempotencyStore", "StoredResponse", "check_key", "still_in_flight"]

MAX_KEY_LENGTH = 255
_CONFLICT = "Idempotency-Key was already used with a different request body; use a new key"


def still_in_flight(waited_s: float) -> Conflict:
    """The 409 for a waiter whose twin (same key, same body) did not finish within its deadline."""
    return Conflict(
        f"a request with this Idempotency-Key is still in flight (waited {waited_s:.1f} s, this request's "
        "deadline); retry with the same key later to get its answer",
        headers={"Retry-After": "1"},
    )


@dataclass(frozen=True)
class StoredResponse:
    """A completed response kept for replay."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)


class IdempotencyBackend(abc.ABC):
    """Where idempotency records live; in memory here, a shared store (Redis, Delta) later."""

    @abc.abstractmethod
    async def begin(
        self, tenant: str, key: str, body_hash: str, *, wait_s: float | None = None
    ) -> StoredResponse | None:
        """A stored response to replay, or None when the caller now owns the key and must run.

        Raises `Conflict` if the key was used with a different body; waits (at most `wait_s`,
        then `Conflict`) while the same request is in flight elsewhere.
        """

    @abc.abstractmethod
    async def complete(
        self, tenant: str, key: str, body_hash: str, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        """Keep the owner's response for replay (responses with status >= 500 are not kept)."""

    @abc.abstractmethod
    async def abandon(self, tenant: str, key: str, body_hash: str) -> None:
        """Release the key without a response, so the next caller runs the request."""

    async def close(self) -> None:
        """Release connections, if any."""


@dataclass
class _Record:
    body_hash: str
    started_at: float
    done: asyncio.Event = field(default_factory=asyncio.Event)
    response: StoredResponse | None = None  # None while in flight
    expires_at: float = float("inf")


class IdempotencyStore(IdempotencyBackend):
    """In-memory records for one gateway process; completed ones live `ttl_s`, at most `max_entries`."""

    def __init__(
        self,
        ttl_s: float = 86_400.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        *,
        in_flight_ttl_s: float = 600.0,
    ):
        if ttl_s <= 0 or max_entries < 1 or in_flight_ttl_s <= 0:
            raise ValueError("ttl_s and in_flight_ttl_s must be > 0 and max_entries >= 1")
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self.in_flight_ttl_s = in_flight_ttl_s
        self._clock = clock
        # Ordered by when each record was created or completed, so the oldest are evicted first.
        self._records: OrderedDict[tuple[str, str], _Record] = OrderedDict()

    def __len__(self) -> int:
        return len(self._records)

    def in_flight(self) -> int:
        return sum(1 for r in self._records.values() if r.response is None)

    async def begin(
        self, tenant: str, key: str, body_hash: str, *, wait_s: float | None = None
    ) -> StoredResponse | None:
        check_key(key)
        rk = (tenant, key)
        loop = asyncio.get_running_loop()
        give_up = None if wait_s is None else loop.time() + wait_s
        while True:
            now = self._clock()
            rec = self._records.get(rk)
            if rec is not None and rec.response is not None and rec.expires_at <= now:
                del self._records[rk]
                rec = None
            if rec is not None and rec.response is None and now - rec.started_at >= self.in_flight_ttl_s:
                # The owner never completed nor abandoned (it crashed or leaked): take over.
                del self._records[rk]
                rec.done.set()
                rec = None
            if rec is None:
                self._evict_for_one()
                self._records[rk] = _Record(body_hash=body_hash, started_at=now)
                return None
            if rec.body_hash != body_hash:
                raise Conflict(_CONFLICT)
            if rec.response is not None:
                return rec.response
            # Then look again: completed -> replay, abandoned -> run.
            if give_up is None:
                await rec.done.wait()
                continue
            try:
                await asyncio.wait_for(rec.done.wait(), max(0.0, give_up - loop.time()))
            except TimeoutError:
                raise still_in_flight(wait_s or 0.0) from None

    async def complete(
        self, tenant: str, key: str, body_hash: str, status: int, body: bytes, headers: Mapping[str, str]
    ) -> None:
        if status >= 500:
            await self.abandon(tenant, key, body_hash)
            return
        rk = (tenant, key)
        rec = self._records.pop(rk, None)
        if rec is not None and rec.body_hash != body_hash:
            self._records[rk] = rec  # not this caller's record: leave it
            return
        if rec is None:
            self._evict_for_one()
            rec = _Record(body_hash=body_hash, started_at=self._clock())
        rec.response = StoredResponse(status=status, body=bytes(body), headers=dict(headers))
        rec.expires_at = self._clock() + self.ttl_s
        self._records[rk] = rec  # re-inserted last: now ordered by completion time
        rec.done.set()

    async def abandon(self, tenant: str, key: str, body_hash: str) -> None:
        rk = (tenant, key)
        rec = self._records.get(rk)
        if rec is not None and rec.response is None and rec.body_hash == body_hash:
            del self._records[rk]
            rec.done.set()

    def _evict_for_one(self) -> None:
        """Make room for one record by dropping the oldest completed one; in-flight ones stay.

        Completed records sit in completion order and share one TTL, so the first completed
        record is also the first to expire: expired or not, it is the one to go.
        """
        if len(self._records) < self.max_entries:
            return
        victim = next((rk for rk, rec in self._records.items() if rec.response is not None), None)
        if victim is not None:
            del self._records[victim]


def check_key(key: str) -> None:
    if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            [
                {
                    "field": "header.Idempotency-Key",
                    "message": f"must be 1-{MAX_KEY_LENGTH} printable characters (a UUID is a good choice)",
                }
            ]
        )
