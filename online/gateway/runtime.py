"""Everything one gateway process holds: registry view, tenants, limits, engine, log sink.

Built once per app from settings; background tasks keep the registry view, the server
directory and the tenant file fresh so changes reach a running gateway within seconds.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client import Counter

from lakehouse import Lake
from lakehouse.append_process import AppendProcess, AppendProcessError, LocalAppends
from models.errors import UnknownTenantError
from models.pii import Privacy, redact
from models.registry import Registry
from models.settings import TandemSettings
from models.workflows import WorkflowSpec, load_workflows
from online.gateway.breaker import BreakerBoard
from online.gateway.cache import PredictionCache
from online.gateway.client import ModelClient
from online.gateway.engine import WorkflowEngine
from online.gateway.fleet import ServedView
from online.gateway.limits import InFlight
from online.gateway.logsink import PredictionLog
from online.gateway.metrics import GatewayMetrics
from online.gateway.problems import NotFound
from online.gateway.record import RequestRecorder
from online.gateway.routing import Router
from online.gateway.settings import GatewaySettings
from online.gateway.state import open_state
from online.gateway.tenants import TenantStore

log = logging.getLogger("tandem.gateway")

DEPLOYMENTS_FILE = "deployments.json"


@dataclass
class ServerDirectory:
    """Model name -> model server URLs, from settings plus `deployments.json` (re-read on change).

    The file maps a model to one URL or to a list of replica URLs; calling the directory gives the
    first replica of each model, `replicas()` all of them.
    """

    static: Mapping[str, str]
    path: Path | None
    _mtime: float = -1.0
    _replicas: dict[str, list[str]] = field(default_factory=dict)
    _current: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._set({k: [v] for k, v in self.static.items()})
        self.refresh()

    def refresh(self) -> None:
        if self.path is None or not self.path.exists():
            return
        mtime = self.path.stat().st_mtime
        if mtime == self._mtime:
            return
        try:
            found = json.loads(self.path.read_text())
            replicas = {k: [u.rstrip("/") for u in ([v] if isinstance(v, str) else v)] for k, v in found.items()}
        except (OSError, ValueError, TypeError, AttributeError) as exc:
            log.warning("cannot read %s: %s", self.path, exc)
            return
        self._mtime = mtime
        self._set({**replicas, **{k: [v] for k, v in self.static.items()}})

    def _set(self, replicas: dict[str, list[str]]) -> None:
        self._replicas = {k: v for k, v in replicas.items() if v}
        self._current = {k: v[0] for k, v in self._replicas.items()}

    def replicas(self) -> Mapping[str, list[str]]:
        return self._replicas

    def label(self, url: str) -> str:
        """A metrics label for a server that does not reveal its address: `embedder`, `embedder#2`."""
        for model, urls in self._replicas.items():
            if url in urls:
                return model if len(urls) == 1 else f"{model}#{urls.index(url) + 1}"
        return "unknown"

    def __call__(self) -> Mapping[str, str]:
        return self._current


class _BlockingQuota:
    """`quotas.consume(tenant)` for plain `def` routes (run in a worker thread), e.g. job submission."""

    def __init__(self, limits):
        self._limits = limits

    def consume(self, tenant, n: int = 1) -> None:
        self._limits.consume_quota_blocking(tenant, n)


class Runtime:
    """The gateway's long-lived collaborators, shared by all requests."""

    def __init__(
        self,
        settings: TandemSettings,
        gateway: GatewaySettings,
        *,
        client: ModelClient | None = None,
        lake: Lake | None = None,
    ):
        self.settings = settings
        self.gateway = gateway
        self.lake = lake or Lake(settings.lake_root, settings.storage_options or None)
        from models.artifacts import ArtifactStore

        self.registry = Registry(self.lake, ArtifactStore(settings.artifacts_root, settings.storage_options or None))
        self.tenants = TenantStore(settings.tenants_file)
        self.workflows: dict[str, WorkflowSpec] = load_workflows(settings.workflow_dir)
        self.metrics = GatewayMetrics()
        self._in_flight_rejects = Counter(
            "tandem_tenant_in_flight_rejected_total",
            "Requests refused (429) because their tenant had max_in_flight requests in flight on this gateway.",
            ["tenant"], registry=self.metrics.registry)
        # Rate, quota and idempotency records: in-process, or on Redis when TANDEM_STATE_URL is set.
        self.state = open_state(
            gateway.state_url, registry=self.metrics.registry, idempotency_ttl_s=gateway.idempotency_ttl_s,
            lease_s=gateway.idempotency_lease_s or gateway.max_deadline_ms / 1000 + 30,
            timeout_s=gateway.state_timeout_s, retry_s=gateway.state_retry_s,
        )
        self.limits = self.state.limits
        self.quotas = _BlockingQuota(self.limits)
        self.idempotency = self.state.idempotency
        self.in_flight = InFlight(gateway.tenant_max_in_flight, on_reject=self._count_in_flight_reject)
        self.servers = ServerDirectory(gateway.servers, settings.home.absolute() / DEPLOYMENTS_FILE)
        self.states: dict[str, Any] = {}  # what routing uses: the registry's, less versions not loaded yet
        self.registry_states: dict[str, Any] = {}
        self.tasks: dict[str, str] = {}
        self.versions: dict[str, set[str]] = {}
        self.client = client or ModelClient(
            coalesce=gateway.coalesce, max_batch_instances=gateway.coalesce_max_instances,
            max_inflight=gateway.coalesce_max_inflight,
            window_s=gateway.coalesce_window_ms / 1000,
            observe=lambda url, requests, _inputs: self.metrics.model_calls.labels(
                self.servers.label(url)).observe(requests))
        self.breakers = BreakerBoard(failure_threshold=gateway.breaker_failures,
                                     reset_timeout_s=gateway.breaker_reset_s)
        self.cache = PredictionCache(max_entries=gateway.cache_max_entries, max_bytes=gateway.cache_max_bytes,
                                     ttl_s=gateway.cache_ttl_s)
        self.log = (
            PredictionLog(self._write_predictions, max_rows=gateway.log_flush_rows,
                          flush_interval_s=gateway.log_flush_s)
            if gateway.log_enabled else None
        )
        # Both sinks append through one writer process (started with the gateway), or in their threads.
        self.appends = (
            AppendProcess(self.lake, compact_every=gateway.log_compact_every, name="gateway lake writer")
            if gateway.lake_writer == "process" else LocalAppends(self.lake, compact_every=gateway.log_compact_every)
        ) if gateway.log_enabled or gateway.record_enabled else None
        self.privacy = Privacy.for_home(settings.home)  # its secrets stay outside the lake
        self.recorder = (
            RequestRecorder(self.lake, self.privacy, max_rows=gateway.log_flush_rows,
                            flush_interval_s=gateway.log_flush_s, compact_every=gateway.log_compact_every,
                            appends=self.appends)
            if gateway.record_enabled else None
        )
        self.served = ServedView(self.servers.replicas, self.client.info)
        self.engine = WorkflowEngine(
            client=self.client, servers=self.servers, replicas=self.servers.replicas, serves=self.served.serves, states=lambda: self.states, router=Router(), versions=lambda: self.versions,
            cache=self.cache, breakers=self.breakers, log=self.log, metrics=self.metrics,
            shadow_concurrency=gateway.shadow_concurrency,
        )
        self._tasks: list[asyncio.Task] = []
        self.last_refresh = 0.0

    async def _start_appends(self) -> None:
        try:
            await asyncio.to_thread(self.appends.start)
        except AppendProcessError as exc:
            log.warning("%s; the prediction log and request record keep their rows and retry", exc)

    def _count_in_flight_reject(self, tenant: str) -> None:
        self._in_flight_rejects.labels(tenant).inc()

    def _write_predictions(self, rows: list[dict]) -> None:
        for row in rows:  # an error text may quote an input (a model server's 422): stored as the policy allows
            if row.get("error") and self.tenant_pii(row["tenant"]) != "keep":
                row["error"] = redact(row["error"])
        self.appends.append("predictions", rows)

    def tenant_pii(self, tenant_id: str) -> str:
        """The tenant's PII policy; `drop` (store nothing) for a tenant deleted meanwhile."""
        try:
            return self.tenants.get(tenant_id).pii
        except UnknownTenantError:
            return "drop"

    def workflow(self, name: str) -> WorkflowSpec:
        try:
            return self.workflows[name]
        except KeyError:
            raise NotFound(
                f"no workflow {name!r}; available: {', '.join(sorted(self.workflows))}"
            ) from None

    def model_task(self, name: str) -> str:
        """The task of a registered model (404 naming the registered ones otherwise)."""
        try:
            return self.tasks[name]
        except KeyError:
            raise NotFound(f"no model {name!r}; registered: {', '.join(sorted(self.tasks)) or 'none'}") from None

    def refresh_registry(self) -> None:
        """Fold the registry events now (called by the poller and after admin changes)."""
        summaries = self.registry.list_models()
        self.registry_states = {m.name: m.state for m in summaries}
        self.states = self.served.effective(self.registry_states)
        self.tasks = {m.name: m.task for m in summaries}
        self.versions = {m.name: set(m.versions) for m in summaries}
        self.last_refresh = time.time()
        self.metrics.registry_version.set(self.last_refresh)

    async def refresh_served(self) -> None:
        """Ask the model servers what they have loaded and re-derive the routing states."""
        self.servers.refresh()
        await self.served.refresh()
        self.states = self.served.effective(self.registry_states)

    async def start(self) -> None:
        if self.appends is not None:  # in the background: a writer that cannot start is retried at each write
            self._tasks.append(asyncio.create_task(self._start_appends()))
        await self.refresh_served()
        await asyncio.to_thread(self.refresh_registry)
        if self.log is not None:
            self.log.start()
        if self.recorder is not None:
            self.recorder.sink.start()
        self._tasks.append(asyncio.create_task(self._poll()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.engine.drain_shadows()
        if self.log is not None:
            await self.log.stop()
        if self.recorder is not None:
            await self.recorder.sink.stop()
        if self.appends is not None:
            await asyncio.to_thread(self.appends.close)
        await self.client.aclose()
        await self.state.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.gateway.registry_poll_s)
            try:
                await asyncio.to_thread(self.refresh_registry)
                await self.refresh_served()
                self.tenants.reload_if_changed()
            except Exception:  # keep serving on the last good view; the next poll retries
                log.exception("registry refresh failed; serving the previous view")
            for key, state in self.breakers.states().items():
                self.metrics.breaker_state.labels(self.servers.label(key)).set(state)
            if self.log is not None:
                self.metrics.log_depth.set(self.log.depth)
