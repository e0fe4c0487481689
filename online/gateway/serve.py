"""Run the gateway under uvicorn with JSON logs."""

from __future__ import annotations

import contextlib
import gc
import logging
import sys

import orjson
import uvicorn

from models.settings import TandemSettings
from online.gateway.app import create_app
from online.gateway.settings import GatewaySettings


class JsonFormatter(logging.Formatter):
    """One JSON object per log line; access lines are JSON already and pass through."""

    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.name == "tandem.gateway.access":
            return msg
        doc = {"ts": self.formatTime(record), "level": record.levelname, "logger": record.name, "msg": msg}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(doc).decode()


def configure_logging(level: str = "INFO", access_log: bool = False) -> None:
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("tandem.gateway.access").setLevel("INFO" if access_log else "WARNING")
    logging.getLogger("httpx").setLevel("WARNING")


class _Server(uvicorn.Server):
    """uvicorn, with the heap frozen once the app has started and a clean exit after a graceful stop."""

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        # Everything alive now (modules, the app, its schemas, the runtime) lives as long as the process.
        # Without this, every full collection scanned it again: under load the request record's and
        # prediction log's buffered rows trigger one every second or so, 70-98 ms each (cache hits at
        # 32 clients: ~13% of the gateway's time in the collector). Frozen, `bench cache`: hits 3805-3999 ->
        # 4859 req/s, their p99 130-161 -> 47-71 ms. Collected first, so no garbage is frozen with it.
        gc.collect()
        gc.freeze()

    @contextlib.contextmanager
    def capture_signals(self):
        with super().capture_signals():
            yield
            self._captured_signals.clear()


def serve_gateway(settings: TandemSettings, host: str = "127.0.0.1", port: int = 8000,
                  access_log: bool = False) -> None:
    """Serve the gateway until SIGINT/SIGTERM; shutdown drains shadows and flushes the prediction log."""
    configure_logging(access_log=access_log)
    app = create_app(settings, GatewaySettings())
    config = uvicorn.Config(app, host=host, port=port, log_config=None, access_log=False, loop="uvloop",
                            http="httptools", timeout_graceful_shutdown=10)
    _Server(config).run()
