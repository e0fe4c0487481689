"""The online cases: each compares two serving set-ups under the same load, back to back.

    serve     gateway on the default embedder version at 64 clients  ÷  raw in-process torch fp32 (batches of 32)
    peer      gateway  ÷  a plain LitServe app serving MiniLM (torch fp32) as LitServe's docs do, 64 clients
    lone      p50 at 1 client: gateway  ÷  a plain FastAPI app calling torch fp32 MiniLM per request
    overhead  latency through the gateway  ÷  direct to the model server (tiny model), 1 and 32 clients
    batching  model server with dynamic batching  ÷  the same server with max_batch_size=1, 32 clients
    naive     Tandem's gateway  ÷  a plain FastAPI app calling the model once per request, 32 clients
    workflow  `enrich` latency  ÷  the sum of its two steps' latencies called one after another
    cache     throughput on repeated inputs  ÷  on fresh inputs, 32 clients
    logging   throughput with the request record and the prediction log on  ÷  both off, 32 clients
    isolation a quiet tenant's p99 while a noisy tenant sends 10x its rate limit  ÷  the quiet tenant alone
              (and, as a control, next to the noisy tenant just under its limit)

Every load run posts distinct 15-25-word texts (except the cache case's repeated side).
"""

from __future__ import annotations

import dataclasses
import threading
import time

import httpx

from bench._homes import tenant_key
from bench._lab import Endpoint, Lab, alternate
from bench._report import CaseResult, median, new_result, paired_ratio
from models.schemas import EmbedIn

_RAW_BATCH = 32  # the model server's default max_batch_size

NEEDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "overhead": ("tiny", ("server-embedder", "gateway")),
    "serve": ("main", ("server-embedder", "gateway")),
    "peer": ("main", ("server-embedder", "gateway", "peer-app")),
    "lone": ("main", ("server-embedder", "gateway", "naive-app", "naive-app-default")),
    "batching": ("main", ("server-embedder", "server-embedder-unbatched")),
    "naive": ("main", ("server-embedder", "gateway", "naive-app")),
    "workflow": ("main", ("server-embedder", "server-classifier", "gateway")),
    "cache": ("main", ("server-embedder", "gateway")),
    "logging": ("main", ("server-embedder", "gateway", "gateway-nolog")),
    "isolation": ("main", ("server-embedder", "gateway")),
}
"""The home and the processes each case uses; a case runs beside those and `SHARED` only."""

SHARED = ("server-embedder", "server-classifier", "gateway")
"""Kept up between the cases of a home: most cases use them, and they cost nothing while idle."""


def _rps(runs: list[dict]) -> list[float]:
    return [r["rps"] for r in runs]


def _p(runs: list[dict], key: str) -> list[float]:
    return [r[key] for r in runs]


def _throughputs(lab: Lab, res: CaseResult, clients: int = 32, *, freeze_b: bool = False,
                 **sides: Endpoint) -> tuple[list[dict], list[dict]]:
    """Throughput of two set-ups (A then B, as named) under the same load, alternating runs: ratio A ÷ B.

    `freeze_b`: A runs while B's process is stopped (SIGSTOP), so A does not pay for B's idle polling
    (B still shares the machine with A's idle processes: the comparison stays conservative for A)."""
    (name_a, a), (name_b, b) = sides.items()
    lab.warm(a, clients)
    lab.warm(b, clients)

    def run_a() -> dict:
        if not freeze_b:
            return lab.hit(a, clients)
        with b.proc.frozen():
            return lab.hit(a, clients)

    runs_a, runs_b = alternate(lab.config.reps, run_a, lambda: lab.hit(b, clients))
    res.ratio = paired_ratio(_rps(runs_a), _rps(runs_b))
    res.raw = {name_a: runs_a, name_b: runs_b}
    res.summary = f"{median(_rps(runs_a)):.0f} vs {median(_rps(runs_b)):.0f} req/s"
    _check(res, **res.raw)
    return runs_a, runs_b


def _check(result: CaseResult, **runs: list[dict]) -> None:
    """Notes for anything that would make a figure misleading: errors, repeated bodies, a busy load generator."""
    for name, rs in runs.items():
        if errors := sum(r["errors"] for r in rs):
            result.notes.append(f"{name}: {errors} failed requests (non-2xx, socket errors or timeouts)")
        if any(r["repeated_bodies"] for r in rs) and name != "repeated":
            result.notes.append(f"{name}: the list of distinct bodies ran out; some inputs repeated")
        worst = max(r["loadgen_cpu_cores"] for r in rs)
        if worst > 0.1:
            result.notes.append(f"{name}: the load generator used up to {worst:.2f} cores")
    result.raw["loadgen"] = {name: max(r["loadgen_cpu_cores"] for r in rs) for name, rs in runs.items()}
    other = max(r["other_cpu_cores"] for rs in runs.values() for r in rs)
    if other > 0.25:
        result.notes.append(f"other processes on the machine used up to {other:.2f} cores during a load run")


def serve(lab: Lab) -> CaseResult:
    """The gateway at 64 clients on the default embedder version ÷ MiniLM in torch fp32, raw, in-process,
    in batches of 32: what the platform serves against what the bare model does on the same cores."""
    res = new_result("serve")
    procs = lab.need("main", "server-embedder", "gateway")
    home = lab.home("main")
    ep = lab.endpoint("main", procs["gateway"], "embedder")
    fp32 = home.torch_fp32_version()
    op = lab.op("main", "embedder", fp32)
    n_raw = 128 if lab.config.quick else 512
    others: list[float] = []

    def raw() -> float:
        inputs = [EmbedIn(text=t) for t in lab.texts.take(n_raw)]
        _, wall, other = lab.in_process(lambda: [op.predict_batch(inputs[i:i + _RAW_BATCH])
                                                 for i in range(0, n_raw, _RAW_BATCH)])
        others.append(other)
        return n_raw / wall

    raw()
    lab.warm(ep, 64)
    raws, c64 = alternate(lab.config.reps, raw, lambda: lab.hit(ep, 64))
    res.ratio = paired_ratio(_rps(c64), raws)
    default = home.default_version("embedder")
    res.raw = {"raw_texts_per_s": raws, "raw_other_cpu_cores": others, "raw_batch_size": _RAW_BATCH,
               "raw_version": fp32, "gateway_version": default, "gateway_c64": c64}
    res.summary = (f"gateway {median(_rps(c64)):.0f} req/s @64 (version {default}) vs raw torch fp32 "
                   f"{median(raws):.0f} texts/s (version {fp32})")
    _check(res, c64=c64)
    return res


def overhead(lab: Lab) -> CaseResult:
    res = new_result("overhead")
    procs = lab.need("tiny", "server-embedder", "gateway")
    direct = lab.endpoint("tiny", procs["server-embedder"], "server")
    via = lab.endpoint("tiny", procs["gateway"], "embedder")
    # The gateway's calls say `"batched": true` (its coalescer batched them), so the server skips its batch
    # window for them. A direct client may say so too: measured alongside, to show what the gateway itself adds.
    direct_batched = lab.endpoint("tiny", procs["server-embedder"], "server-batched")
    # 1 client: rounds of (direct, gateway, direct marked batched), each call right after the other.
    if lab.config.warmup_s:
        lab.rounds([direct, via, direct_batched], lab.config.warmup_s)
    one = lab.rounds([direct, via, direct_batched], lab.config.reps * lab.config.duration_s)
    rounds = one.pop("rounds")
    d1, g1, b1 = ([r[i] for r in rounds] for i in range(3))
    ratios = {"p50_c1": _pcts(g1)["p50"] / _pcts(d1)["p50"], "p99_c1": _pcts(g1)["p99"] / _pcts(d1)["p99"],
              "p50_c1_vs_direct_batched": _pcts(g1)["p50"] / _pcts(b1)["p50"]}
    res.raw = {"c1": {**one, "direct_ms": _pcts(d1), "gateway_ms": _pcts(g1), "direct_batched_ms": _pcts(b1),
                      "gateway_added_p50_ms_vs_direct_batched": _pcts(g1)["p50"] - _pcts(b1)["p50"],
                      "rounds": len(d1)}}
    # 32 clients: wrk runs, alternating.
    lab.warm(direct, 32)
    lab.warm(via, 32)
    d, g = alternate(lab.config.reps, lambda: lab.hit(direct, 32), lambda: lab.hit(via, 32))
    for q in ("p50", "p99"):
        ratios[f"{q}_c32"] = paired_ratio(_p(g, f"lat_{q}_ms"), _p(d, f"lat_{q}_ms"))
    res.raw |= {"direct_c32": d, "gateway_c32": g}
    _check(res, direct_c32=d, gateway_c32=g)
    if one["other_cpu_cores"] > 0.25:
        res.notes.append(f"other processes on the machine used {one['other_cpu_cores']:.2f} cores during the 1-client rounds")
    res.ratio = max(ratios["p50_c1"], ratios["p50_c32"])
    res.raw |= {"ratios": ratios, "ratio_is": "the higher of the p50 ratios at 1 and 32 clients"}
    res.summary = (f"@1: p50 {_pcts(d1)['p50']:.2f}→{_pcts(g1)['p50']:.2f} ms, p99 {_pcts(d1)['p99']:.2f}→"
                   f"{_pcts(g1)['p99']:.2f} ms; @32: p50 {median(_p(d, 'lat_p50_ms')):.1f}→"
                   f"{median(_p(g, 'lat_p50_ms')):.1f} ms, p99 {median(_p(d, 'lat_p99_ms')):.0f}→"
                   f"{median(_p(g, 'lat_p99_ms')):.0f} ms (p50 ratios {ratios['p50_c1']:.2f}, {ratios['p50_c32']:.2f}); "
                   f"@1 vs a direct call marked batched: {_pcts(b1)['p50']:.2f} ms, "
                   f"ratio {ratios['p50_c1_vs_direct_batched']:.2f}")
    return res


def batching(lab: Lab) -> CaseResult:
    res = new_result("batching")
    procs = lab.need("main", "server-embedder", "server-embedder-unbatched")
    _throughputs(lab, res, batched=lab.endpoint("main", procs["server-embedder"], "server"),
                 unbatched=lab.endpoint("main", procs["server-embedder-unbatched"], "server"))
    return res


def naive(lab: Lab) -> CaseResult:
    res = new_result("naive")
    procs = lab.need("main", "server-embedder", "gateway", "naive-app")
    t, p = _throughputs(lab, res, tandem=lab.endpoint("main", procs["gateway"], "embedder"),
                        naive=lab.endpoint("main", procs["naive-app"], "server"))
    res.summary += f"; p99 {median(_p(t, 'lat_p99_ms')):.0f} vs {median(_p(p, 'lat_p99_ms')):.0f} ms"
    return res


def workflow(lab: Lab) -> CaseResult:
    res = new_result("workflow")
    procs = lab.need("main", "server-embedder", "server-classifier", "gateway")
    gw = procs["gateway"]
    eps = [lab.endpoint("main", gw, "workflow:enrich"), lab.endpoint("main", gw, "embedder"),
           lab.endpoint("main", gw, "classifier")]
    if lab.config.warmup_s:
        lab.rounds(eps, lab.config.warmup_s)
    # One client, round after round: enrich(a), then embed(b) and classify(c) one after another,
    # three different texts so nothing is cached; each round is one paired measurement.
    run = lab.rounds(eps, lab.config.reps * lab.config.duration_s)
    rounds = run.pop("rounds")
    enrich, embed, classify = [r[0] for r in rounds], [r[1] for r in rounds], [r[2] for r in rounds]
    seq = [b + c for b, c in zip(embed, classify)]
    res.ratio = median([a / s for a, s in zip(enrich, seq)])
    res.raw = {"rounds": len(rounds), **run, "enrich_ms": _pcts(enrich), "embed_ms": _pcts(embed),
               "classify_ms": _pcts(classify), "sequential_ms": _pcts(seq),
               "ratio_of_p50s": median(enrich) / median(seq), "ratio_is": "median over rounds of enrich / (embed + classify)"}
    res.summary = (f"enrich p50 {median(enrich):.1f} ms vs embed {median(embed):.1f} + classify "
                   f"{median(classify):.1f} ms ({len(rounds)} rounds)")
    if run["errors"]:
        res.notes.append(f"{run['errors']} calls failed")
    if run["other_cpu_cores"] > 0.25:
        res.notes.append(f"other processes on the machine used {run['other_cpu_cores']:.2f} cores meanwhile")
    return res


def _pcts(ms: list[float]) -> dict:
    ordered = sorted(ms)
    return {"p50": median(ordered), "p90": ordered[int(0.9 * (len(ordered) - 1))],
            "p99": ordered[int(0.99 * (len(ordered) - 1))], "mean": sum(ordered) / len(ordered)}


def cache(lab: Lab) -> CaseResult:
    res = new_result("cache")
    procs = lab.need("main", "server-embedder", "gateway")
    ep = lab.endpoint("main", procs["gateway"], "embedder")
    repeated_bodies = lab.bodies(ep, 64)
    lab.hit(ep, 8, max(lab.config.warmup_s, 1.0), bodies=repeated_bodies)  # caches the repeated inputs
    lab.warm(ep, 32)
    hot, fresh = alternate(lab.config.reps, lambda: lab.hit(ep, 32, bodies=repeated_bodies), lambda: lab.hit(ep, 32))
    res.ratio = paired_ratio(_rps(hot), _rps(fresh))
    res.raw = {"repeated": hot, "fresh": fresh, "distinct_repeated_inputs": len(repeated_bodies)}
    res.summary = f"{median(_rps(hot)):.0f} vs {median(_rps(fresh)):.0f} req/s"
    _check(res, repeated=hot, fresh=fresh)
    return res


def logging(lab: Lab) -> CaseResult:
    res = new_result("logging")
    procs = lab.need("main", "server-embedder", "gateway", "gateway-nolog")
    _throughputs(lab, res, log_on=lab.endpoint("main", procs["gateway"], "embedder"),
                 log_off=lab.endpoint("main", procs["gateway-nolog"], "embedder"))
    return res


# The isolation case: both tenants are paced closed loops (each connection pauses before each request).
NOISY_TENANT, NOISY_RATE, NOISY_BURST = "bench-noisy", 10.0, 10  # its limit: 10 requests/s
NOISY_CONNECTIONS, NOISY_DELAY_MS = 6, 50.0  # ~6 / (50 ms + a fast 429) ≈ 100 requests/s offered: ~10x its rate
# The control: the same tenant offering about what it is let through at 10x (its rate plus its burst
# over the run, ~11/s): 2 / (140 ms + ~45 ms) ≈ 11 requests/s.
AT_LIMIT_CONNECTIONS, AT_LIMIT_DELAY_MS = 2, 140.0
# The quiet tenant (the bench tenant, no limit): ~40-60 requests/s, a third of what MiniLM serves on
# a quiet 2-core box (more than half of it when other processes take a core).
QUIET_CONNECTIONS, QUIET_DELAY_MS = 4, 50.0


def isolation(lab: Lab) -> CaseResult:
    """The quiet tenant's latency alone and with the noisy tenant at ~10x its rate at the same time
    (the ratio), plus a control: with the noisy tenant just under its limit, so what the excess
    itself costs (its 429s) is told apart from what the noisy tenant's admitted requests cost."""
    res = new_result("isolation")
    procs = lab.need("main", "server-embedder", "gateway")
    quiet = lab.endpoint("main", procs["gateway"], "embedder")
    noisy = dataclasses.replace(quiet, key=tenant_key(lab.home("main"), NOISY_TENANT, rate_per_s=NOISY_RATE,
                                                      burst=NOISY_BURST))
    _wait_for_key(noisy)
    seconds = max(1, round(lab.config.duration_s))
    noisy_runs: list[dict] = []
    at_limit_runs: list[dict] = []

    def alone() -> dict:
        return lab.hit(quiet, QUIET_CONNECTIONS, delay_ms=QUIET_DELAY_MS, count_statuses=True)

    def next_to(connections: int, delay_ms: float, runs: list[dict]) -> dict:
        # The noise starts a second early (its burst is spent by then) and ends a second after the quiet run.
        lab.settle()
        noise: dict = {}
        thread = threading.Thread(target=lambda: noise.update(lab.hit(
            noisy, connections, seconds + 2, delay_ms=delay_ms, count_statuses=True, settle=False)))
        thread.start()
        time.sleep(1.0)
        try:
            return lab.hit(quiet, QUIET_CONNECTIONS, delay_ms=QUIET_DELAY_MS, count_statuses=True, settle=False)
        finally:
            thread.join()
            runs.append(noise)

    if lab.config.warmup_s:
        lab.hit(quiet, QUIET_CONNECTIONS, lab.config.warmup_s, delay_ms=QUIET_DELAY_MS)
    a, n, c = alternate(lab.config.reps, alone, lambda: next_to(NOISY_CONNECTIONS, NOISY_DELAY_MS, noisy_runs),
                        lambda: next_to(AT_LIMIT_CONNECTIONS, AT_LIMIT_DELAY_MS, at_limit_runs))
    p99_a, p99_n, p99_c = _p(a, "lat_p99_ms"), _p(n, "lat_p99_ms"), _p(c, "lat_p99_ms")
    res.ratio = paired_ratio(p99_n, p99_a)
    offered = [r["rps"] / NOISY_RATE for r in noisy_runs]

    def statuses(runs: list[dict]) -> dict:
        return {k: sum(r["statuses"][k] for r in runs) for k in runs[0]["statuses"]}

    noisy_status, quiet_status = statuses(noisy_runs), statuses(a + n + c)
    admitted = [r["statuses"]["200"] / r["duration_s"] for r in noisy_runs]
    res.raw = {
        "quiet_alone": a, "quiet_with_noise": n, "quiet_with_noisy_at_limit": c,
        "noisy": noisy_runs, "noisy_at_limit": at_limit_runs,
        "ratios_p99": [x / y for x, y in zip(p99_n, p99_a)],
        "ratio_p50": paired_ratio(_p(n, "lat_p50_ms"), _p(a, "lat_p50_ms")),
        "ratio_p99_at_limit_vs_alone": paired_ratio(p99_c, p99_a),
        "ratio_p99_noise_vs_at_limit": paired_ratio(p99_n, p99_c),
        "ratio_p50_noise_vs_at_limit": paired_ratio(_p(n, "lat_p50_ms"), _p(c, "lat_p50_ms")),
        "noisy_limit": {"rate_per_s": NOISY_RATE, "burst": NOISY_BURST},
        "noisy_offered_x_rate": offered, "noisy_admitted_per_s": admitted,
        "noisy_statuses": noisy_status, "noisy_at_limit_statuses": statuses(at_limit_runs),
        "quiet_statuses": quiet_status,
        "load": {"quiet": {"connections": QUIET_CONNECTIONS, "delay_ms": QUIET_DELAY_MS},
                 "noisy": {"connections": NOISY_CONNECTIONS, "delay_ms": NOISY_DELAY_MS},
                 "noisy_at_limit": {"connections": AT_LIMIT_CONNECTIONS, "delay_ms": AT_LIMIT_DELAY_MS}},
        "ratio_is": "median over repetitions of quiet p99 with the noisy tenant at ~10x its rate ÷ quiet p99 alone",
    }
    res.summary = (f"quiet p99 {median(p99_a):.0f} ms alone → {median(p99_n):.0f} ms with noise (p50 "
                   f"{median(_p(a, 'lat_p50_ms')):.0f} → {median(_p(n, 'lat_p50_ms')):.0f}) at "
                   f"{median(_rps(a)):.0f} req/s; noisy offered {median([r['rps'] for r in noisy_runs]):.0f} req/s "
                   f"({median(offered):.1f}x its {NOISY_RATE:g}/s), admitted {median(admitted):.1f}/s, "
                   f"{noisy_status['429']} × 429; quiet p99 with the noisy tenant just under its limit "
                   f"{median(p99_c):.0f} ms (noise ÷ that: {res.raw['ratio_p99_noise_vs_at_limit']:.2f}); "
                   f"{quiet_status['429']} quiet 429s")
    _check(res, quiet_alone=a, quiet_with_noise=n, quiet_with_noisy_at_limit=c)
    if quiet_status["429"] or quiet_status["other"]:
        res.notes.append(f"the quiet tenant got {quiet_status['429']} × 429 and {quiet_status['other']} other non-200s")
    if noisy_status["other"] or noisy_status["429_without_retry_after"]:
        res.notes.append(f"the noisy tenant got {noisy_status['other']} answers neither 200 nor 429 and "
                         f"{noisy_status['429_without_retry_after']} 429s without Retry-After")
    if median(offered) < 8:
        res.notes.append(f"the noisy tenant offered only {median(offered):.1f}x its rate")
    return res


def _wait_for_key(ep: Endpoint, timeout_s: float = 15.0) -> None:
    """Until the gateway knows a key created just now (it reloads the tenant file within seconds)."""
    deadline = time.monotonic() + timeout_s
    while True:
        r = httpx.post(ep.proc.url + ep.path, json=ep.body("a key check"), timeout=10,
                       headers={"Authorization": f"Bearer {ep.key}"})
        if r.status_code != 401 or time.monotonic() > deadline:
            return
        time.sleep(0.3)
