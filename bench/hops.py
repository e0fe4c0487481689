"""`python -m bench.hops [--quick] [--requests N]`: where one lone request's time goes, hop by hop.

One client, one keep-alive connection, requests one after another with fresh texts, on the
embedder's default version. Three phases, each of N requests: straight to the model server
(marked batched, then unmarked: the batch window's cost), then through the gateway. Each hop
comes from figures the platform already keeps, so nothing extra runs on the request path:

    client total                   measured here, around each HTTP call
    gateway run                    the gateway's `metadata.latency_ms` (engine: routing, cache, step)
    gateway step                   `metadata.steps[0].latency_ms` (the call to the model server)
    server HTTP                    the server's `tandem_server_http_request_seconds` (uvicorn app time)
    server queue wait              `tandem_server_queue_wait_seconds` (enqueued → picked by the worker)
    model                          `tandem_server_inference_seconds` (predict_batch)

Differences between nested figures are the hops; means are used so that they add up.
"""

from __future__ import annotations

import argparse
import http.client
import os
import tempfile
import time
from pathlib import Path

import orjson

from bench._lab import Lab, RunConfig, batched_model_body, model_body, predict_body
from models.schemas import EmbedIn

_SERVER_METRICS = {"http": "tandem_server_http_request_seconds", "queue": "tandem_server_queue_wait_seconds",
                   "model": "tandem_server_inference_seconds"}


def _server_sums(url: str) -> dict[str, tuple[float, float]]:
    """(sum of seconds, count) of each server histogram, over all its labels (the /predict path only)."""
    from prometheus_client.parser import text_string_to_metric_families

    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    out = {k: [0.0, 0.0] for k in _SERVER_METRICS}
    names = {v: k for k, v in _SERVER_METRICS.items()}
    for family in text_string_to_metric_families(text):
        key = names.get(family.name)
        if key is None:
            continue
        for s in family.samples:
            if key == "http" and s.labels.get("path") != "/predict":
                continue
            if s.name.endswith("_sum"):
                out[key][0] += s.value
            elif s.name.endswith("_count"):
                out[key][1] += s.value
    return {k: (v[0], v[1]) for k, v in out.items()}


def _phase(lab: Lab, url: str, path: str, body, n: int, key: str | None, server_url: str) -> dict:
    """N sequential calls: client latencies, the gateway's own figures (if any) and the server's deltas."""
    conn = http.client.HTTPConnection(url.removeprefix("http://"), timeout=60)
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    totals, runs, steps = [], [], []
    before = _server_sums(server_url)
    for text in lab.texts.take(n):
        started = time.perf_counter()
        conn.request("POST", path, body=orjson.dumps(body(text)), headers=headers)
        resp = conn.getresponse()
        content = resp.read()
        totals.append((time.perf_counter() - started) * 1000)
        if resp.status != 200:
            raise RuntimeError(f"{url}{path} answered {resp.status}: {content[:300]!r}")
        meta = orjson.loads(content).get("metadata")
        if meta:
            runs.append(meta["latency_ms"])
            steps.append(meta["steps"][0]["latency_ms"])
    conn.close()
    after = _server_sums(server_url)
    server = {k: (after[k][0] - before[k][0]) * 1000 / max(after[k][1] - before[k][1], 1) for k in after}
    return {"total": _mean(totals), "p50": sorted(totals)[len(totals) // 2], "run": _mean(runs) if runs else None,
            "step": _mean(steps) if steps else None, **{f"server_{k}": v for k, v in server.items()}}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def breakdown(lab: Lab, n: int) -> dict:
    procs = lab.need("main", "server-embedder", "gateway")
    home = lab.home("main")
    version = home.default_version("embedder")
    server, gw = procs["server-embedder"].url, procs["gateway"].url

    def direct(marked: bool):
        return lambda t: {**(batched_model_body if marked else model_body)(t), "version": version}

    op = lab.op("main", "embedder", version)
    texts = lab.texts.take(n)
    op.predict_batch([EmbedIn(text=texts[0])])
    started = time.perf_counter()
    for t in texts:
        op.predict_batch([EmbedIn(text=t)])
    in_process = (time.perf_counter() - started) * 1000 / n
    for url, path, body, key in ((server, "/predict", direct(True), None), (gw, "/v1/models/embedder/predict",
                                                                             predict_body, home.key)):
        _phase(lab, url, path, body, max(n // 10, 5), key, server)  # warm up
    return {"version": version, "requests": n, "model_in_process_ms": in_process,
            "server_batched": _phase(lab, server, "/predict", direct(True), n, None, server),
            "server_unmarked": _phase(lab, server, "/predict", direct(False), n, None, server),
            "gateway": _phase(lab, gw, "/v1/models/embedder/predict", predict_body, n, home.key, server)}


def render(b: dict) -> str:
    g, s, u = b["gateway"], b["server_batched"], b["server_unmarked"]
    rows = [
        ("client ⇄ gateway HTTP + gateway pipeline (auth, rate, parse, validate, JSON out)", g["total"] - g["run"]),
        ("gateway engine (routing, cache, record) around the step", g["run"] - g["step"]),
        ("gateway → server call (client.py, TCP, uvicorn parsing) outside the server app", g["step"] - g["server_http"]),
        ("server app: LitServe decode, queue put, hand-back, encode", g["server_http"] - g["server_queue"] - g["server_model"]),
        ("server queue wait (incl. any batch window)", g["server_queue"]),
        ("model (predict_batch in the worker)", g["server_model"]),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"one client, {b['requests']} requests per phase, embedder version {b['version']} (means, ms)", ""]
    lines += [f"  {name:<{width}}  {ms:7.2f}" for name, ms in rows]
    total = f"gateway total (client-measured; p50 {g['p50']:.2f})"
    lines.append(f"  {total:<{width}}  {g['total']:7.2f}")
    for name, d in (("direct to the server, marked batched:", s), ("direct to the server, unmarked:", u)):
        lines.append(f"  {name:<38} {d['total']:.2f} (p50 {d['p50']:.2f}; queue wait {d['server_queue']:.2f}, "
                     f"model {d['server_model']:.2f})")
    lines.append(f"  {'the same model in this process:':<38} {b['model_in_process_ms']:.2f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hops", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models (seconds; the hops, not the model)")
    p.add_argument("--requests", type=int, default=200, help="requests per phase (default 200)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tandem-bench")
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    lab = Lab(RunConfig.make(quick=args.quick, work_dir=args.work.absolute()))
    try:
        print(render(breakdown(lab, args.requests)))
    finally:
        lab.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
