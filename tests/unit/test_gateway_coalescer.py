"""The coalescer against a fake transport: merging, splitting, per-caller timeouts and failures."""

from __future__ import annotations

import asyncio

import pytest

from online.gateway.client import CallTimeout, ModelReply, RejectedCall, RetryableCallError
from online.gateway.coalescer import Coalescer

URL = "http://embedder"


class FakeSend:
    """Echoes each input's text; holds every call until `gate` opens (when one is given)."""

    def __init__(self, delay_s: float = 0.0, reject: str | None = None, fail: bool = False):
        self.delay_s = delay_s
        self.reject = reject
        self.fail = fail
        self.calls: list[tuple[str, list[str], dict]] = []
        self.parallel: list[bool] = []  # each call's `parallel` flag

    async def __call__(self, base_url, version, inputs, *, timeout_s, headers=None, batched=False,
                       parallel=False) -> ModelReply:
        self.calls.append((version, [i["text"] for i in inputs], dict(headers or {})))
        self.parallel.append(parallel)
        await asyncio.sleep(self.delay_s)
        if self.fail:
            raise RetryableCallError(f"{base_url} answered 503: busy", status=503)
        if self.reject is not None and any(i["text"] == self.reject for i in inputs):
            raise RejectedCall(f"{base_url} refused the input: bad text", status=422)
        return ModelReply(version, [{"echo": i["text"]} for i in inputs])


def one(text: str) -> list[dict]:
    return [{"text": text}]


async def in_flight(co: Coalescer, text: str = "x", settle_s: float = 0.005) -> asyncio.Task:
    """Start one call and let it leave, so the callers after it wait in the lane."""
    task = asyncio.create_task(co.predict(URL, "1", one(text), timeout_s=5))
    await asyncio.sleep(settle_s)
    return task


async def busy(co: Coalescer, wave: int) -> None:
    """Make the lane busy: a call in flight, then a wave of `wave` callers that leaves as one call."""
    blocker = await in_flight(co)
    await asyncio.gather(blocker, *(asyncio.create_task(co.predict(URL, "1", one(f"w{i}"), timeout_s=5))
                                    for i in range(wave)))


async def test_a_lone_call_is_sent_at_once_and_alone():
    send = FakeSend()
    co = Coalescer(send, window_s=1.0)  # a window this long would show if a lone call waited
    reply = await asyncio.wait_for(co.predict(URL, "1", one("a"), timeout_s=5), 0.5)
    assert reply.outputs == [{"echo": "a"}]
    assert len(send.calls) == 1 and "x-coalesced-requests" not in send.calls[0][2]


async def test_parallel_reaches_the_server_on_a_callers_own_call_not_on_a_merged_one():
    send = FakeSend(delay_s=0.2)
    co = Coalescer(send, window_s=0)
    first = asyncio.create_task(co.predict(URL, "1", one("first"), timeout_s=5, parallel=True))
    await asyncio.sleep(0.01)  # in flight: the next two wait and leave together
    rest = [asyncio.create_task(co.predict(URL, "1", one(f"t{i}"), timeout_s=5, parallel=True)) for i in range(2)]
    await asyncio.gather(first, *rest)
    assert [len(texts) for _, texts, _ in send.calls] == [1, 2]
    assert send.parallel == [True, False]  # a merged call is a batch: its rows take a thread each anyway
    await co.predict(URL, "1", one("alone"), timeout_s=5)
    assert send.parallel[-1] is False


async def test_calls_arriving_during_a_call_leave_together_and_get_their_own_outputs():
    send = FakeSend(delay_s=0.2)  # long enough that the rest surely arrive while it is in flight
    co = Coalescer(send, window_s=0)
    first = asyncio.create_task(co.predict(URL, "1", one("first"), timeout_s=5))
    await asyncio.sleep(0.01)  # the first call is in flight now
    rest = [asyncio.create_task(co.predict(URL, "1", [{"text": f"t{i}"}, {"text": f"u{i}"}], timeout_s=5))
            for i in range(5)]
    assert (await first).outputs == [{"echo": "first"}]
    replies = await asyncio.gather(*rest)
    for i, reply in enumerate(replies):
        assert reply.outputs == [{"echo": f"t{i}"}, {"echo": f"u{i}"}]
    assert [len(texts) for _, texts, _ in send.calls] == [1, 10]
    assert send.calls[1][2]["x-coalesced-requests"] == "5"


async def test_versions_never_share_a_call_and_batches_respect_max_instances():
    send = FakeSend(delay_s=0.02)
    co = Coalescer(send, max_instances=4, window_s=0)
    blocker = await in_flight(co)
    tasks = [asyncio.create_task(co.predict(URL, v, one(f"{v}-{i}"), timeout_s=5)) for i in range(6) for v in "12"]
    await asyncio.gather(blocker, *tasks)
    for version, texts, _ in send.calls:
        assert len(texts) <= 4 and all(t == "x" or t.startswith(f"{version}-") for t in texts)
    assert sum(len(t) for _, t, _ in send.calls) == 13


async def test_a_callers_timeout_fails_only_that_caller():
    send = FakeSend(delay_s=0.2)
    co = Coalescer(send, window_s=0)
    first = await in_flight(co, "busy", settle_s=0.01)
    hasty = asyncio.create_task(co.predict(URL, "1", one("hasty"), timeout_s=0.05))
    patient = asyncio.create_task(co.predict(URL, "1", one("patient"), timeout_s=5))
    with pytest.raises(CallTimeout, match="50 ms"):
        await hasty
    assert (await patient).outputs == [{"echo": "patient"}]
    await first
    assert ["hasty" in texts for _, texts, _ in send.calls] == [False, False]  # it left before being sent


async def test_a_rejected_merged_call_is_retried_per_member_so_only_the_bad_input_fails():
    send = FakeSend(delay_s=0.02, reject="bad")
    co = Coalescer(send, window_s=0)
    blocker = await in_flight(co)
    good = asyncio.create_task(co.predict(URL, "1", one("good"), timeout_s=5))
    bad = asyncio.create_task(co.predict(URL, "1", one("bad"), timeout_s=5))
    await blocker
    assert (await good).outputs == [{"echo": "good"}]
    with pytest.raises(RejectedCall):
        await bad


async def test_a_failed_merged_call_reaches_every_member_with_its_own_exception():
    send = FakeSend(delay_s=0.1, fail=True)
    co = Coalescer(send, window_s=0)
    blocker = await in_flight(co)
    tasks = [asyncio.create_task(co.predict(URL, "1", one(str(i)), timeout_s=5)) for i in range(3)]
    errors = await asyncio.gather(blocker, *tasks, return_exceptions=True)
    assert all(isinstance(e, RetryableCallError) and e.status == 503 for e in errors)
    assert len({id(e) for e in errors[1:]}) == 3
    assert len(send.calls) == 2


async def test_a_cancelled_waiting_caller_is_not_sent():
    send = FakeSend(delay_s=0.2)
    co = Coalescer(send, window_s=0)
    blocker = await in_flight(co)
    gone = asyncio.create_task(co.predict(URL, "1", one("gone"), timeout_s=5))
    stays = asyncio.create_task(co.predict(URL, "1", one("stays"), timeout_s=5))
    await asyncio.sleep(0.005)
    gone.cancel()
    await asyncio.gather(blocker, stays)
    assert [texts for _, texts, _ in send.calls] == [["x"], ["stays"]]


async def test_after_a_busy_wave_the_next_call_waits_for_the_rest_of_the_wave():
    send = FakeSend(delay_s=0.1)
    co = Coalescer(send, window_s=0.3)
    await busy(co, 4)  # the wave of 4 went as one call: the lane is busy now
    # The next wave trickles in ~10 ms apart; it still leaves as one call (the 300 ms window).
    stragglers = []
    for i in range(4):
        stragglers.append(asyncio.create_task(co.predict(URL, "1", one(f"s{i}"), timeout_s=5)))
        await asyncio.sleep(0.01)
    await asyncio.gather(*stragglers)
    assert [len(texts) for _, texts, _ in send.calls] == [1, 4, 4]
    # Quiet again: after one call a lone request no longer waits.
    await co.predict(URL, "1", one("lone"), timeout_s=5)
    await asyncio.wait_for(co.predict(URL, "1", one("lone2"), timeout_s=5), 0.25)  # the 0.1 s call, not the 0.3 s window


async def test_a_trickling_wave_keeps_the_window_open_until_it_stops_or_max_wait():
    send = FakeSend(delay_s=0.1)
    # Margins wide enough for a loaded CI box: a 20 ms sleep may overrun by tens of ms there.
    co = Coalescer(send, window_s=0.15, max_wait_s=2.0)
    await busy(co, 8)
    # 6 requests ~20 ms apart: each arrives within the 150 ms gap of the one before, so all 6 leave
    # together, although the first waited 100+150 ms in all (more than the gap, less than max_wait).
    trickle = []
    for i in range(6):
        trickle.append(asyncio.create_task(co.predict(URL, "1", one(f"t{i}"), timeout_s=5)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*trickle)
    assert [len(texts) for _, texts, _ in send.calls][-1] == 6

    co = Coalescer(send, window_s=0.15, max_wait_s=0.05)  # sleeps only overrun: the trickle spans >= 100 ms
    send.calls.clear()
    await busy(co, 8)
    trickle = []
    for i in range(6):
        trickle.append(asyncio.create_task(co.predict(URL, "1", one(f"t{i}"), timeout_s=5)))
        await asyncio.sleep(0.02)
    await asyncio.gather(*trickle)
    assert len(send.calls) > 3  # max_wait (50 ms) cut the trickle into more than one call
