"""`tandem up`: one model server per deployed model plus the gateway, as child processes.

Ctrl-C (or SIGTERM) stops every process this launcher started: children run in sessions of
their own, so the terminal's Ctrl-C reaches only the launcher, which sends each child one SIGINT
(the gateway flushes its prediction log), then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from models.settings import TandemSettings
from online.gateway.runtime import DEPLOYMENTS_FILE
from orchestration.bootstrap import Platform, demo_key, init_home

REFERENCE_MODELS = ("embedder", "classifier", "reranker")
EXAMPLES = {
    "classify": {"input": {"text": "The striker scored twice in the final minutes."}},
    "enrich": {"input": {"text": "Shares of the chip maker jumped after strong earnings."}},
    "search": {"input": {"query": "cheap flights to Rome",
                         "documents": ["Budget airline tickets to Italy", "How to treat a sprained ankle",
                                       "Rome hotel deals"]},
               "params": {"top_n": 2}},
}


@dataclass
class Child:
    name: str
    proc: subprocess.Popen
    health_url: str


def run_platform(settings: TandemSettings, *, host: str = "127.0.0.1", port: int = 8000,
                 dagster_port: int | None = 3000, say: Callable[[str], None] = print,
                 block: bool = True) -> list[Child]:
    """Start everything, wait until healthy, print how to call it, then wait for Ctrl-C."""
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
    servers: dict[str, str] = {}
    try:
        deployed = [name for name, m in sorted(models.items()) if m.state.stable]
        for i, name in enumerate(deployed, start=1):
            mport = port + i
            url = f"http://{host}:{mport}"
            say(f"starting model server {name} (versions {', '.join(served_versions(models[name]))}) on {url}")
            versions = served_versions(models[name])
            proc = subprocess.Popen(
                [sys.executable, "-m", "online.servers", "--home", str(settings.home.absolute()), name,
                 "--versions", ",".join(versions), "--host", host, "--port", str(mport)],
                env=env, start_new_session=True)
            children.append(Child(f"model server {name}", proc, f"{url}/health"))
            servers[name] = url
        (settings.home / DEPLOYMENTS_FILE).write_text(json.dumps(servers, indent=2))
        gateway_url = f"http://{host}:{port}"
        say(f"starting gateway on {gateway_url}")
        proc = subprocess.Popen([sys.executable, "-m", "online.gateway", "--home", str(settings.home.absolute()),
                                 "--host", host, "--port", str(port)], env=env, start_new_session=True)
        children.append(Child("gateway", proc, f"{gateway_url}/readyz"))
        dagster_url = _start_dagster(settings, host, dagster_port, children, say) if dagster_port else None
        _wait_healthy(children, say)
        _banner(settings, gateway_url, dagster_url, say)
        if not block:
            return children
        _wait_forever(children, say)
    except BaseException:
        stop_children(children, say)
        raise
    stop_children(children, say)
    return children


def served_versions(summary) -> list[str]:
    """The aliased versions plus the newest one, so a fresh canary needs no server restart."""
    state = summary.state
    wanted = [v for v in (state.stable, state.canary, state.shadow, summary.versions[-1]) if v]
    return list(dict.fromkeys(wanted))


def _wait_healthy(children: list[Child], say: Callable[[str], None], timeout_s: float = 300) -> None:
    deadline = time.monotonic() + timeout_s
    pending = {c.name: c for c in children}
    while pending:
        for name, child in list(pending.items()):
            if child.proc.poll() is not None:
                raise RuntimeError(f"{name} exited with code {child.proc.returncode}; see its log above")
            if not child.health_url:  # no health endpoint: running is all we can check
                del pending[name]
                continue
            try:
                if httpx.get(child.health_url, timeout=2).status_code == 200:
                    say(f"  ✓ {name} healthy")
                    del pending[name]
            except httpx.HTTPError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"not healthy after {timeout_s:.0f} s: {', '.join(pending)}")
        if pending:
            time.sleep(0.5)


def _start_dagster(settings: TandemSettings, host: str, port: int, children: list[Child],
                   say: Callable[[str], None]) -> str:
    """Dagster's webserver and daemon on an instance under TANDEM_HOME (schedules, sensors, backfills)."""
    from orchestration.dagster_home import dagster_commands, dagster_env, prepare_dagster_home

    prepare_dagster_home(settings)
    env = dagster_env(settings)
    commands = dagster_commands(settings, host=host, port=port)
    url = f"http://{host}:{port}"
    say(f"starting Dagster webserver on {url} and the Dagster daemon")
    web = subprocess.Popen(commands["dagster-webserver"], env=env, start_new_session=True,
                           cwd=settings.dagster_home)
    children.append(Child("dagster webserver", web, f"{url}/server_info"))
    daemon = subprocess.Popen(commands["dagster-daemon"], env=env, start_new_session=True,
                              cwd=settings.dagster_home)
    children.append(Child("dagster daemon", daemon, ""))
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


def _wait_forever(children: list[Child], say: Callable[[str], None]) -> None:
    try:
        while True:
            for child in children:
                if child.proc.poll() is not None:
                    say(f"{child.name} exited with code {child.proc.returncode}; stopping the platform")
                    return
            time.sleep(1)
    except KeyboardInterrupt:
        say("stopping ...")


def stop_children(children: list[Child], say: Callable[[str], None] = print, grace_s: float = 15) -> None:
    """SIGINT each child, wait, then SIGKILL whatever is left."""
    for child in children:
        if child.proc.poll() is None:
            child.proc.send_signal(signal.SIGINT)
    deadline = time.monotonic() + grace_s
    for child in children:
        try:
            child.proc.wait(timeout=max(deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            say(f"{child.name} did not stop in {grace_s:.0f} s; killing it")
            child.proc.kill()
            child.proc.wait()
