"""Load generation: `wrk` with a Lua script posting a different body per request, or a fallback.

`wrk` (C, epoll) costs about 1% of a core at these rates, so it does not steal the server's CPU.
It is installed with apt-get when missing and the bench runs as root; otherwise a Python asyncio
generator (`bench._pyload`) takes over. Either way the generator's own CPU time is measured
(`os.wait4` rusage) and reported with every figure, so a load generator that competes with the
server cannot go unnoticed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._procs import BenchError

_LUA = Path(__file__).with_name("wrk_bodies.lua")
_MARK = "BENCH_JSON "


@dataclass(frozen=True)
class LoadResult:
    """What one load run measured: throughput, latency percentiles, errors and the generator's CPU."""

    tool: str
    connections: int
    requests: int
    duration_s: float
    rps: float
    lat_mean_ms: float
    lat_p50_ms: float
    lat_p90_ms: float
    lat_p99_ms: float
    lat_max_ms: float
    errors: int  # non-2xx answers, connect/read/write errors and timeouts
    repeated_bodies: bool  # the body list ran out and started over
    loadgen_cpu_cores: float  # the generator's CPU seconds per wall second
    statuses: dict | None = None  # with count_statuses: answers by status ("200", "429", "other") and
    #                                "429_without_retry_after"

    def as_dict(self) -> dict:
        return asdict(self)


def ensure_wrk(say=print) -> str | None:
    """The path of `wrk`, installing the Debian package when possible; None if unavailable."""
    found = shutil.which("wrk")
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    say("installing wrk (apt-get install -y wrk)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "install", "-y", "-q", "wrk"], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", "wrk"]):
        subprocess.run(cmd, env=env, capture_output=True, timeout=600, check=False)
        if shutil.which("wrk"):
            break
    return shutil.which("wrk")


class LoadGenerator:
    """Runs closed-loop load (N connections, each sending its next request when answered)."""

    def __init__(self, work_dir: Path, *, force_python: bool = False, say=print):
        self.work_dir = work_dir
        self.wrk = None if force_python else ensure_wrk(say)
        self.tool = "wrk" if self.wrk else "python-asyncio"
        if not self.wrk:
            say("wrk is unavailable: using the Python load generator; its CPU share is reported per run")

    def run(self, base_url: str, path: str, bodies: list[bytes], *, connections: int, duration_s: float,
            key: str | None = None, delay_ms: float = 0.0, count_statuses: bool = False) -> LoadResult:
        """POST `bodies` (in order, one per request) to `base_url + path` for `duration_s`.

        `delay_ms`: each connection pauses that long before each request (a paced closed loop);
        `count_statuses`: count the answers by status and 429s lacking Retry-After (`statuses`).
        """
        self.work_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("wb", dir=self.work_dir, suffix=".bodies", delete=False) as f:
            f.write(b"\n".join(bodies) + b"\n")
            bodies_file = f.name
        env = {**os.environ, "BENCH_BODIES": bodies_file, "BENCH_PATH": path, "BENCH_AUTH": key or "",
               "BENCH_DELAY_MS": f"{delay_ms:g}", "BENCH_STATUSES": "1" if count_statuses else ""}
        if self.wrk:
            seconds = max(1, round(duration_s))  # wrk takes whole seconds
            args = [self.wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--timeout", "30s",
                    "-s", str(_LUA), base_url + path]
        else:
            args = [sys.executable, "-m", "bench._pyload", "--url", base_url + path,
                    "--connections", str(connections), "--duration", str(duration_s)]
        try:
            out, cpu_s, wall_s = _run_measured(args, env, timeout_s=duration_s + 120)
        finally:
            os.unlink(bodies_file)
        line = next((ln for ln in out.splitlines() if ln.startswith(_MARK)), None)
        if line is None:
            raise BenchError(f"{self.tool} printed no result: {out[-2000:]}")
        d = json.loads(line[len(_MARK):])
        errors = sum(d[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
        return LoadResult(
            tool=self.tool, connections=connections, requests=d["requests"], duration_s=d["duration_s"],
            rps=d["requests"] / d["duration_s"] if d["duration_s"] else 0.0,
            lat_mean_ms=d["lat_mean_ms"], lat_p50_ms=d["lat_p50_ms"], lat_p90_ms=d["lat_p90_ms"],
            lat_p99_ms=d["lat_p99_ms"], lat_max_ms=d["lat_max_ms"], errors=errors,
            repeated_bodies=d["wraps"] > 0, loadgen_cpu_cores=cpu_s / wall_s if wall_s else 0.0,
            statuses=d.get("statuses") if count_statuses else None,
        )


def _run_measured(args: list[str], env: dict, timeout_s: float) -> tuple[str, float, float]:
    """Run `args` to completion; (stdout+stderr, its CPU seconds, wall seconds)."""
    with tempfile.TemporaryFile("w+") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(args, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = started + timeout_s
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.perf_counter() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        wall = time.perf_counter() - started
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        text = out.read()
    if proc.returncode != 0:
        raise BenchError(f"{args[0]} exited with {proc.returncode}: {text[-2000:]}")
    return text, usage.ru_utime + usage.ru_stime, wall
