"""The serving cases against other ways of serving the same model: a peer LitServe app and a naive app.

    peer  gateway (default embedder version) ÷ a plain LitServe app encoding with sentence-transformers in
          `predict` (torch fp32, max_batch_size 32, 5 ms window), 64 clients: throughput, and p99 beside it
    lone  p50 at 1 client: gateway ÷ a naive FastAPI app calling torch fp32 MiniLM per request; also the
          gateway ÷ the naive app on the gateway's own default version (what the platform itself costs)
"""

from __future__ import annotations

from bench._lab import Lab
from bench._report import CaseResult, median, new_result, paired_ratio
from bench.online import _p, _pcts, _throughputs

PEER_CLIENTS = 64


def peer(lab: Lab) -> CaseResult:
    res = new_result("peer")
    procs = lab.need("main", "server-embedder", "gateway", "peer-app")
    # The gateway side runs with the peer app stopped: an idle LitServe app polls its queues at ~0.19
    # cores, which the gateway would otherwise pay. The peer side runs beside Tandem's idle processes
    # (~0.03-0.05 cores): conservative for the gateway.
    tandem, plain = _throughputs(lab, res, PEER_CLIENTS, freeze_b=True,
                                 tandem=lab.endpoint("main", procs["gateway"], "embedder"),
                                 peer=lab.endpoint("main", procs["peer-app"], "server"))
    p99 = paired_ratio(_p(tandem, "lat_p99_ms"), _p(plain, "lat_p99_ms"))
    res.raw |= {"p99_ratio": p99, "clients": PEER_CLIENTS, "gateway_version": lab.home("main").default_version("embedder"),
                "ratio_is": "throughput ratio; the gateway's p99 must also be lower (p99_ratio < 1)"}
    res.summary += (f" @{PEER_CLIENTS}; p99 {median(_p(tandem, 'lat_p99_ms')):.0f} vs "
                    f"{median(_p(plain, 'lat_p99_ms')):.0f} ms (ratio {p99:.2f})")
    if p99 >= 1.0:
        res.notes.append(f"the gateway's p99 is not lower than the peer's (ratio {p99:.2f})")
    return res


def lone(lab: Lab) -> CaseResult:
    res = new_result("lone")
    procs = lab.need("main", "server-embedder", "gateway", "naive-app", "naive-app-default")
    home = lab.home("main")
    eps = [lab.endpoint("main", procs["gateway"], "embedder"), lab.endpoint("main", procs["naive-app"], "server"),
           lab.endpoint("main", procs["naive-app-default"], "server")]
    if lab.config.warmup_s:
        for ep in eps:
            lab.rounds([ep], lab.config.warmup_s)
    # One client, one endpoint at a time: phases taking turns (the order reversed every other time), each
    # started once the bench's processes are idle (`rounds` settles first). Calls interleaved across the
    # three processes made each call pay for the threads the previous process left busy-waiting (torch's
    # OpenMP and ONNX Runtime spin after a call unless told not to, as the naive apps are not): the
    # gateway, called right after the naive app on the same version, read 9.6-10.9 ms at p50 that way and
    # 7.4 ms alone (bench.hops), and the naive torch app 14-49 ms from run to run.
    lat: list[list[float]] = [[] for _ in eps]
    errors, cpu, client, other = 0, [], [], []
    phase_s = lab.config.duration_s / 2
    for turn in range(2 * lab.config.reps):
        order = list(range(len(eps)))[:: 1 if turn % 2 == 0 else -1]
        for i in order:
            run = lab.rounds([eps[i]], phase_s)
            lat[i] += [r[0] for r in run["rounds"]]
            errors += run["errors"]
            cpu.append(run["cpu_cores"])
            client.append(run["loadgen_cpu_cores"])
            other.append(run["other_cpu_cores"])
    g, n, d = lat
    gp, np_, dp = _pcts(g), _pcts(n), _pcts(d)
    res.ratio = gp["p50"] / np_["p50"]
    same = gp["p50"] / dp["p50"]
    run = {"errors": errors, "loadgen_cpu_cores": max(client), "cpu_cores": max(cpu), "other_cpu_cores": max(other)}
    res.raw = {**run, "calls": {"gateway": len(g), "naive_torch_fp32": len(n), "naive_default": len(d)},
               "phases_per_endpoint": 2 * lab.config.reps, "phase_s": phase_s,
               "gateway_ms": gp, "naive_torch_fp32_ms": np_, "naive_default_ms": dp,
               "ratio_vs_naive_same_version": same, "gateway_version": home.default_version("embedder"),
               "naive_version": home.torch_fp32_version(),
               "ratio_is": "gateway p50 ÷ naive torch fp32 p50, 1 client (each endpoint in its own phases, "
                           "taking turns)"}
    res.summary = (f"p50 gateway {gp['p50']:.2f} ms vs naive torch fp32 {np_['p50']:.2f} ms; vs naive on the "
                   f"same version ({res.raw['gateway_version']}) {dp['p50']:.2f} ms (ratio {same:.2f}); "
                   f"{len(g)}/{len(n)}/{len(d)} calls")
    if run["errors"]:
        res.notes.append(f"{run['errors']} calls failed")
    _check_other(res, run)
    return res


def _check_other(res: CaseResult, run: dict) -> None:
    if run["other_cpu_cores"] > 0.25:
        res.notes.append(f"other processes on the machine used {run['other_cpu_cores']:.2f} cores meanwhile")
