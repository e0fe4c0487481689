"""`tandem up` supervises its children: kill -9 a model server under load, and the platform heals.

Driven as a user runs it: `python -m orchestration.cli up` (Dagster left out to keep it quick),
HTTP through the gateway, signals by PID.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from models.settings import TandemSettings
from orchestration.bootstrap import demo_key
from tests.integration.conftest import ROOT, base_env, free_port, tiny_platform_home

pytestmark = pytest.mark.e2e


def _children(pid: int) -> set[int]:
    """Every descendant of `pid` (from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, pp in parents.items() if pp in frontier} - found
        found |= frontier
    return found


def _direct_children(pid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.add(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if Path(f"/proc/{p}").exists()
            and "Z" not in Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]}


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _free_block(n: int) -> int:
    """A port P with P .. P+n-1 all free (tandem up gives the model servers the ports after the gateway's)."""
    import socket

    for _ in range(50):
        base = free_port()
        try:
            socks = []
            for p in range(base, base + n):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no block of free ports")


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL `proc` and everything it started (collected first: once it dies, they are re-parented)."""
    descendants = _children(proc.pid)
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    for pid in _alive(descendants):
        try:
            os.killpg(pid, signal.SIGKILL)  # each child leads its own process group
        except (ProcessLookupError, PermissionError):
            pass
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tiny_platform_home(tmp_path)


def test_kill_9_of_a_model_server_is_healed_by_tandem_up_and_ctrl_c_stops_everything_cleanly(home: Path):
    port = _free_block(5)
    log = (home / "up.log").open("wb")
    up = subprocess.Popen([sys.executable, "-m", "orchestration.cli", "up", "--port", str(port),
                           "--dagster-port", "0"], cwd=ROOT, env=base_env(home), stdout=log,
                          stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {demo_key(TandemSettings(home=home))}", "X-Deadline-Ms": "2000"}
    body = {"input": {"text": "The striker scored twice."}}
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert up.poll() is None, (home / "up.log").read_text()[-3000:]
            if "Press Ctrl-C to stop every process" in (home / "up.log").read_text():
                break  # the launcher saw everything healthy and supervises from now on
            time.sleep(0.3)
        else:
            raise AssertionError("tandem up never became ready:\n" + (home / "up.log").read_text()[-3000:])
        assert httpx.post(f"{url}/v1/workflows/classify/run", json=body, headers=headers).status_code == 200

        server_url = json.loads((home / "deployments.json").read_text())["classifier"]
        server_port = server_url.rsplit(":", 1)[1]
        server = next(p for p in _direct_children(up.pid)
                      if "online.servers" in _cmdline(p) and f"--port {server_port}" in _cmdline(p)
                      and "classifier" in _cmdline(p))
        workers = _children(server)
        os.kill(server, signal.SIGKILL)

        statuses, slowest, healed = [], 0.0, False
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < 90 and not healed:
            # Healed: the launcher saw the new server healthy and a request after that got its answer.
            healed = "model server classifier healthy again" in (home / "up.log").read_text()
            started = time.monotonic()
            fresh = {"input": {"text": f"The striker scored {len(statuses)} times."}}  # never a cache hit
            r = httpx.post(f"{url}/v1/workflows/classify/run", json=fresh, headers=headers, timeout=10)
            slowest = max(slowest, time.monotonic() - started)
            statuses.append(r.status_code)
            assert r.status_code in (200, 503, 504), r.text
            if r.status_code != 200:
                assert r.headers["content-type"].startswith("application/problem+json")
            healed = healed and r.status_code == 200
            time.sleep(0.05)
        assert healed, f"never healed; statuses {statuses}\n" + (home / "up.log").read_text()[-3000:]
        assert slowest < 2.0 + 1.0, f"a request hung past its 2 s deadline: {slowest:.1f} s"
        assert not _alive(workers), f"orphans of the killed server: {_alive(workers)}"
        assert up.poll() is None, "tandem up stopped instead of restarting the server"
        assert "model server classifier exited with code -9; restarting it" in (home / "up.log").read_text()

        descendants = _children(up.pid)
        up.send_signal(signal.SIGINT)
        assert up.wait(timeout=60) == 0, (home / "up.log").read_text()[-3000:]
        time.sleep(0.5)
        assert not _alive(descendants), f"left running: {[_cmdline(p) for p in _alive(descendants)]}"
    finally:
        kill_tree(up)
