"""Idempotency records: replay, conflict, waiting on an in-flight twin (bounded), abandon, 5xx, expiry;
in memory, and on a real redis-server shared by two replicas."""

from __future__ import annotations

import asyncio
import time

import pytest
from prometheus_client import CollectorRegistry

from online.gateway.idempotency import IdempotencyBackend, IdempotencyStore, StoredResponse
from online.gateway.problems import Conflict, InvalidInput, ServiceUnavailable
from online.gateway.state import open_state
from tests.redis_support import free_port, fresh_replica_states, start_redis


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


def test_a_waiter_gives_up_at_its_deadline_with_a_clear_409():
    async def main():
        store = IdempotencyStore(clock=FakeClock())
        await store.begin("acme", "k1", "h1")
        with pytest.raises(Conflict, match="still in flight") as exc:
            await store.begin("acme", "k1", "h1", wait_s=0.05)
        assert exc.value.headers["Retry-After"] == "1"
        await store.complete("acme", "k1", "h1", 200, b"x", {})  # the owner is unaffected
        assert (await store.begin("acme", "k1", "h1", wait_s=0.05)).body == b"x"

    run(main())


# --- the Redis backend: several gateway replicas on one real redis-server --------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    server = start_redis(tmp_path_factory.mktemp("redis-idempotency"))
    yield server
    server.stop()


@pytest.fixture
async def replicas(redis_server):
    states = await fresh_replica_states(redis_server.url, lease_s=5)
    yield [s.idempotency for s in states]
    for s in states:
        await s.close()


async def test_redis_records_implement_the_interface_replay_and_conflict(replicas):
    a, b = replicas
    assert isinstance(a, IdempotencyBackend)
    assert await a.begin("acme", "k1", "h1") is None
    with pytest.raises(Conflict, match="different request body"):
        await b.begin("acme", "k1", "h2")  # in flight, other body: at once
    await a.complete("acme", "k1", "h1", 200, b'{"ok":1}', {"x-request-id": "r1"})
    replay = await b.begin("acme", "k1", "h1")
    assert replay == StoredResponse(200, b'{"ok":1}', {"x-request-id": "r1"})
    with pytest.raises(Conflict):
        await b.begin("acme", "k1", "h2")
    assert await b.begin("beta", "k1", "h2") is None  # keys are per tenant


async def test_redis_one_key_sent_to_two_replicas_at_once_runs_once(replicas):
    a, b = replicas
    runs = []

    async def request(store, name):
        stored = await store.begin("acme", "same", "h", wait_s=5)
        if stored is not None:
            return stored.body
        runs.append(name)
        await asyncio.sleep(0.2)  # the workflow
        await store.complete("acme", "same", "h", 200, name.encode(), {})
        return name.encode()

    results = await asyncio.gather(*(request(s, f"r{i}") for i, s in enumerate([a, b, a, b, b])))
    assert len(runs) == 1 and set(results) == {runs[0].encode()}


async def test_redis_waiter_gets_409_at_its_deadline_and_takes_over_an_abandoned_key(replicas):
    a, b = replicas
    await a.begin("acme", "k", "h")
    started = time.monotonic()
    with pytest.raises(Conflict, match="still in flight"):
        await b.begin("acme", "k", "h", wait_s=0.3)
    assert 0.25 < time.monotonic() - started < 1.0
    waiter = asyncio.create_task(b.begin("acme", "k", "h", wait_s=5))
    await asyncio.sleep(0.05)
    await a.abandon("acme", "k", "h")
    assert await waiter is None  # the waiter now owns the key and runs


async def test_redis_5xx_is_not_kept_and_4xx_is(replicas):
    a, b = replicas
    await a.begin("acme", "k5", "h")
    await a.complete("acme", "k5", "h", 503, b"down", {})
    assert await b.begin("acme", "k5", "h") is None
    await b.complete("acme", "k5", "h", 422, b"bad", {})
    assert (await a.begin("acme", "k5", "h")).status == 422


async def test_redis_an_owner_that_died_releases_the_key_after_its_lease(redis_server):
    state = open_state(redis_server.url, registry=CollectorRegistry(), lease_s=0.3)
    try:
        await state.idempotency.begin("acme", "lease", "h")  # never completed
        assert await state.idempotency.begin("acme", "lease", "h", wait_s=2) is None
    finally:
        await state.close()


async def test_redis_down_idempotent_requests_fail_closed_with_503_fast():
    registry = CollectorRegistry()
    state = open_state(f"redis://127.0.0.1:{free_port()}/0", registry=registry, timeout_s=0.3)
    try:
        started = time.monotonic()
        for _ in range(3):
            with pytest.raises(ServiceUnavailable) as exc:
                await state.idempotency.begin("acme", "k", "h", wait_s=5)
            assert exc.value.status == 503 and exc.value.headers["Retry-After"] == "1"
        assert time.monotonic() - started < 1.5
        assert registry.get_sample_value("tandem_state_fail_closed_total") == 3
        await state.idempotency.complete("acme", "k", "h", 200, b"x", {})  # logged, never raised
        await state.idempotency.abandon("acme", "k", "h")
    finally:
        await state.close()
