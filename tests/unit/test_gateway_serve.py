"""The gateway's uvicorn server: once the app has started, what is alive then is left out of collections."""

from __future__ import annotations

import asyncio
import gc
import weakref

import uvicorn

from online.gateway.serve import _Server


async def _app(scope, receive, send) -> None:  # a minimal ASGI app with a lifespan
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})


def test_the_heap_alive_at_startup_is_frozen_and_garbage_is_not() -> None:
    class Cycle:
        def __init__(self) -> None:
            self.me = self

    gc.unfreeze()
    gc.disable()  # no automatic collection: only the server's own can free the cycle below
    alive = [["made before the server started"]]
    garbage = Cycle()
    gone = weakref.ref(garbage)
    del garbage  # unreachable but for its cycle: collected at startup, not frozen
    server = _Server(uvicorn.Config(_app, host="127.0.0.1", port=0, log_config=None, lifespan="on"))

    async def start_and_stop() -> None:
        serving = asyncio.create_task(server.serve())
        while not server.started and not serving.done():
            await asyncio.sleep(0.01)
        try:
            assert server.started
            assert gc.get_freeze_count() > 0
            assert gc.is_tracked(alive) and not any(o is alive for o in gc.get_objects())  # frozen: never scanned
            assert gone() is None
            made_after = [[]]
            assert any(o is made_after for o in gc.get_objects())  # later objects are collected as usual
        finally:
            server.should_exit = True
            await serving

    try:
        asyncio.run(start_and_stop())
    finally:
        gc.unfreeze()
        gc.enable()
