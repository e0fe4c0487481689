"""What the running platform serves: the model servers `tandem up` started and the versions they have loaded.

`tandem up` writes `TANDEM_HOME/deployments.json` (model -> server URL, or a list of replica URLs);
each server's `GET /info` reports the versions its workers have loaded. The CLI uses this to refuse
an alias move no running server can serve, and to wait (`--wait`) until a new version is loaded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

from models.errors import TandemModelError
from models.settings import TandemSettings

__all__ = ["NotServableError", "ServerReport", "check_servable", "deployed_servers", "server_reports",
           "wait_until_loaded"]

DEPLOYMENTS_FILE = "deployments.json"


class NotServableError(TandemModelError):
    """No running model server can serve the version (none deployed, none healthy, or its load failed)."""


@dataclass
class ServerReport:
    """One model server as it answered `GET /info` (reachable False when it did not answer)."""

    model: str
    url: str
    reachable: bool
    loaded: list[str] = field(default_factory=list)
    loading: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


def deployed_servers(settings: TandemSettings) -> dict[str, list[str]]:
    """Model -> server URLs from the launcher's deployments file (empty when the platform never ran)."""
    path = settings.home / DEPLOYMENTS_FILE
    if not path.exists():
        return {}
    found = json.loads(path.read_text())
    return {m: [u] if isinstance(u, str) else list(u) for m, u in found.items()}


def server_reports(settings: TandemSettings, model: str | None = None, timeout_s: float = 1.0) -> list[ServerReport]:
    """Ask each deployed server (of `model`, or all) what it has loaded."""
    reports = []
    for name, urls in sorted(deployed_servers(settings).items()):
        if model is not None and name != model:
            continue
        for url in urls:
            try:
                r = httpx.get(f"{url}/info", timeout=timeout_s)
                served = r.json().get("served") if r.status_code == 200 else None
            except (httpx.HTTPError, ValueError):
                served = None
            if not isinstance(served, dict):
                reports.append(ServerReport(name, url, reachable=False))
                continue
            reports.append(ServerReport(name, url, True, list(served.get("loaded") or []),
                                        list(served.get("loading") or []), dict(served.get("failed") or {})))
    return reports


def check_servable(settings: TandemSettings, model: str) -> list[ServerReport]:
    """The reachable servers of `model`; raises NotServableError when the platform runs but none serves it.

    When no server of any model answers, the platform is not running: the alias move is fine, the
    next `tandem up` loads it, and an empty list is returned.
    """
    everything = server_reports(settings)
    if not any(r.reachable for r in everything):
        return []
    mine = [r for r in everything if r.model == model and r.reachable]
    if not mine:
        raise NotServableError(
            f"the platform is running but no model server serves {model!r}; stop `tandem up` (Ctrl-C) and "
            f"start it again to deploy a server for {model!r}, or pass --force to record the alias anyway")
    return mine


def wait_until_loaded(settings: TandemSettings, model: str, version: str, *, timeout_s: float = 300,
                      say: Callable[[str], None] = print, poll_s: float = 0.5) -> float:
    """Block until every reachable server of `model` has loaded `version`; returns the seconds waited."""
    started = time.monotonic()
    last = ""
    while True:
        reports = [r for r in server_reports(settings, model) if r.reachable]
        if not reports:
            raise NotServableError(f"no running model server serves {model!r}; start the platform with `tandem up`")
        failed = [r for r in reports if version in r.failed]
        if failed:
            raise NotServableError(
                f"{model}@{version} failed to load on {failed[0].url}: {failed[0].failed[version]}; "
                f"roll it back with `tandem models rollback {model}`")
        ready = [r for r in reports if version in r.loaded]
        waited = time.monotonic() - started
        if len(ready) == len(reports):
            return waited
        line = f"  {model}@{version}: loaded on {len(ready)}/{len(reports)} server(s) ({waited:.0f} s)"
        if line != last:
            say(line)
            last = line
        if waited > timeout_s:
            raise NotServableError(f"{model}@{version} was not loaded within {timeout_s:.0f} s; see the model "
                                   f"server's log, or `tandem models status {model}`")
        time.sleep(poll_s)
