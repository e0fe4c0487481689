"""Build and run a model server: one LitServe app per deployment, stopped cleanly by SIGINT or SIGTERM."""

from __future__ import annotations

import http.client
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import litserve as ls
from starlette.middleware.gzip import GZipMiddleware

from online.servers._lifetime import die_with_parent
from online.servers.api import DeploymentAPI, configure_logging
from online.servers.deployment import DeploymentSpec, deployment_from_registry
from online.servers.metrics import cleanup_metrics_dir, prepare_metrics_dir
from online.servers.middleware import TraceContextMiddleware, metrics_endpoint
from online.servers.predict_route import install_predict_route
from online.servers.versions import STATUS_DIR_ENV, merged_status

__all__ = [
    "ServerError",
    "ServerStartError",
    "WorkerDiedError",
    "build_server",
    "resolve_deployment",
    "serve_deployment",
    "serve_model",
]

logger = logging.getLogger("tandem.servers")

_UVICORN_GRACE_S = 3.0
_CHILD_GRACE_S = 3.0


class ServerError(RuntimeError):
    """A model server stopped abnormally.

    ServerError
    ├── ServerStartError    a worker failed to load or verify its versions; never became healthy
    └── WorkerDiedError     an inference worker died while serving; the server shut down
    """


class ServerStartError(ServerError):
    """A model server could not start: an inference worker failed to load or verify its versions."""


class WorkerDiedError(ServerError):
    """An inference worker died while serving (e.g. killed for memory); the whole server shut down."""


class _LitServer(ls.LitServer):
    """LitServer that shuts down once, stopping its worker monitor before the queue manager."""

    worker_died = False
    _shut_down = False

    def _init_manager(self, num_api_servers: int) -> Any:
        # LitServe's request and response queues are Manager proxies: every put and get is a round trip
        # through the manager process, three or more per request (a lone request straight to a tiny-model
        # server: p50 2.6 -> 1.9 ms with pipes). Plain multiprocessing queues do the same job; the manager
        # keeps the rest (worker status, the shutdown event). They reach the workers and the HTTP
        # processes as process arguments (spawned and forked alike).
        from litserve.transport.process_transport import MPQueueTransport

        manager = super()._init_manager(num_api_servers)
        ctx = multiprocessing.get_context("spawn")
        for path in self.litapi_request_queues:
            self.litapi_request_queues[path] = ctx.Queue()
        self._transport = MPQueueTransport(manager, [ctx.Queue() for _ in range(num_api_servers)])
        return manager

    def _perform_graceful_shutdown(
        self, manager: Any, uvicorn_workers: Any, shutdown_reason: str = "normal"
    ) -> None:
        if self._shut_down:  # LitServe calls it again from `run` after its monitor already did
            return
        self._shut_down = True
        monitor = next((t for t in threading.enumerate() if t.name == "litserve-monitoring"), None)
        if monitor is threading.current_thread():
            self.worker_died = True
        elif monitor is not None and self._shutdown_event is not None:
            # Let the monitor see the event and exit before the manager goes (else it logs a
            # BrokenPipe). A fresh thread gets its own manager connection: after a
            # KeyboardInterrupt the main thread's may still await the interrupted `wait()`.
            setter = threading.Thread(target=self._shutdown_event.set, daemon=True)
            setter.start()
            setter.join(1.0)
            monitor.join(self.monitor_internal + 1.0)
        super()._perform_graceful_shutdown(manager, uvicorn_workers, shutdown_reason)


def build_server(spec: DeploymentSpec, *, log_level: str = "info") -> _LitServer:
    """The LitServer for `spec`: `POST /predict`, `/health`, `/info` (deployment + loaded versions), `/metrics`."""
    api = DeploymentAPI(spec, log_level=log_level)
    server = _LitServer(
        api,
        accelerator=spec.device,
        workers_per_device=spec.workers,
        model_metadata=spec.describe(),
        middlewares=[(TraceContextMiddleware, {"model": spec.model})],
        info_path="/litserve/info",
    )
    # LitServe gzips every response over 1 kB at level 9 for clients that accept it (httpx, requests,
    # browsers; the gateway asks for identity). Float vectors in JSON shrink ~2.2x for ~0.7 ms of the
    # HTTP process's CPU per row: 32 MiniLM rows, p50 30 -> 54 ms and server CPU 53-58 -> 75-81 ms.
    server.app.user_middleware = [m for m in server.app.user_middleware if m.cls is not GZipMiddleware]
    install_predict_route(server)
    server.app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)

    async def info() -> dict[str, Any]:
        """The deployment and the versions its workers have loaded (what the gateway may route here)."""
        return {"model": spec.describe(), "served": merged_status(os.environ.get(STATUS_DIR_ENV), spec.workers)}

    server.app.add_api_route("/info", info, methods=["GET"])
    # LitServe waits this long for uvicorn's graceful shutdown (default 30 s with open keep-alives).
    server.uvicorn_graceful_timeout = _UVICORN_GRACE_S
    server.monitor_internal = 0.5  # seconds between worker liveness checks (LitServe's spelling)
    return server


def serve_deployment(
    spec: DeploymentSpec, host: str = "127.0.0.1", port: int = 8100, *, log_level: str = "info"
) -> None:
    """Serve `spec` until SIGINT or SIGTERM; blocks.

    Raises ServerStartError if a version fails to load or verify (the server never becomes
    healthy) and WorkerDiedError if an inference worker dies while serving.

    Every process this starts is gone when it returns: SIGTERM and SIGINT both run LitServe's
    shutdown (a plain SIGTERM would kill only this process and orphan the workers), and any
    child still alive afterwards is terminated.
    """
    configure_logging(log_level)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    # OpenMP threads that spin at barriers steal the cores other processes need (the HTTP process, the
    # gateway, another model's server): two MiniLM servers answering one `enrich` request together took
    # p90 330 ms with spinning threads and 63 ms with passive ones. Inherited by the spawned workers.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    metrics_dir = prepare_metrics_dir(spec.model)
    status_dir = tempfile.mkdtemp(prefix=f"tandem-status-{spec.model}-")
    os.environ[STATUS_DIR_ENV] = status_dir  # the spawned workers report their versions here
    os.register_at_fork(after_in_child=die_with_parent)
    stop_announcer = threading.Event()
    server: _LitServer | None = None
    try:
        server = build_server(spec, log_level=log_level)
        threading.Thread(
            target=_announce_when_ready,
            args=(spec, host, port, stop_announcer),
            daemon=True,
            name="tandem-ready-announcer",
        ).start()
        with _stop_on_signals(server, spec.model):
            server.run(
                host=host,
                port=port,
                num_api_servers=1,
                log_level=log_level,
                generate_client_file=False,
                access_log=False,
            )
    except KeyboardInterrupt:
        # A second signal, or one before LitServe was up: children are stopped just below.
        logger.info("model server %s interrupted; stopping its processes", spec.model)
    except Exception as exc:
        if server is not None and server.worker_died:
            raise WorkerDiedError(f"model server {spec.model}: an inference worker died") from exc
        if isinstance(exc, RuntimeError) and "failed to start" in str(exc):
            raise ServerStartError(
                f"model server {spec.model} failed to start: a worker could not load or verify its "
                "versions (see the error above)"
            ) from exc
        raise
    finally:
        stop_announcer.set()
        _stop_children()
        cleanup_metrics_dir(metrics_dir)
        shutil.rmtree(status_dir, ignore_errors=True)
        logger.info("model server %s stopped", spec.model)
    if server.worker_died:
        raise WorkerDiedError(f"model server {spec.model}: an inference worker died")


def serve_model(
    settings: Any,
    name: str,
    versions: list[str] | None = None,
    host: str = "127.0.0.1",
    port: int = 8100,
    max_batch_size: int | None = None,
    batch_timeout: float | None = None,
) -> None:
    """Serve `versions` of registry model `name` (None: its stable, canary and shadow); blocks.

    `settings` is a `models.settings.TandemSettings`: its lake and artifact store locate the
    registry and the artifacts.
    """
    spec = resolve_deployment(
        settings, name, versions, max_batch_size=max_batch_size, batch_timeout=batch_timeout
    )
    serve_deployment(spec, host, port)


def resolve_deployment(
    settings: Any, name: str, versions: list[str] | None = None, **overrides: Any
) -> DeploymentSpec:
    """The deployment of `name` from the registry under `settings`; None overrides keep the defaults."""
    from lakehouse import Lake
    from models.artifacts import ArtifactStore
    from models.registry import Registry

    opts = settings.storage_options or None
    registry = Registry(Lake(settings.lake_root, opts), ArtifactStore(settings.artifacts_root, opts))
    overrides = {k: v for k, v in overrides.items() if v is not None}
    overrides.setdefault("registry_root", settings.lake_root)
    return deployment_from_registry(
        registry,
        name,
        versions,
        artifacts_root=settings.artifacts_root,
        storage_options=dict(settings.storage_options),
        **overrides,
    )



@contextmanager
def _stop_on_signals(server: ls.LitServer, name: str) -> Iterator[None]:
    """SIGTERM and SIGINT both stop the server through LitServe's own shutdown.

    The first signal sets LitServe's shutdown event from a helper thread (the main thread is
    blocked on that manager event; its connection must not be reused inside the handler), so
    LitServe stops uvicorn and the workers as if its shutdown API were called. A second signal,
    or one before LitServe has its manager, raises KeyboardInterrupt (LitServe's Ctrl-C path).
    A plain SIGTERM would kill only this process and orphan the workers.
    """
    main_pid = os.getpid()
    requested = threading.Event()

    def handle(signum: int, frame: Any) -> None:
        if os.getpid() != main_pid:
            # A forked child (uvicorn, the queue manager) inherited this handler: just exit.
            raise SystemExit(128 + signum)
        event = getattr(server, "_shutdown_event", None)
        if requested.is_set() or event is None:
            raise KeyboardInterrupt(f"signal {signum}")
        requested.set()
        logger.info("%s received: stopping model server %s", signal.Signals(signum).name, name)
        threading.Thread(target=event.set, daemon=True, name="tandem-shutdown").start()

    previous = {sig: signal.signal(sig, handle) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _stop_children() -> None:
    children = multiprocessing.active_children()
    for child in children:
        child.terminate()
    deadline = time.monotonic() + _CHILD_GRACE_S
    for child in children:
        child.join(max(0.0, deadline - time.monotonic()))
        if child.is_alive():
            logger.warning("child %s (pid %s) ignored SIGTERM; killing it", child.name, child.pid)
            child.kill()
            child.join(1.0)


def _announce_when_ready(spec: DeploymentSpec, host: str, port: int, stop: threading.Event) -> None:
    probe_host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    while not stop.wait(0.2):
        conn = http.client.HTTPConnection(probe_host, port, timeout=1.0)
        try:
            conn.request("GET", "/health")
            if conn.getresponse().status == 200:
                logger.info(
                    "model server %s ready on http://%s:%d (versions %s)",
                    spec.model,
                    host,
                    port,
                    ", ".join(spec.version_names),
                )
                return
        except OSError:
            pass
        finally:
            conn.close()
