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
        lab.rounds(eps, lab.config.warmup_s)
    # One client, round after round: gateway, naive (torch fp32), naive (default version), each a fresh text.
    run = lab.rounds(eps, lab.config.reps * lab.config.duration_s)
    rounds = run.pop("rounds")
    g, n, d = ([r[i] for r in rounds] for i in range(3))
    gp, np_, dp = _pcts(g), _pcts(n), _pcts(d)
    res.ratio = gp["p50"] / np_["p50"]
    same = gp["p50"] / dp["p50"]
    res.raw = {**run, "rounds": len(rounds), "gateway_ms": gp, "naive_torch_fp32_ms": np_, "naive_default_ms": dp,
               "ratio_vs_naive_same_version": same, "gateway_version": home.default_version("embedder"),
               "naive_version": home.torch_fp32_version(),
               "ratio_is": "gateway p50 ÷ naive torch fp32 p50, 1 client (calls interleaved round by round)"}
    res.summary = (f"p50 gateway {gp['p50']:.2f} ms vs naive torch fp32 {np_['p50']:.2f} ms; vs naive on the "
                   f"same version ({res.raw['gateway_version']}) {dp['p50']:.2f} ms (ratio {same:.2f}); "
                   f"{len(rounds)} rounds")
    if run["errors"]:
        res.notes.append(f"{run['errors']} calls failed")
    _check_other(res, run)
    return res


def _check_other(res: CaseResult, run: dict) -> None:
    if run["other_cpu_cores"] > 0.25:
        res.notes.append(f"other processes on the machine used {run['other_cpu_cores']:.2f} cores meanwhile")
