"""The LitAPI of a model deployment: the `models/` op of every served version behind `POST /predict`.

Request:  {"version": "2", "inputs": [<task input>, ...], "batched": false, "parallel": false}
          version optional (the default one); `batched: true` says the caller batched already
          (the gateway's coalescer does): the batch starts without waiting out the batch window,
          taking only what is queued by then. `parallel: true` says the caller runs other model
          calls at the same time (a workflow's parallel steps): a lone input then runs on one
          thread, leaving the other cores to them (`models.threads`).
Response: {"model": "embedder", "version": "2", "outputs": [<task output>, ...]}

A LitServe batch can hold requests for several versions: `predict` groups their instances by
version and calls each version's `predict_batch` once.

Per-request errors never raise out of the hooks. LitServe 0.2.19's batched loop answers *every*
request of a batch with the status of an `HTTPException` raised while decoding any one of them,
so one bad request would fail its neighbours. Instead `decode_request` returns a rejection that
`predict` passes through and `encode_response` turns into that request's own 404/422 (or 500
when only its version's model call failed).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from queue import Empty
from typing import Any

import litserve as ls
import orjson
from litserve.loops.simple_loops import BatchedLoop, SingleLoop
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from starlette.responses import Response

from models.errors import DigestMismatchError, SchemaError
from models.ops import ModelOp, check_outputs, load_op
from models.schemas import get_task
from models.threads import sharing_cores
from online.servers._lifetime import die_with_parent
from online.servers.deployment import DeploymentSpec, VersionSpec
from online.servers.metrics import server_metrics
from online.servers.versions import STATUS_DIR_ENV, RegistryWatcher, ServedVersions

__all__ = ["MAX_INPUTS_PER_REQUEST", "DeploymentAPI", "fetch_artifact"]

logger = logging.getLogger("tandem.servers")

MAX_INPUTS_PER_REQUEST = 1024
UNKNOWN_VERSION_LABEL = "unknown"
LOG_FORMAT = "%(asctime)s %(levelname)s %(processName)s[%(process)d] %(name)s: %(message)s"


@dataclass(frozen=True, slots=True)
class _Decoded:
    version: str
    inputs: list[BaseModel]
    parallel: bool = False  # the caller runs other model calls beside this one (`models.threads`)


@dataclass(frozen=True, slots=True)
class _Answer:
    version: str
    outputs: list[BaseModel]


@dataclass(frozen=True, slots=True)
class _Rejected:
    status: int
    detail: Any
    version: str  # metrics label: a served version or "unknown"
    reason: str


def fetch_artifact(deployment: DeploymentSpec, version: VersionSpec) -> Path:
    """A local directory holding `version`'s artifact, verified against its sha256."""
    from models.artifacts import ArtifactStore

    store = ArtifactStore(deployment.artifacts_root, deployment.storage_options or None)
    return Path(store.fetch(version.artifact_uri, version.sha256))


class DeploymentAPI(ls.LitAPI):
    """Serves every version of a `DeploymentSpec` from one LitServe worker, with dynamic batching."""

    def __init__(self, deployment: DeploymentSpec, *, api_path: str = "/predict", log_level: str = "info"):
        batched = deployment.max_batch_size > 1
        super().__init__(
            max_batch_size=deployment.max_batch_size,
            batch_timeout=deployment.batch_timeout if batched else 0.0,
            api_path=api_path,
            loop=_TimedBatchedLoop() if batched else _TimedSingleLoop(),
        )
        self.deployment = deployment
        self.log_level = log_level
        self._ops: dict[str, ModelOp] = {}

    # --- LitAPI hooks -------------------------------------------------------------------

    def setup(self, device: str) -> None:
        """Fetch and verify every version's artifact, then load its op; any failure keeps /health at 503.

        With `registry_root` set, a watcher thread then keeps the loaded versions in step with the
        registry's aliases (see `online.servers.versions`).
        """
        configure_logging(self.log_level)
        if multiprocessing.parent_process() is not None:  # a spawned worker: never outlive the server
            die_with_parent()
        dep = self.deployment
        threads = dep.resolved_torch_threads()
        _limit_threads(threads)
        self._metrics = server_metrics()
        self._request_model = _request_model(dep.task)
        self._device = device
        self._served = ServedVersions(dep, self._load_version, status_dir=os.environ.get(STATUS_DIR_ENV))
        self._served.load_initial()
        self._ops = self._served.ops
        _limit_threads(threads)  # again: a version's load may have imported torch just now
        if dep.registry_root:
            self._watcher = RegistryWatcher(self._served, _open_registry(dep), poll_s=dep.registry_poll_s,
                                            release_grace_s=dep.release_grace_s)
            self._watcher.start()
        logger.info("worker ready: %s versions %s, %d torch threads", dep.model, dep.version_names, threads)

    def _load_version(self, spec: VersionSpec) -> ModelOp:
        dep = self.deployment
        started = time.perf_counter()
        try:
            path = fetch_artifact(dep, spec)
        except DigestMismatchError:
            logger.error(
                "REFUSING to serve %s version %s: artifact %s does not hash to its recorded sha256 %s",
                dep.model,
                spec.version,
                spec.artifact_uri,
                spec.sha256,
            )
            raise
        op = load_op(path, self._device)
        if op.task != dep.task:
            raise SchemaError(
                f"{dep.model} version {spec.version} is a {op.task!r} model but the deployment "
                f"serves task {dep.task!r}"
            )
        _limit_threads(dep.resolved_torch_threads())
        logger.info(
            "loaded %s version %s (sha256 %s…) on %s in %.2f s",
            dep.model,
            spec.version,
            spec.sha256[:12],
            self._device,
            time.perf_counter() - started,
        )
        return op

    def decode_request(self, request: dict) -> _Decoded | _Rejected:
        asked = request.get("version") if isinstance(request, dict) else None
        if asked is not None and str(asked) not in self._ops:
            detail = (
                f"model {self.deployment.model!r} has no version {str(asked)!r} loaded on this server; "
                f"it serves {', '.join(sorted(self._ops))}"
            )
            return _Rejected(404, detail, UNKNOWN_VERSION_LABEL, "unknown_version")
        version = self._served.default if asked is None else str(asked)
        try:
            body = self._request_model.model_validate(request)
        except ValidationError as exc:
            return _Rejected(422, _validation_detail(exc), version, "invalid_input")
        return _Decoded(version, body.inputs, body.parallel)

    def predict(self, x: Any) -> Any:
        if self.max_batch_size > 1:
            return self._predict_all(x)
        return self._predict_all([x])[0]

    def encode_response(self, output: _Answer | _Rejected) -> Response:
        model = self.deployment.model
        if isinstance(output, _Rejected):
            self._metrics.errors.labels(model, output.version, output.reason).inc()
            self._metrics.requests.labels(model, output.version, str(output.status)).inc()
            return _json_response({"detail": output.detail}, output.status)
        self._metrics.requests.labels(model, output.version, "200").inc()
        body = {
            "model": model,
            "version": output.version,
            "outputs": [o.model_dump() for o in output.outputs],
        }
        return _json_response(body, 200)

    # --- internals ----------------------------------------------------------------------

    def _predict_all(self, items: list[_Decoded | _Rejected]) -> list[_Answer | _Rejected]:
        model = self.deployment.model
        self._metrics.requests_per_batch.labels(model).observe(len(items))
        by_version: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            if isinstance(item, _Decoded):
                by_version.setdefault(item.version, []).append(i)
        results: list[Any] = list(items)
        for version, indices in by_version.items():
            flat = [inp for i in indices for inp in items[i].inputs]
            op = self._ops.get(version)
            if op is None:  # released between decoding and now (after its grace period)
                for i in indices:
                    results[i] = _Rejected(404, f"{model} version {version} is no longer served here", version,
                                           "unknown_version")
                continue
            started = time.perf_counter()
            try:
                # A lone request whose caller runs other models at once leaves them the other cores.
                with sharing_cores(len(indices) == 1 and items[indices[0]].parallel):
                    outputs = check_outputs(op, flat, op.predict_batch(flat))
            except Exception as exc:  # isolate the failure to this version's requests
                logger.exception("%s version %s failed on a batch of %d inputs", model, version, len(flat))
                detail = f"{model} version {version} failed: {type(exc).__name__}: {exc}"
                for i in indices:
                    results[i] = _Rejected(500, detail, version, "inference_error")
                continue
            finally:
                self._metrics.inference.labels(model, version).observe(time.perf_counter() - started)
                self._metrics.batch_size.labels(model, version).observe(len(flat))
            start = 0
            for i in indices:
                n = len(items[i].inputs)
                results[i] = _Answer(version, outputs[start : start + n])
                start += n
        return results

    def observe_queue_wait(self, seconds: float) -> None:
        self._metrics.queue_wait.labels(self.deployment.model).observe(seconds)


def _open_registry(dep: DeploymentSpec) -> Any:
    from lakehouse import Lake
    from models.artifacts import ArtifactStore
    from models.registry import Registry

    opts = dep.storage_options or None
    return Registry(Lake(dep.registry_root, opts), ArtifactStore(dep.artifacts_root, opts))


def _limit_threads(threads: int) -> None:
    """Cap this worker's intra-op threads so workers and the HTTP process do not oversubscribe cores.

    The environment covers torch (and OpenMP/MKL) imported later; torch itself is only touched if
    already imported, so a server of tiny test models never pays for importing it.
    """
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(threads)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _request_model(task_name: str) -> type[BaseModel]:
    task = get_task(task_name)
    return create_model(
        f"{task.input.__name__.removesuffix('In')}Request",
        __config__=ConfigDict(extra="forbid"),
        version=(str | int | None, None),
        inputs=(list[task.input], Field(min_length=1, max_length=MAX_INPUTS_PER_REQUEST)),
        batched=(bool, False),
        parallel=(bool, False),
    )


def _validation_detail(exc: ValidationError) -> list[dict]:
    """FastAPI's 422 shape: each error names its field, e.g. loc ["body", "inputs", 0, "text"]."""
    return [
        {"type": e["type"], "loc": ["body", *e["loc"]], "msg": e["msg"]}
        for e in exc.errors(include_url=False, include_input=False)
    ]


def _json_response(body: dict, status: int) -> Response:
    # Encoded here, in the worker: orjson is far cheaper than FastAPI's jsonable_encoder on
    # embedding-sized float lists, and a Response pickles back to the HTTP process as bytes.
    return Response(content=orjson.dumps(body), status_code=status, media_type="application/json")


def configure_logging(level: str) -> None:
    """Route `tandem.servers` logs to stderr (idempotent; spawned workers start with no handlers)."""
    log = logger
    log.setLevel(level.upper())
    if not any(getattr(h, "_tandem", False) for h in log.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler._tandem = True  # type: ignore[attr-defined]
        log.addHandler(handler)
        log.propagate = False


class _WorkerQueue:
    """LitServe's request queue as one inference worker sees it.

    `wait` blocks until a request arrives and holds it for the next `get`, so a batch's window
    opens when its first request arrives instead of LitServe polling the (manager) queue every
    millisecond while idle (measured here: ~17% of a core for an idle server). Each request's
    queue wait is recorded: items are (response_queue_id, uid, enqueued_at, payload) with
    `enqueued_at = time.monotonic()` in the HTTP process (CLOCK_MONOTONIC is system-wide).
    """

    __slots__ = ("_held", "_queue", "_record", "last_item_at")

    def __init__(self, queue: Any, record: Any) -> None:
        self._queue = queue
        self._record = record
        self._held: Any = None
        self.last_item_at = 0.0  # time.monotonic() when `get` last returned a request

    def wait(self, timeout: float) -> bool:
        if self._held is None:
            try:
                self._held = self._seen(self._queue.get(True, timeout))
            except Empty:
                return False
        return True

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        if self._held is not None:
            item, self._held = self._held, None
            return item
        return self._seen(self._queue.get(block, timeout))

    def get_nowait(self) -> Any:
        return self.get(block=False)

    def holds_batched(self) -> bool:
        """Whether the request held by `wait` says its caller batched already (`"batched": true`)."""
        held = self._held
        return type(held) is tuple and len(held) == 4 and isinstance(held[3], dict) and held[3].get("batched") is True

    def _seen(self, item: Any) -> Any:
        if type(item) is tuple and len(item) == 4 and isinstance(item[2], float):
            self.last_item_at = time.monotonic()
            self._record(self.last_item_at - item[2])
        return item


class _TimedBatchedLoop(BatchedLoop):
    _last_requests = 0  # requests in the last batch: 0 or 1 means the worker is idle or lightly used

    def __call__(self, lit_api, device, worker_id, request_queue, *args, **kwargs):
        queue = _WorkerQueue(request_queue, lit_api.observe_queue_wait)
        super().__call__(lit_api, device, worker_id, queue, *args, **kwargs)

    def get_batch_requests(self, lit_api, request_queue, transport):
        if not request_queue.wait(timeout=1.0):
            return [], []
        if request_queue.holds_batched() or self._last_requests <= 1:
            # Batched upstream, or a request reaching an idle worker (its last batch was a lone request):
            # waiting out the window would only add latency (measured: the whole window on every request
            # of a lone client). Take what is queued now; what arrives meanwhile makes the next batch.
            payloads, timed_out = self._collect(lit_api, request_queue, transport, lit_api.max_batch_size, 0.0)
        else:
            payloads, timed_out = self._wave(lit_api, request_queue, transport)
        self._last_requests = len(payloads) + len(timed_out)
        return payloads, timed_out

    def _wave(self, lit_api, request_queue, transport):
        window, most = lit_api.batch_timeout, lit_api.max_batch_size
        payloads, timed_out = super().get_batch_requests(lit_api, request_queue, transport)
        # A wave of clients whose answers just went out comes back spread over more than one window
        # (measured at 32 clients: batches of 18 on average where 32 were waiting; MiniLM does 145
        # texts/s in batches of 16 and 174 in batches of 32). While requests keep arriving, keep
        # collecting in half-windows, up to 4 windows in all. A lone request right after a wave still
        # waits one window (more of the wave may be on its way).
        cap = time.monotonic() + 3 * window
        while (window > 0 and len(payloads) < most and time.monotonic() < cap
               and time.monotonic() - request_queue.last_item_at < window / 2):
            more, late = self._collect(lit_api, request_queue, transport, most - len(payloads), window / 2)
            payloads += more
            timed_out += late
            if not more and not late:
                break
        return payloads, timed_out

    def _collect(self, lit_api, request_queue, transport, room: int, window: float):
        """LitServe's own collation with a different room and window (restored after)."""
        saved = lit_api.max_batch_size, lit_api.batch_timeout
        lit_api.max_batch_size, lit_api.batch_timeout = room, window
        try:
            return super().get_batch_requests(lit_api, request_queue, transport)
        finally:
            lit_api.max_batch_size, lit_api.batch_timeout = saved


class _TimedSingleLoop(SingleLoop):
    def __call__(self, lit_api, device, worker_id, request_queue, *args, **kwargs):
        queue = _WorkerQueue(request_queue, lit_api.observe_queue_wait)
        super().__call__(lit_api, device, worker_id, queue, *args, **kwargs)
