"""Server processes the bench starts (model servers, gateways, the naive app) and their CPU time.

Every process is started in its own session and stopped by its own PID (SIGINT first, as the
servers expect; SIGKILL to its own process group only if it ignores that).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
_CLK_TCK = os.sysconf("SC_CLK_TCK")


class BenchError(RuntimeError):
    """A bench process failed to start or a measurement could not run."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def base_env(home: Path, **extra: str) -> dict[str, str]:
    """This process's environment without TANDEM_* settings, pointed at `home`, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TANDEM_")}
    env.update({"TANDEM_HOME": str(home), "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1",
                "TRANSFORMERS_OFFLINE": "1", **extra})
    return env


@dataclass
class Proc:
    """One server process: how to start it and the URL that answers 200 once it is ready."""

    name: str
    args: list[str]
    env: dict[str, str]
    url: str
    health_path: str = "/health"
    proc: subprocess.Popen | None = None
    log: Path | None = None

    def start(self, log_dir: Path) -> Proc:
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log = log_dir / f"{self.name}.log"
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        return self

    def wait_ready(self, timeout_s: float = 240) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited with {self.proc.returncode}: {self._tail()}")
            try:
                if httpx.get(self.url + self.health_path, timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        raise BenchError(f"{self.name} not ready after {timeout_s:.0f} s: {self._tail()}")

    @contextlib.contextmanager
    def frozen(self):
        """SIGSTOP this process and its children for the block (SIGCONT after): an idle server that
        polls its queues (a LitServe app: ~0.19 cores here) then takes nothing from the one measured."""
        pids = _tree(self.proc.pid) if self.proc is not None else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        try:
            yield
        finally:
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)

    def cpu_seconds(self) -> float:
        """CPU time (user + system) of this process and its live descendants so far."""
        return sum(_cpu_of(pid) for pid in _tree(self.proc.pid)) if self.proc else 0.0

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)  # its own session: only what it started
            self.proc.wait()

    def _tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:] if self.log and self.log.exists() else ""


@dataclass
class Group:
    """Processes started together and stopped together (in reverse order)."""

    log_dir: Path
    procs: dict[str, Proc] = field(default_factory=dict)

    def start(self, *procs: Proc) -> None:
        """Start `procs` at once and wait until all are ready (startups overlap)."""
        self.check_not_running(procs)
        for p in procs:
            self.procs[p.name] = p.start(self.log_dir)
        for p in procs:
            p.wait_ready()

    def check_not_running(self, procs: Iterable[Proc]) -> None:
        """Refuse to start a process of a name this group runs: the running one would be forgotten and
        outlive the bench, holding its memory and port."""
        running = [p.name for p in procs if p.name in self.procs]
        if running:
            raise BenchError(f"{', '.join(running)} already running in this group")

    def __getitem__(self, name: str) -> Proc:
        return self.procs[name]

    def cpu_seconds(self) -> dict[str, float]:
        return {name: p.cpu_seconds() for name, p in self.procs.items()}

    def stop(self) -> None:
        self.stop_only(list(self.procs))

    def stop_only(self, names: list[str]) -> None:
        """Stop the named processes (in reverse start order) and forget them."""
        for name in reversed([n for n in self.procs if n in names]):
            self.procs.pop(name).stop()


def model_server(env: dict, home: Path, model: str, *, name: str | None = None, versions: str = "1",
                 max_batch_size: int | None = None, batch_timeout: float | None = None,
                 device: str | None = None) -> Proc:
    port = free_port()
    args = [sys.executable, "-m", "online.servers", "--home", str(home), model, "--versions", versions,
            "--port", str(port), "--log-level", "warning"]
    if device is not None:
        args += ["--device", device]
    if max_batch_size is not None:
        args += ["--max-batch-size", str(max_batch_size)]
    if batch_timeout is not None:
        args += ["--batch-timeout", str(batch_timeout)]
    return Proc(name or f"server-{model}", args, env, f"http://127.0.0.1:{port}")


def gateway(env: dict, home: Path, *, name: str = "gateway", **settings: str) -> Proc:
    port = free_port()
    env = {**env, **{f"TANDEM_GATEWAY_{k.upper()}": v for k, v in settings.items()}}
    return Proc(name, [sys.executable, "-m", "online.gateway", "--home", str(home), "--port", str(port)],
                env, f"http://127.0.0.1:{port}", health_path="/healthz")


def peer_app(env: dict, threads: int) -> Proc:
    port = free_port()
    # Passive OpenMP threads, as Tandem's model servers run: with spinning ones a 2-core box shared with
    # other processes served ~20 req/s, which says more about OpenMP than about LitServe.
    return Proc("peer-app", [sys.executable, "-m", "bench._peer_app", "--port", str(port), "--torch-threads",
                             str(threads)], {**env, "OMP_WAIT_POLICY": "PASSIVE"}, f"http://127.0.0.1:{port}")


def naive_app(env: dict, artifact_dir: Path, threads: int, *, name: str = "naive-app") -> Proc:
    port = free_port()
    return Proc(name, [sys.executable, "-m", "bench._naive_app", "--artifact", str(artifact_dir),
                              "--port", str(port), "--torch-threads", str(threads)],
                env, f"http://127.0.0.1:{port}")


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                children = Path(f"/proc/{p}/task/{task}/children").read_text().split()
                todo.extend(int(c) for c in children)
        except OSError:
            continue
    return pids


def _cpu_of(pid: int) -> float:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime
