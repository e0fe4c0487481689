"""Idempotency store: replay, conflict, waiting on an in-flight twin, abandon, 5xx, expiry."""

from __future__ import annotations

import asyncio

import pytest

from online.gateway.idempotency import IdempotencyBackend, IdempotencyStore, StoredResponse
from online.gateway.problems import Conflict, InvalidInput


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=5))


def test_the_store_implements_the_backend_interface():
    assert isinstance(IdempotencyStore(), IdempotencyBackend)


def test_same_key_and_body_replays_the_completed_response():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        assert await store.begin("acme", "k1", "h1") is None
        await store.complete("acme", "k1", "h1", 200, b'{"ok":1}', {"content-type": "application/json"})
        replay = await store.begin("acme", "k1", "h1")
        assert replay == StoredResponse(200, b'{"ok":1}', {"content-type": "application/json"})

    run(main())


def test_same_key_different_body_is_a_conflict_done_or_in_flight():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        with pytest.raises(Conflict) as exc:
            await store.begin("acme", "k1", "h2")  # in flight
        assert exc.value.status == 409
        assert exc.value.detail == (
            "Idempotency-Key was already used with a different request body; use a new key"
        )
        await store.complete("acme", "k1", "h1", 200, b"x", {})
        with pytest.raises(Conflict):
            await store.begin("acme", "k1", "h2")  # completed

    run(main())


def test_keys_are_per_tenant():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        await store.complete("acme", "k1", "h1", 200, b"x", {})
        assert await store.begin("beta", "k1", "other-body") is None

    run(main())


def test_a_concurrent_twin_waits_for_the_first_then_replays():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        assert await store.begin("acme", "k1", "h1") is None
        twins = [asyncio.create_task(store.begin("acme", "k1", "h1")) for _ in range(3)]
        await asyncio.sleep(0)
        assert not any(t.done() for t in twins)  # waiting, not running
        await store.complete("acme", "k1", "h1", 201, b"first", {})
        results = await asyncio.gather(*twins)
        assert [r.body for r in results] == [b"first"] * 3

    run(main())


def test_abandon_lets_exactly_one_waiter_run_the_request():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        waiters = [asyncio.create_task(store.begin("acme", "k1", "h1")) for _ in range(3)]
        await asyncio.sleep(0)
        await store.abandon("acme", "k1", "h1")
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        done = [t for t in waiters if t.done()]
        assert [t.result() for t in done] == [None]  # one new owner, the others wait on it
        await store.complete("acme", "k1", "h1", 200, b"second", {})
        results = await asyncio.gather(*waiters)
        assert sorted(r.body for r in results if r is not None) == [b"second", b"second"]

    run(main())


def test_abandon_after_failure_lets_a_retry_run():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        await store.abandon("acme", "k1", "h1")
        assert await store.begin("acme", "k1", "h1") is None

    run(main())


def test_5xx_responses_are_not_kept():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        waiter = asyncio.create_task(store.begin("acme", "k1", "h1"))
        await asyncio.sleep(0)
        await store.complete("acme", "k1", "h1", 503, b"down", {})
        assert await waiter is None  # the waiter runs the request itself
        assert len(store) == 1

    run(main())


def test_4xx_responses_are_replayed():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        await store.complete("acme", "k1", "h1", 422, b"bad", {})
        assert (await store.begin("acme", "k1", "h1")).status == 422

    run(main())


def test_completed_records_expire_after_ttl():
    async def main():
        clock = FakeClock()
        store = IdempotencyStore(ttl_s=60, clock=clock)
        await store.begin("acme", "k1", "h1")
        await store.complete("acme", "k1", "h1", 200, b"x", {})
        clock.t += 59
        assert await store.begin("acme", "k1", "h1") is not None
        clock.t += 1
        assert await store.begin("acme", "k1", "other") is None  # expired: the key is free again

    run(main())


def test_a_leaked_in_flight_record_is_taken_over_after_in_flight_ttl():
    async def main():
        clock = FakeClock()
        store = IdempotencyStore(clock=clock, in_flight_ttl_s=30)
        await store.begin("acme", "k1", "h1")  # owner never completes
        clock.t += 30
        assert await store.begin("acme", "k1", "h1") is None

    run(main())


def test_a_cancelled_waiter_leaves_the_owner_alone():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await store.begin("acme", "k1", "h1")
        await store.complete("acme", "k1", "h1", 200, b"x", {})
        assert (await store.begin("acme", "k1", "h1")).body == b"x"

    run(main())


def test_max_entries_evicts_oldest_completed_never_in_flight():
    async def main():
        store = IdempotencyStore(max_entries=3, clock=FakeClock())
        await store.begin("t", "inflight", "h")
        for k in ("a", "b"):
            await store.begin("t", k, "h")
            await store.complete("t", k, "h", 200, k.encode(), {})
        await store.begin("t", "c", "h")  # full: "a" (oldest completed) goes
        assert len(store) == 3
        assert store.in_flight() == 2
        assert await store.begin("t", "a", "different") is None  # forgotten
        with pytest.raises(Conflict):
            await store.begin("t", "inflight", "different")  # still tracked

    run(main())


@pytest.mark.parametrize("key", ["", "x" * 256, "bad\nkey"])
def test_invalid_keys_are_422(key: str):
    with pytest.raises(InvalidInput) as exc:
        run(IdempotencyStore().begin("t", key, "h"))
    assert exc.value.errors[0]["field"] == "header.Idempotency-Key"
