"""`tandem up`: the model servers, the gateway and Dagster as supervised child processes.

Every child runs in a session (process group) of its own, so the terminal's Ctrl-C reaches only
the launcher, and the launcher can stop a child together with every process it started.

Supervision: a child that exits while the platform runs is restarted after a backoff (1 s, 2 s,
4 s … 30 s), with a log line each time; its process group is killed first, so no worker of a dead
model server keeps its port or answers /health. A child that crashes `MAX_CRASHES` times within
`CRASH_WINDOW_S` is given up on: the platform stops (exit code 1) if it was the gateway, and keeps
serving if it was a model server replica or a Dagster process. Dagster never takes the online path
down: its storage is migrated before it starts, and a failure there only leaves Dagster out.

Ctrl-C (or SIGTERM) sends each child one SIGINT (the gateway flushes its prediction log), then
SIGKILL to its process group after a grace period. The exit code is 0 when everything stopped
cleanly and 1 otherwise.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from models.settings import TandemSettings
from orchestration.bootstrap import Platform, demo_key, init_home
from orchestration.serving import DEPLOYMENTS_FILE

REFERENCE_MODELS = ("embedder", "classifier", "reranker")
EXAMPLES = {
    "classify": {"input": {"text": "The striker scored twice in the final minutes."}},
    "enrich": {"input": {"text": "Shares of the chip maker jumped after strong earnings."}},
    "search": {"input": {"query": "cheap flights to Rome",
                         "documents": ["Budget airline tickets to Italy", "How to treat a sprained ankle",
                                       "Rome hotel deals"]},
               "params": {"top_n": 2}},
}
MAX_CRASHES = 5
CRASH_WINDOW_S = 300.0
MAX_BACKOFF_S = 30.0


@dataclass
class Child:
    """One supervised process: how to start it, and what happened to it."""

    name: str
    command: list[str]
    env: dict[str, str]
    health_url: str
    cwd: Path | None = None
    critical: bool = False  # the platform stops when it is given up on
    optional: bool = False  # the platform starts (and serves) without it: Dagster
    proc: subprocess.Popen | None = None
    crashes: deque = field(default_factory=deque)
    restart_at: float | None = None
    given_up: bool = False
    healthy: bool = False

    def start(self) -> None:
        self.proc = subprocess.Popen(self.command, env=self.env, cwd=self.cwd, start_new_session=True)
        self.restart_at = None
        self.healthy = False

    def kill_group(self) -> None:
        """SIGKILL the child's whole process group (its workers too); quiet if already gone."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


class LauncherError(RuntimeError):
    """The platform could not start (a port taken, a child never healthy)."""


def run_platform(settings: TandemSettings, *, host: str = "127.0.0.1", port: int = 8000,
                 dagster_port: int | None = 3000, replicas: dict[str, int] | None = None,
                 say: Callable[[str], None] = print, block: bool = True,
                 server_args: list[str] | None = None) -> list[Child] | int:
    """Start everything, wait until healthy, print how to call it, then supervise until Ctrl-C.

    Returns the exit code when `block`, else the started children (tests stop them with
    `stop_children`). `replicas` maps a model to its number of model-server replicas (default 1).
    """
    _handle_stop_signals()
    platform = Platform.open(settings)
    models = {m.name: m for m in platform.registry.list_models()}
    if not all(name in models and models[name].state.stable for name in REFERENCE_MODELS):
        say("first run: initialising TANDEM_HOME (about a minute: trains the demo classifier)")
        init_home(settings, say=say)
        models = {m.name: m for m in platform.registry.list_models()}

    env = {**os.environ, "TANDEM_HOME": str(settings.home.absolute()), "PYTHONUNBUFFERED": "1",
           "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    children: list[Child] = []
    servers: dict[str, list[str]] = {}
    replicas = replicas or {}
    unknown = sorted(set(replicas) - set(models))
    if unknown:
        raise LauncherError(f"--replicas names models that are not registered: {', '.join(unknown)}")
    try:
        next_port = port + 1
        for name in sorted(n for n, m in models.items() if m.state.stable):
            versions = served_versions(settings, models[name])
            for replica in range(1, replicas.get(name, 1) + 1):
                _require_free(host, next_port, f"model server {name}")
                url = f"http://{host}:{next_port}"
                label = f"model server {name}" + (f" #{replica}" if replicas.get(name, 1) > 1 else "")
                say(f"starting {label} (versions {', '.join(versions)}; follows the registry) on {url}")
                children.append(Child(label, [
                    sys.executable, "-m", "online.servers", "--home", str(settings.home.absolute()), name,
                    "--versions", ",".join(versions), "--host", host, "--port", str(next_port),
                    *(server_args or [])], env, f"{url}/health"))
                servers.setdefault(name, []).append(url)
                next_port += 1
        (settings.home / DEPLOYMENTS_FILE).write_text(
            json.dumps({m: urls[0] if len(urls) == 1 else urls for m, urls in servers.items()}, indent=2))
        _require_free(host, port, "the gateway")
        gateway_url = f"http://{host}:{port}"
        say(f"starting gateway on {gateway_url}")
        children.append(Child("gateway", [sys.executable, "-m", "online.gateway", "--home",
                                          str(settings.home.absolute()), "--host", host, "--port", str(port)],
                              env, f"{gateway_url}/readyz", critical=True))
        for child in children:
            child.start()
        dagster_url = _start_dagster(settings, host, dagster_port, children, say) if dagster_port else None
        _wait_healthy(children, say)
        _banner(settings, gateway_url, dagster_url, say)
        if not block:
            return children
        code = _supervise(children, say)
    except BaseException:
        stop_children(children, say)
        raise
    clean = stop_children(children, say)
    return code if code else (0 if clean else 1)


def served_versions(settings: TandemSettings, summary) -> list[str]:
    """The versions a server starts with, kept loaded for its life: stable and any a tenant pins.

    A canary or shadow (now or later) is loaded by the server itself from the registry, and released
    once it loses its alias.
    """
    from models.tenancy import load_tenants

    pins = [t.model_pins.get(summary.name) for t in load_tenants(settings.tenants_file).values()]
    wanted = [summary.state.stable, *(v for v in pins if v in summary.versions)]
    return list(dict.fromkeys(v for v in wanted if v))


def _require_free(host: str, port: int, what: str) -> None:
    with socket.socket() as s:
        # As the servers bind: connections of an earlier run in TIME_WAIT do not make a port busy.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            raise LauncherError(
                f"port {port} on {host} (for {what}) is already in use: is another `tandem up` running? "
                "Stop it, or start on other ports with `tandem up --port N`") from None


def _wait_healthy(children: list[Child], say: Callable[[str], None], timeout_s: float = 300) -> None:
    """Wait until every child answers its health check; an optional child that fails is left to supervision."""
    deadline = time.monotonic() + timeout_s
    pending = {c.name: c for c in children}
    while pending:
        for name, child in list(pending.items()):
            if child.proc.poll() is not None:
                if child.optional:
                    say(f"  ✗ {name} exited with code {child.proc.returncode} while starting; the platform "
                        "serves without it and restarts it")
                    _on_exit(child, time.monotonic(), say)
                    del pending[name]
                    continue
                raise LauncherError(f"{name} exited with code {child.proc.returncode} while starting; "
                                    "see its log above")
            if _is_healthy(child):
                say(f"  ✓ {name} healthy")
                child.healthy = True
                del pending[name]
        if time.monotonic() > deadline:
            late = [c for c in pending.values() if not c.optional]
            if late:
                raise LauncherError(f"not healthy after {timeout_s:.0f} s: {', '.join(c.name for c in late)}")
            say(f"  ✗ not healthy after {timeout_s:.0f} s: {', '.join(pending)}; the platform serves without it")
            return
        if pending:
            time.sleep(0.5)


def _is_healthy(child: Child) -> bool:
    if not child.health_url:  # no health endpoint: running is all we can check
        return child.proc.poll() is None
    try:
        return httpx.get(child.health_url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _supervise(children: list[Child], say: Callable[[str], None], poll_s: float = 0.5) -> int:
    """Restart children that exit until Ctrl-C; returns 1 if a critical child was given up on, else 0."""
    try:
        while True:
            now = time.monotonic()
            for child in children:
                if child.given_up:
                    continue
                if child.restart_at is not None:
                    if now >= child.restart_at:
                        say(f"restarting {child.name}")
                        child.start()
                    continue
                if child.proc.poll() is None:
                    if not child.healthy and child.health_url and _is_healthy(child):
                        child.healthy = True
                        say(f"  ✓ {child.name} healthy again")
                    continue
                if _on_exit(child, now, say) and child.critical:
                    return 1
            time.sleep(poll_s)
    except KeyboardInterrupt:
        say("stopping ...")
        return 0


def _on_exit(child: Child, now: float, say: Callable[[str], None]) -> bool:
    """Record a crash and schedule a restart; True when the child is given up on."""
    child.kill_group()  # whatever it started (inference workers, uvicorn) goes with it
    child.crashes.append(now)
    while child.crashes and now - child.crashes[0] > CRASH_WINDOW_S:
        child.crashes.popleft()
    code = child.proc.returncode
    if len(child.crashes) >= MAX_CRASHES:
        child.given_up = True
        consequence = "stopping the platform" if child.critical else "the rest keeps serving"
        say(f"{child.name} exited with code {code}, {len(child.crashes)} times in {CRASH_WINDOW_S:.0f} s; "
            f"giving up on it ({consequence})")
        return True
    delay = min(MAX_BACKOFF_S, 2.0 ** (len(child.crashes) - 1))
    say(f"{child.name} exited with code {code}; restarting it in {delay:.0f} s")
    child.restart_at = now + delay
    child.healthy = False
    return False


def _start_dagster(settings: TandemSettings, host: str, port: int, children: list[Child],
                   say: Callable[[str], None]) -> str | None:
    """Dagster's webserver and daemon on an instance under TANDEM_HOME; None when it cannot start."""
    from orchestration.dagster_home import DagsterHomeError, dagster_commands, dagster_env, migrate_instance

    try:
        _require_free(host, port, "the Dagster UI")
        say("preparing Dagster's storage (created and migrated once, before its processes start)")
        migrate_instance(settings, say=say)
    except (DagsterHomeError, LauncherError, subprocess.TimeoutExpired) as exc:
        say(f"Dagster is not started: {exc}. Online serving is not affected; async jobs stay queued "
            "until Dagster runs")
        return None
    env = dagster_env(settings)
    commands = dagster_commands(settings, host=host, port=port)
    url = f"http://{host}:{port}"
    say(f"starting Dagster webserver on {url} and the Dagster daemon")
    for name, command, health in (("dagster webserver", commands["dagster-webserver"], f"{url}/server_info"),
                                  ("dagster daemon", commands["dagster-daemon"], "")):
        child = Child(name, command, env, health, cwd=settings.dagster_home, optional=True)
        child.start()
        children.append(child)
    return url


def _banner(settings: TandemSettings, url: str, dagster_url: str | None, say: Callable[[str], None]) -> None:
    key = demo_key(settings) or "<run `tandem tenants create NAME --scopes predict`>"
    say("")
    say(f"Tandem is up.  gateway: {url}   docs: {url}/docs   metrics: {url}/metrics")
    if dagster_url:
        say(f"Dagster UI (batch scoring, backfills, canary and drift checks): {dagster_url}")
    say(f"demo tenant API key: {key}")
    for name, body in EXAMPLES.items():
        say(f"\n# {name}\ncurl -s {url}/v1/workflows/{name}/run -H 'Authorization: Bearer {key}' "
            f"-H 'Content-Type: application/json' -d '{json.dumps(body)}'")
    say("\nPress Ctrl-C to stop every process.")


def _handle_stop_signals() -> None:
    """SIGINT and SIGTERM stop the platform, even when started with SIGINT ignored (e.g. `cmd &`).

    Children inherit the default dispositions, so each of them reacts to the SIGINT we send.
    """

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, on_term)


def stop_children(children: list[Child], say: Callable[[str], None] = print, grace_s: float = 30) -> bool:
    """SIGINT each child, wait, then SIGKILL its process group; True when all stopped on their own."""
    clean = True
    for child in children:
        if child.proc is not None and child.proc.poll() is None:
            child.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for child in children:
        if child.proc is None:
            continue
        try:
            child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop in {grace_s:.0f} s; killing it")
            clean = False
            child.proc.kill()
            child.proc.wait()
        child.kill_group()  # stragglers of the group (a worker that ignored its parent's exit)
    return clean
