"""Which versions a model server holds, kept in step with the registry while it serves.

Each inference worker owns a `ServedVersions`: the ops it has loaded, keyed by version. The
versions the deployment was started with stay loaded for the server's life. A `RegistryWatcher`
thread in the worker polls the registry (cheap while nothing changed: the registry caches by Delta
table version) and, when a version of this model gains an alias (stable, canary, shadow), fetches,
verifies and loads it in the background while the worker keeps serving; a version it loaded that
loses every alias is released after a grace period (requests still routed to it finish first).

The worker writes its state to `TANDEM_SERVER_STATUS_DIR/worker-<pid>.json` after every change;
the HTTP process merges the workers' files into `GET /info` (a version counts as loaded when every
worker has it), which is what the gateway and `tandem models status` read.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from online.servers.deployment import DeploymentSpec, VersionSpec

__all__ = ["STATUS_DIR_ENV", "RegistryWatcher", "ServedVersions", "merged_status"]

logger = logging.getLogger("tandem.servers")

STATUS_DIR_ENV = "TANDEM_SERVER_STATUS_DIR"
_ALIASES = ("stable", "canary", "shadow")


class ServedVersions:
    """The versions one worker serves: `ops` by version, plus what is loading, failed or released."""

    def __init__(self, deployment: DeploymentSpec, load: Callable[[VersionSpec], Any], *,
                 status_dir: str | None = None, clock: Callable[[], float] = time.monotonic):
        self.deployment = deployment
        self._load = load
        self._clock = clock
        self.ops: dict[str, Any] = {}
        self.pinned = set(deployment.version_names)  # asked for at start: never released
        self.aliases: dict[str, str] = {}  # version -> alias that keeps it (registry view)
        self.default = deployment.default_version
        self.loading: str | None = None
        self.failed: dict[str, str] = {}  # version -> why it could not be loaded
        self._unaliased_since: dict[str, float] = {}
        self._status_path = Path(status_dir) / f"worker-{os.getpid()}.json" if status_dir else None

    def load_initial(self) -> None:
        """Load the deployment's versions now; any failure propagates (the server never becomes healthy)."""
        for spec in self.deployment.versions:
            self.ops[spec.version] = self._load(spec)
        self.write_status()

    def sync(self, wanted: dict[str, VersionSpec], stable: str | None, *, release_grace_s: float) -> None:
        """Load every version in `wanted` (alias -> spec) not held yet; release unaliased ones past grace."""
        self.aliases = {spec.version: alias for alias, spec in wanted.items()}
        for alias, spec in wanted.items():
            if spec.version in self.ops or spec.version in self.failed:
                continue
            self.loading = spec.version
            self.write_status()
            started = time.perf_counter()
            try:
                op = self._load(spec)
            except Exception as exc:  # noqa: BLE001 - reported in /info; the worker keeps serving the rest
                logger.error("could not load %s version %s (%s): %s", self.deployment.model, spec.version, alias, exc)
                self.failed[spec.version] = f"{type(exc).__name__}: {exc}"
            else:
                self.ops[spec.version] = op  # one dict store: visible to the serving thread at once
                logger.info("now serving %s version %s (%s), loaded in %.1f s", self.deployment.model,
                            spec.version, alias, time.perf_counter() - started)
            finally:
                self.loading = None
        if stable in self.ops:
            self.default = stable
        now = self._clock()
        for version in list(self.ops):
            if version in self.aliases or version in self.pinned or version == self.default:
                self._unaliased_since.pop(version, None)
                continue
            since = self._unaliased_since.setdefault(version, now)
            if now - since >= release_grace_s:
                del self.ops[version]
                del self._unaliased_since[version]
                logger.info("released %s version %s: no alias points at it any more",
                            self.deployment.model, version)
        self.write_status()

    def status(self) -> dict[str, Any]:
        return {"pid": os.getpid(), "loaded": sorted(self.ops), "loading": self.loading,
                "failed": dict(self.failed), "default": self.default, "aliases": dict(self.aliases),
                "at": time.time()}

    def write_status(self) -> None:
        if self._status_path is None:
            return
        tmp = self._status_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.status()))
        os.replace(tmp, self._status_path)


class RegistryWatcher(threading.Thread):
    """Polls the registry for `served`'s model and syncs the loaded versions; a daemon thread."""

    def __init__(self, served: ServedVersions, registry: Any, *, poll_s: float, release_grace_s: float):
        super().__init__(daemon=True, name="tandem-registry-watcher")
        self.served = served
        self.registry = registry
        self.poll_s = poll_s
        self.release_grace_s = release_grace_s
        self.stopped = threading.Event()

    def run(self) -> None:
        model = self.served.deployment.model
        while not self.stopped.wait(self.poll_s):
            try:
                self.tick()
            except Exception:  # a registry hiccup must not stop serving; the next poll retries
                logger.exception("registry poll for %s failed; keeping the loaded versions", model)

    def tick(self) -> None:
        model = self.served.deployment.model
        state = self.registry.state(model)
        wanted: dict[str, VersionSpec] = {}
        for alias in _ALIASES:
            version = getattr(state, alias, None)
            if version:
                mv = self.registry.get(model, version)
                wanted[alias] = VersionSpec(version=mv.version, artifact_uri=mv.artifact_uri, sha256=mv.sha256)
        self.served.sync(wanted, state.stable, release_grace_s=self.release_grace_s)


def merged_status(status_dir: str | None, workers: int) -> dict[str, Any]:
    """The server's view for `GET /info`: versions every live worker has loaded, and what is pending."""
    files = sorted(Path(status_dir).glob("worker-*.json")) if status_dir else []
    states = []
    for path in files:
        try:
            states.append(json.loads(path.read_text()))
        except (OSError, ValueError):  # being replaced right now: the next read sees it
            continue
    if not states:
        return {"loaded": [], "loading": [], "failed": {}, "default": None, "workers_reporting": 0}
    loaded = set(states[0]["loaded"])
    for s in states[1:]:
        loaded &= set(s["loaded"])
    if len(states) < workers:
        loaded = set()  # a worker still starting has nothing to vouch for yet
    loading = sorted({s["loading"] for s in states if s.get("loading")}
                     | {v for s in states for v in s["loaded"]} - loaded)
    failed: dict[str, str] = {}
    for s in states:
        failed.update(s.get("failed") or {})
    return {"loaded": sorted(loaded), "loading": loading, "failed": failed,
            "default": states[0].get("default"), "workers_reporting": len(states)}
