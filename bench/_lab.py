"""What every case shares in one run: settings, texts, the load generator, homes and server processes.

Server processes are started on first use (all that a case needs at once, so startups overlap)
and kept for the following cases; `release` stops those of a home no later case needs.
Homes: `tiny` (deterministic tiny models: the cheap model that isolates overhead) and `main`
(the real MiniLM reference models; in `--quick` mode the tiny home again).
"""

from __future__ import annotations

import http.client
import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench._homes import Home, real_home, tiny_home
from bench._load import LoadGenerator, LoadResult
from bench._procs import Group, Proc, base_env, gateway, model_server, naive_app, peer_app
from bench._texts import TextPool


@dataclass(frozen=True)
class RunConfig:
    """Durations and repetitions: full runs (default) or `--quick` (seconds, tiny models)."""

    quick: bool
    reps: int
    duration_s: float  # a throughput or latency measurement
    warmup_s: float
    work_dir: Path
    fresh: bool = False
    batch_docs: int = 20_000
    batch_reps: int = 1  # Dagster runs over the whole partition (each takes minutes with real models)
    sql_rows: int = 10_000_000

    @classmethod
    def make(cls, *, quick: bool, work_dir: Path, reps: int | None = None, duration_s: float | None = None,
             fresh: bool = False, batch_docs: int | None = None, sql_rows: int | None = None) -> RunConfig:
        return cls(
            quick=quick, reps=reps or (2 if quick else 3), duration_s=duration_s or (1.0 if quick else 6.0),
            warmup_s=0.0 if quick else 2.0, work_dir=work_dir, fresh=fresh,
            batch_docs=batch_docs or (300 if quick else 20_000), batch_reps=2 if quick else 1,
            sql_rows=sql_rows or (200_000 if quick else 10_000_000),
        )


# Upper bounds of requests per second, to size each run's list of distinct bodies (a run that
# still runs out reports `repeated_bodies`).
_MAX_RPS = {"tiny": 4000, "main": 800}

Body = Callable[[str], dict]


def _served(home: Home, model: str) -> str:
    """Version "1" (direct bodies and in-process baselines name it) and the default version (the gateway's)."""
    return ",".join(dict.fromkeys(("1", home.default_version(model))))


def model_body(text: str) -> dict:
    """A model server's `POST /predict` body."""
    return {"version": "1", "inputs": [{"text": text}]}


def batched_model_body(text: str) -> dict:
    """A model server's body marked as batched by its caller (as the gateway's coalescer sends it)."""
    return {"version": "1", "inputs": [{"text": text}], "batched": True}


def predict_body(text: str) -> dict:
    """The gateway's `POST /v1/models/{name}/predict` body."""
    return {"instances": [{"text": text}]}


def workflow_body(text: str) -> dict:
    """The gateway's `POST /v1/workflows/{name}/run` body for a text workflow."""
    return {"input": {"text": text}}


@dataclass(frozen=True)
class Endpoint:
    """Where a load run posts: a started process, a path, a body shape, and the key if it is the gateway."""

    proc: Proc
    path: str
    body: Body
    key: str | None = None
    max_rps: int = 4000


class Lab:
    """Shared state of one bench run; see the module docstring."""

    def __init__(self, config: RunConfig, say: Callable[[str], None] = print, *, force_python_load: bool = False):
        self.config = config
        self.say = say
        self.texts = TextPool(seed=int(time.time()) % 10_000)
        self.load = LoadGenerator(config.work_dir / "load", force_python=force_python_load, say=say)
        self._homes: dict[str, Home] = {}
        self._groups: dict[str, Group] = {}
        self._ops: dict[tuple[str, str, str], object] = {}

    # --- homes and processes ----------------------------------------------------------------

    def home(self, kind: str) -> Home:
        """`tiny` or `main` (real models unless --quick); built on first use."""
        kind = "tiny" if self.config.quick else kind
        if kind not in self._homes:
            if kind == "tiny":
                self._homes[kind] = tiny_home(self.config.work_dir / "home-tiny")
            else:
                self._homes[kind] = real_home(self.config.work_dir / "home-real", fresh=self.config.fresh,
                                              say=self.say)
        return self._homes[kind]

    def need(self, kind: str, *names: str) -> dict[str, Proc]:
        """The named processes of home `kind`, starting the missing ones (servers first, then the rest)."""
        kind = "tiny" if self.config.quick else kind
        home = self.home(kind)
        group = self._groups.setdefault(kind, Group(self.config.work_dir / "logs" / kind))
        missing = [n for n in names if n not in group.procs]
        servers = [n for n in missing if n.startswith("server-")]
        if "gateway" in " ".join(missing):  # a gateway needs both model servers; start only those not running
            servers = sorted({*servers, *(n for n in ("server-embedder", "server-classifier") if n not in group.procs)})
        if servers:
            self.say(f"  starting {', '.join(servers)} ({'real' if home.real else 'tiny'} models)")
            group.start(*(self._spec(home, n) for n in servers))
            urls = {n.removeprefix("server-"): group[n].url for n in ("server-embedder", "server-classifier")
                    if n in group.procs}
            (home.path / "deployments.json").write_text(json.dumps(urls))
        rest = [n for n in missing if n not in group.procs]
        if rest:
            self.say(f"  starting {', '.join(rest)}")
            group.start(*(self._spec(home, n) for n in rest))
        return {n: group[n] for n in names}

    def stop_except(self, kind: str, keep: set[str]) -> None:
        """Stop the processes of home `kind` whose names are not in `keep`."""
        kind = "tiny" if self.config.quick else kind
        group = self._groups.get(kind)
        if group is not None:
            group.stop_only([n for n in group.procs if n not in keep])

    def release(self, keep: set[str]) -> None:
        """Stop the processes of every home not in `keep`."""
        keep = {"tiny"} if self.config.quick and keep else keep
        for kind in [k for k in self._groups if k not in keep]:
            self._groups.pop(kind).stop()

    def close(self) -> None:
        self.release(set())

    def cpu_snapshot(self) -> dict[str, float]:
        return {f"{kind}/{name}": cpu for kind, g in self._groups.items() for name, cpu in g.cpu_seconds().items()}

    def _spec(self, home: Home, name: str) -> Proc:
        env = base_env(home.path)
        if name == "server-embedder":
            return model_server(env, home.path, "embedder", versions=_served(home, "embedder"))
        if name == "server-classifier":
            return model_server(env, home.path, "classifier", versions=_served(home, "classifier"))
        if name == "server-embedder-unbatched":
            return model_server(env, home.path, "embedder", name=name, max_batch_size=1)
        if name == "gateway":
            return gateway(env, home.path)
        if name == "gateway-nolog":
            return gateway(env, home.path, name=name, log_enabled="false", record_enabled="false")
        if name == "naive-app":  # MiniLM in torch fp32
            return naive_app(env, home.artifact("embedder", home.torch_fp32_version()), threads=usable_cores())
        if name == "naive-app-default":  # the version the gateway serves by default
            return naive_app(env, home.artifact("embedder", home.default_version("embedder")),
                             threads=usable_cores(), name=name)
        if name == "peer-app":
            return peer_app(env, threads=usable_cores())
        raise ValueError(f"unknown bench process {name!r}")

    # --- measuring ----------------------------------------------------------------------------

    def endpoint(self, kind: str, proc: Proc, route: str) -> Endpoint:
        """`route`: "server" (a model server's /predict; "server-batched" marks bodies batched), "workflow:NAME", or a model name (gateway route)."""
        home = self.home(kind)
        rps = _MAX_RPS["main" if home.real else "tiny"]
        if route == "server":
            return Endpoint(proc, "/predict", model_body, None, rps)
        if route == "server-batched":
            return Endpoint(proc, "/predict", batched_model_body, None, rps)
        if route.startswith("workflow:"):
            return Endpoint(proc, f"/v1/workflows/{route.split(':', 1)[1]}/run", workflow_body, home.key, rps)
        return Endpoint(proc, f"/v1/models/{route}/predict", predict_body, home.key, rps)

    def bodies(self, ep: Endpoint, n: int) -> list[bytes]:
        return [orjson.dumps(ep.body(t)) for t in self.texts.take(n)]

    def hit(self, ep: Endpoint, connections: int, duration_s: float | None = None,
            bodies: list[bytes] | None = None, *, delay_ms: float = 0.0, count_statuses: bool = False,
            settle: bool = True) -> dict:
        """One load run on `ep` with fresh bodies (unless given); the LoadResult plus CPU per process.

        `delay_ms` paces each connection, `count_statuses` counts answers by status (see
        `LoadGenerator.run`); `settle=False` starts at once (e.g. while another load runs)."""
        duration_s = duration_s or self.config.duration_s
        if bodies is None:
            bodies = self.bodies(ep, int(ep.max_rps * duration_s * 1.2) + 100)
        if settle:
            self.settle()
        before, busy0, t0 = self.cpu_snapshot(), machine_busy(), time.perf_counter()
        res: LoadResult = self.load.run(ep.proc.url, ep.path, bodies, connections=connections,
                                        duration_s=duration_s, key=ep.key, delay_ms=delay_ms,
                                        count_statuses=count_statuses)
        wall, after, busy1 = time.perf_counter() - t0, self.cpu_snapshot(), machine_busy()
        cpu = {k: round((after[k] - before.get(k, 0.0)) / wall, 3) for k in after if after[k] - before.get(k, 0) > 0}
        ours = sum(cpu.values()) + res.loadgen_cpu_cores
        return {**res.as_dict(), "cpu_cores": cpu,
                "other_cpu_cores": round(max(0.0, (busy1 - busy0) / wall - ours), 3)}

    def settle(self, idle_cores: float = 0.05, timeout_s: float = 30.0) -> None:
        """Wait until the bench's processes are idle: a closed connection does not cancel a request
        a server has queued, so the previous run's backlog must not eat into the next one."""
        deadline = time.monotonic() + timeout_s
        last = sum(self.cpu_snapshot().values())
        while time.monotonic() < deadline:
            time.sleep(0.3)
            now = sum(self.cpu_snapshot().values())
            if (now - last) / 0.3 < idle_cores:
                return
            last = now

    def rounds(self, eps: list[Endpoint], duration_s: float) -> dict:
        """One client calling `eps` in turn (a round), each with a fresh text, for `duration_s`: the
        latencies of every round, so each ratio pairs calls made within milliseconds of each other
        (robust to a shared machine's bursts). Plain keep-alive `http.client`; its CPU is reported."""
        self.settle()
        conns = {ep.proc.url: http.client.HTTPConnection(ep.proc.url.removeprefix("http://"), timeout=60)
                 for ep in eps}
        rounds: list[list[float]] = []
        errors = 0
        mine, busy, cpu, t0 = self.cpu_snapshot(), machine_busy(), time.process_time(), time.perf_counter()
        try:
            while time.perf_counter() - t0 < duration_s:
                texts = self.texts.take(len(eps))
                latencies = []
                for ep, text in zip(eps, texts):
                    headers = {"Content-Type": "application/json",
                               **({"Authorization": f"Bearer {ep.key}"} if ep.key else {})}
                    conn = conns[ep.proc.url]
                    started = time.perf_counter()
                    conn.request("POST", ep.path, body=orjson.dumps(ep.body(text)), headers=headers)
                    resp = conn.getresponse()
                    resp.read()
                    latencies.append((time.perf_counter() - started) * 1000)
                    errors += resp.status != 200
                rounds.append(latencies)
        finally:
            for conn in conns.values():
                conn.close()
        wall = time.perf_counter() - t0
        client = (time.process_time() - cpu) / wall
        servers = (sum(self.cpu_snapshot().values()) - sum(mine.values())) / wall
        return {"rounds": rounds, "errors": errors, "loadgen_cpu_cores": round(client, 3),
                "cpu_cores": round(servers, 3),
                "other_cpu_cores": round(max(0.0, (machine_busy() - busy) / wall - client - servers), 3)}

    def warm(self, ep: Endpoint, connections: int) -> None:
        if self.config.warmup_s > 0:
            self.hit(ep, connections, self.config.warmup_s)

    def in_process(self, fn: Callable[[], object]) -> tuple[object, float, float]:
        """Run `fn` here after the servers settle: (its result, wall seconds, CPU cores other processes
        of the machine used meanwhile: the noise a shared machine adds)."""
        self.settle()
        mine, busy, cpu, t0 = self.cpu_snapshot(), machine_busy(), time.process_time(), time.perf_counter()
        value = fn()
        wall = time.perf_counter() - t0
        used = time.process_time() - cpu + sum(self.cpu_snapshot().values()) - sum(mine.values())
        return value, wall, round(max(0.0, (machine_busy() - busy - used) / wall), 3)

    def op(self, kind: str, model: str, version: str = "1"):
        """The model op loaded in this process (raw, in-process baselines), torch on all usable cores."""
        key = (kind, model, version)
        if key not in self._ops:
            import torch

            from models.ops import load_op

            torch.set_num_threads(usable_cores())
            self._ops[key] = load_op(self.home(kind).artifact(model, version))
        return self._ops[key]


def machine_busy() -> float:
    """CPU seconds all processes of the machine have used so far (from /proc/stat; 0.0 elsewhere)."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def alternate(reps: int, *measures: Callable[[], object]) -> list[list]:
    """Run each measurement once per repetition, back to back, reversing the order every other
    repetition (ABBA) so a drift in background load hits both sides alike; results per measure."""
    results: list[list] = [[] for _ in measures]
    for rep in range(reps):
        order = range(len(measures)) if rep % 2 == 0 else reversed(range(len(measures)))
        for i in order:
            results[i].append(measures[i]())
    return results
