"""A real `redis-server` for tests: a free port, a temp dir, no persistence, stopped by its PID."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def redis_binary() -> str:
    """The redis-server path; installs the Debian package when missing and we may (root + apt-get),
    as `make test` does; skips the test, saying why, only when that is impossible."""
    found = shutil.which("redis-server")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "redis-server"],
                       env=env, capture_output=True, timeout=600)
        found = shutil.which("redis-server")
    if found is None:
        pytest.skip("redis-server is not installed and cannot be installed here (not root or no apt-get); "
                    "`make redis-server` installs it")
    return found


@dataclass
class RedisServer:
    """One redis-server process this test started."""

    port: int
    dir: Path
    proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [redis_binary(), "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=(self.dir / "redis.log").open("ab"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited: {(self.dir / 'redis.log').read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return self
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"redis-server did not answer on port {self.port} within {timeout_s} s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_redis(tmp_dir: Path, port: int | None = None) -> RedisServer:
    return RedisServer(port or free_port(), tmp_dir).start()


async def fresh_replica_states(url: str, n: int = 2, **kwargs):
    """`n` gateways' shared state on the Redis at `url`, emptied first; close each when done."""
    import redis.asyncio as aioredis
    from prometheus_client import CollectorRegistry

    from online.gateway.state import open_state

    admin = aioredis.Redis.from_url(url)
    await admin.flushall()
    await admin.aclose()
    return [open_state(url, registry=CollectorRegistry(), **kwargs) for _ in range(n)]
