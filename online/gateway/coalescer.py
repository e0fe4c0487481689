"""Cross-request batching in the gateway: concurrent calls for one model version share one HTTP call.

A model server batches what reaches it, but every request still pays the server's per-request cost
(HTTP parsing, a hop between its processes, a response), and the gateway pays one outgoing call per
request. The coalescer keeps one lane per (server, version). A lane sends at most `max_inflight`
calls at a time; calls arriving meanwhile wait in the lane and leave together, up to
`max_instances` inputs per call, when a call returns. So under load the server sees a few large
requests, and at low load nothing waits: a lone request is sent at once.

One refinement: right after a busy wave (the lane's last call carried several requests), the next
call waits for the rest of the wave instead of leaving with the first straggler and making
everyone else wait a whole round trip (measured: calls alternated between 1 and 31 requests at
32 clients, and a model batch of 1 leaves a core idle). It leaves when as many requests as last
time are waiting, when none has arrived for `window_s`, or `max_wait_s` after the first one. A
lane that goes quiet sends at once again after one call.

Each caller keeps its own timeout and cancellation; a failure of a shared call reaches every
member, except a rejection (4xx), which is retried per member so one bad input fails only itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from online.gateway.client import CallTimeout, ModelCallError, ModelReply, RejectedCall, RetryableCallError

__all__ = ["Coalescer"]

logger = logging.getLogger(__name__)

Send = Callable[..., Awaitable[ModelReply]]
Observe = Callable[[str, int, int], None]  # (base_url, requests, inputs) per call sent


@dataclass(eq=False)
class _Member:
    inputs: list[dict]
    headers: Mapping[str, str] | None
    expires: float
    future: asyncio.Future
    parallel: bool = False


@dataclass(eq=False)
class _Lane:
    base_url: str
    version: str
    pending: deque[_Member] = field(default_factory=deque)
    inflight: int = 0
    last_members: int = 1  # requests carried by the lane's last call: > 1 means it is busy
    timer: asyncio.TimerHandle | None = None
    window_opened: float = 0.0


class Coalescer:
    """Merges concurrent `predict` calls per (server, version); see the module docstring."""

    def __init__(self, send: Send, *, max_instances: int = 64, max_inflight: int = 1, window_s: float = 0.002,
                 max_wait_s: float | None = None, observe: Observe | None = None):
        if max_instances < 1 or max_inflight < 1 or window_s < 0:
            raise ValueError("need max_instances >= 1, max_inflight >= 1 and window_s >= 0")
        self._send = send
        self.max_instances = max_instances
        self.max_inflight = max_inflight
        self.window_s = window_s
        self.max_wait_s = 10 * window_s if max_wait_s is None else max_wait_s
        self._observe = observe
        self._lanes: dict[tuple[str, str], _Lane] = {}
        self._tasks: set[asyncio.Task] = set()

    async def predict(self, base_url: str, version: str, inputs: list[dict], *, timeout_s: float,
                      headers: Mapping[str, str] | None = None, parallel: bool = False) -> ModelReply:
        """Like `send`, but shares the HTTP call with other callers of the same lane.

        `parallel` (other model calls run beside this one) reaches the server only on a call that
        holds this caller's inputs alone: a merged call is a batch, whose rows take a thread each anyway.
        """
        if len(inputs) >= self.max_instances:  # a full batch already: nothing to gain by waiting
            self._note(base_url, 1, len(inputs))
            return await self._send(base_url, version, inputs, timeout_s=timeout_s, headers=headers, batched=True)
        loop = asyncio.get_running_loop()
        lane = self._lanes.get((base_url, version))
        if lane is None:
            lane = self._lanes[(base_url, version)] = _Lane(base_url, version)
        member = _Member(inputs, headers, loop.time() + timeout_s, loop.create_future(), parallel)
        lane.pending.append(member)
        self._pump(lane)
        try:
            return await asyncio.wait_for(asyncio.shield(member.future), timeout_s)
        except TimeoutError:
            raise CallTimeout(f"{base_url} did not answer within {timeout_s * 1000:.0f} ms") from None
        finally:
            if not member.future.done():  # timed out or cancelled: its share of an answer is dropped
                member.future.cancel()
                if member in lane.pending:  # not sent yet: it never will be
                    lane.pending.remove(member)

    async def drain(self) -> None:
        """Wait for the calls in flight (at shutdown)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    # --- internals ----------------------------------------------------------------------

    def _pump(self, lane: _Lane) -> None:
        while lane.pending and lane.inflight < self.max_inflight:
            if self._should_wait(lane):
                # (Re)arm the gap timer: every arrival buys the wave another `window_s`, up to `max_wait_s`.
                loop = asyncio.get_running_loop()
                now = loop.time()
                if lane.timer is None:
                    lane.window_opened = now
                else:
                    lane.timer.cancel()
                closes = min(now + self.window_s, lane.window_opened + self.max_wait_s)
                lane.timer = loop.call_at(closes, self._window_closed, lane)
                return
            self._cancel_timer(lane)
            self._dispatch(lane)

    def _should_wait(self, lane: _Lane) -> bool:
        """Busy lane, and the wave that follows its last call has not all arrived yet."""
        return (self.window_s > 0 and lane.last_members > 1 and len(lane.pending) < lane.last_members
                and self._pending_inputs(lane) < self.max_instances)

    def _window_closed(self, lane: _Lane) -> None:
        lane.timer = None
        lane.last_members = 1  # whatever has arrived goes now
        self._pump(lane)

    def _cancel_timer(self, lane: _Lane) -> None:
        if lane.timer is not None:
            lane.timer.cancel()
            lane.timer = None

    @staticmethod
    def _pending_inputs(lane: _Lane) -> int:
        return sum(len(m.inputs) for m in lane.pending)

    def _dispatch(self, lane: _Lane) -> None:
        members: list[_Member] = []
        size = 0
        while lane.pending and (not members or size + len(lane.pending[0].inputs) <= self.max_instances):
            member = lane.pending.popleft()
            if member.future.done():
                continue
            members.append(member)
            size += len(member.inputs)
        if not members:
            return
        lane.inflight += 1
        lane.last_members = len(members)
        task = asyncio.get_running_loop().create_task(self._call(lane, members))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _call(self, lane: _Lane, members: list[_Member]) -> None:
        try:
            await self._call_members(lane, members)
        finally:
            lane.inflight -= 1
            self._pump(lane)

    async def _call_members(self, lane: _Lane, members: list[_Member]) -> None:
        now = asyncio.get_running_loop().time()
        timeout_s = max(0.001, max(m.expires for m in members) - now)
        inputs = members[0].inputs if len(members) == 1 else [i for m in members for i in m.inputs]
        headers = dict(members[0].headers or {})
        if len(members) > 1:
            headers["x-coalesced-requests"] = str(len(members))
        self._note(lane.base_url, len(members), len(inputs))
        try:
            reply = await self._send(lane.base_url, lane.version, inputs, timeout_s=timeout_s, headers=headers,
                                     batched=True, parallel=len(members) == 1 and members[0].parallel)
        except RejectedCall as exc:
            if len(members) == 1:
                _settle(members[0], exc=exc)
                return
            # One member's input was refused: ask again one by one so only that member fails.
            await asyncio.gather(*(self._call_members(lane, [m]) for m in members if not m.future.done()))
            return
        except ModelCallError as exc:
            for m in members:
                _settle(m, exc=_copy(exc))
            return
        except Exception as exc:
            logger.exception("model call to %s failed unexpectedly", lane.base_url)
            for m in members:
                _settle(m, exc=RetryableCallError(f"{lane.base_url}: {type(exc).__name__}: {exc}"))
            return
        start = 0
        for m in members:
            n = len(m.inputs)
            _settle(m, reply=ModelReply(reply.version, reply.outputs[start:start + n]))
            start += n

    def _note(self, base_url: str, requests: int, inputs: int) -> None:
        if self._observe is not None:
            self._observe(base_url, requests, inputs)


def _settle(member: _Member, *, reply: ModelReply | None = None, exc: BaseException | None = None) -> None:
    if member.future.done():
        return
    if exc is not None:
        member.future.set_exception(exc)
    else:
        member.future.set_result(reply)


def _copy(exc: ModelCallError) -> ModelCallError:
    """A fresh exception per member: one instance raised in many tasks would chain their tracebacks."""
    return type(exc)(str(exc), status=exc.status)
