"""Shared fixtures: a TANDEM_HOME with tiny registered models, and real server processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Proc:
    """A server process this test session started (stopped by its PID only)."""

    name: str
    args: list[str]
    env: dict
    health: str
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, log_dir: Path) -> Proc:
        self.log = log_dir / f"{self.name}.log"
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=self.log.open("ab"),
                                     stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_healthy(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.health, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} not healthy after {timeout_s} s: {self.log.read_text()[-3000:]}")

    def stop(self, sig: int = signal.SIGINT, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@dataclass
class Cluster:
    home: Path
    env: dict
    procs: dict[str, Proc] = field(default_factory=dict)

    def add(self, proc: Proc) -> Proc:
        self.procs[proc.name] = proc
        return proc

    def stop_all(self) -> None:
        for proc in self.procs.values():
            proc.stop()

    def start_servers_and_gateway(self, servers: dict[str, str], log_dir: Path) -> str:
        """Start a model server per `{model: versions}`, record them in deployments.json, then the gateway.

        Returns the gateway's base URL once everything is healthy.
        """
        procs = [self.add(model_server(self.env, self.home, name, versions)).start(log_dir)
                 for name, versions in servers.items()]
        for proc in procs:
            proc.wait_healthy()
        urls = {name: self.procs[f"server-{name}"].health.removesuffix("/health") for name in servers}
        (self.home / "deployments.json").write_text(json.dumps(urls))
        gw = self.add(gateway(self.env, self.home)).start(log_dir)
        gw.wait_healthy()
        return gw.health.removesuffix("/healthz")


def base_env(home: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update({"TANDEM_HOME": str(home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **extra})
    return env


def tiny_platform_home(home: Path) -> Path:
    """A TANDEM_HOME with the three reference model names registered as tiny models (stable 1) and the demo tenant."""
    from models.settings import TandemSettings
    from models.testing import write_tiny_artifact
    from orchestration.bootstrap import Platform, ensure_demo_tenant

    settings = TandemSettings(home=home)
    reg = Platform.open(settings).registry
    for name, task, kind in [("embedder", "embed", "tiny-embed"), ("classifier", "classify", "tiny-classify"),
                             ("reranker", "rerank", "tiny-rerank")]:
        reg.register(name, task, write_tiny_artifact(home / "src" / name, kind), version="1")
        reg.promote(name, "1", actor="test")
    ensure_demo_tenant(settings)
    return home


def model_server(env: dict, home: Path, name: str, versions: str, port: int | None = None) -> Proc:
    port = port or free_port()
    return Proc(f"server-{name}", [sys.executable, "-m", "online.servers", "--home", str(home), name,
                                   "--versions", versions, "--port", str(port), "--batch-timeout", "0.002",
                                   "--log-level", "warning"],
                env, f"http://127.0.0.1:{port}/health")


def gateway(env: dict, home: Path, port: int | None = None, name: str = "gateway") -> Proc:
    port = port or free_port()
    return Proc(name, [sys.executable, "-m", "online.gateway", "--home", str(home), "--port", str(port)],
                env, f"http://127.0.0.1:{port}/healthz")


@pytest.fixture(scope="session")
def session_tmp(tmp_path_factory) -> Iterator[Path]:
    yield tmp_path_factory.mktemp("tandem")
