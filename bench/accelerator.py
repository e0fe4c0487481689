"""`python -m bench.accelerator [--quick] [--clients 1,16,64]`: the embedder's model servers on the accelerator.

The prepared script for a GPU machine. Each embedder version that can run on a GPU — torch fp32 (the
reference), torch fp16, and ONNX Runtime fp32 where this onnxruntime has the CUDA provider — plus the
default (stable) version is served by its own model server started with `--device auto` (LitServe's
`accelerator="auto"`: CUDA when torch sees a GPU, else the CPU), one version at a time, and measured
at 1, 16 and 64 clients (throughput, p50, p99; fresh 15-25-word texts), straight to the server
(`POST /predict`, one text per request) and through a gateway in front of it (the version pinned in
the body; the gateway's coalescer merges concurrent requests into one server call). Beside each, the
same version in this process on the same device, in batches of 64: what the model alone does there,
so the table shows how much of it serving delivers.

Without a GPU it measures the CPU and says so (the figures then repeat the `serve`/`ceiling` story).
Writes `bench/results/accelerator.json` (`--out`), prints a Markdown table for docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from bench._lab import Endpoint, Lab, RunConfig, usable_cores
from bench._procs import Group, base_env, gateway, model_server
from bench._report import machine_facts, median

RESULTS = Path(__file__).resolve().parent / "results"
GPU_KINDS = {"minilm": "torch fp32", "minilm-fp16": "torch fp16", "minilm-onnx": "ONNX Runtime fp32"}
_IN_PROCESS_BATCH = 64


def accelerator() -> dict:
    """What `--device auto` resolves to here: the device, its name, and ONNX Runtime's providers."""
    import torch

    try:
        import onnxruntime as ort

        providers = ort.get_available_providers()
    except ImportError:
        providers = []
    cuda = torch.cuda.is_available()
    return {"device": "cuda" if cuda else "cpu", "name": torch.cuda.get_device_name(0) if cuda else None,
            "torch": torch.__version__, "onnxruntime_providers": providers}


def versions_to_measure(home, device: str, providers: list[str]) -> tuple[list[dict], list[str]]:
    """The embedder versions to serve (kind, description), and notes on the ones left out."""
    from models.ops import read_manifest
    from orchestration.bootstrap import Platform

    platform = Platform.open(home.settings)
    registry = platform.registry
    default = registry.resolve("embedder", "stable").version
    chosen, notes = [], []
    for mv in registry.versions("embedder"):
        kind = read_manifest(Path(platform.store.fetch(mv.artifact_uri, mv.sha256))).get("kind")
        if kind == "minilm-onnx" and device == "cuda" and "CUDAExecutionProvider" not in providers:
            notes.append(f"v{mv.version} ({kind}) left out: this onnxruntime has no CUDAExecutionProvider "
                         "(install onnxruntime-gpu to measure it on the GPU)")
            continue
        if kind in GPU_KINDS or mv.version == default or not home.real:
            chosen.append({"version": mv.version, "kind": kind, "description": mv.description,
                           "default": mv.version == default,
                           "runs_on": device if kind in GPU_KINDS else "cpu"})
    return chosen, notes


def _load(lab: Lab, ep: Endpoint, clients: list[int], label: str) -> dict:
    lab.warm(ep, max(clients))
    loads = {}
    for c in clients:
        runs = [lab.hit(ep, c) for _ in range(lab.config.reps)]
        loads[str(c)] = {"rps": median([r["rps"] for r in runs]), "p50_ms": median([r["lat_p50_ms"] for r in runs]),
                         "p99_ms": median([r["lat_p99_ms"] for r in runs]), "errors": sum(r["errors"] for r in runs),
                         "loadgen_cpu_cores": max(r["loadgen_cpu_cores"] for r in runs), "runs": runs}
        lab.say(f"    {label}, {c} client(s): {loads[str(c)]['rps']:.0f} req/s, p50 {loads[str(c)]['p50_ms']:.1f} ms"
                + (f", {loads[str(c)]['errors']} errors" if loads[str(c)]["errors"] else ""))
    return loads


def measure(lab: Lab, row: dict, clients: list[int], device: str) -> dict:
    """Serve one version (its model server, a gateway in front), load both at each client count, then
    time the version in-process."""
    from models.ops import load_op
    from models.schemas import EmbedIn

    home = lab.home("main")
    version = row["version"]
    rps = 20_000 if device == "cuda" else (1_000 if home.real else 4_000)
    group = Group(lab.config.work_dir / "logs" / "accelerator")
    env = base_env(home.path)
    server = model_server(env, home.path, "embedder", name=f"server-embedder-v{version}", versions=version,
                          device="auto")
    lab.say(f"  v{version} ({row['kind']}): starting its model server (--device auto) and a gateway")
    try:
        group.start(server)
        (home.path / "deployments.json").write_text(json.dumps({"embedder": server.url}))
        group.start(gateway(env, home.path, name=f"gateway-v{version}"))
        direct = _load(lab, Endpoint(server, "/predict", lambda t: {"version": version, "inputs": [{"text": t}]},
                                     None, rps), clients, "server")
        via = _load(lab, Endpoint(group[f"gateway-v{version}"], "/v1/models/embedder/predict",
                                  lambda t: {"instances": [{"text": t}], "version": version}, home.key, rps),
                    clients, "gateway")
    finally:
        group.stop()
    op = load_op(home.artifact("embedder", version), device if row["runs_on"] != "cpu" else "cpu")
    n = _IN_PROCESS_BATCH * (2 if lab.config.quick else 16)
    op.predict_batch([EmbedIn(text=t) for t in lab.texts.take(_IN_PROCESS_BATCH)])  # warm-up: first calls allocate
    rates = []
    for _ in range(lab.config.reps):
        inputs = [EmbedIn(text=t) for t in lab.texts.take(n)]
        started = time.perf_counter()
        for i in range(0, n, _IN_PROCESS_BATCH):
            op.predict_batch(inputs[i:i + _IN_PROCESS_BATCH])
        rates.append(n / (time.perf_counter() - started))
    lab.say(f"    in-process: {median(rates):.0f} texts/s (batches of {_IN_PROCESS_BATCH})")
    return {**row, "server": direct, "gateway": via, "in_process_texts_per_s": median(rates),
            "in_process_runs": rates}


def markdown(doc: dict) -> str:
    acc = doc["accelerator"]
    where = f"{acc['device']}" + (f" ({acc['name']})" if acc["name"] else "")
    head = "| version | what | runs on | in-process texts/s (batches of 64) | via |" + "".join(
        f" {c} client{'s' if c != '1' else ''}: req/s, p50 / p99 ms |" for c in doc["clients"])
    lines = [f"Model servers with `--device auto` on {where}:", "", head, "|" + "---|" * (5 + len(doc["clients"]))]
    for r in doc["rows"]:
        first = [f"v{r['version']}{' (default)' if r['default'] else ''}", r["description"] or r["kind"],
                 r["runs_on"], f"{r['in_process_texts_per_s']:.0f}"]
        for via in ("server", "gateway"):
            cells = (first if via == "server" else [""] * 4) + [via]
            cells += [f"{s['rps']:.0f}, {s['p50_ms']:.1f} / {s['p99_ms']:.1f}" for s in r[via].values()]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [f"- {n}" for n in doc["notes"]])


def run(lab: Lab, clients: list[int]) -> dict:
    acc = accelerator()
    home = lab.home("main")
    rows, notes = versions_to_measure(home, acc["device"], acc["onnxruntime_providers"])
    if acc["device"] == "cpu":
        notes.append("no GPU here (torch.cuda.is_available() is false): `--device auto` served on the CPU")
    lab.say(f"accelerator: {acc['device']}{' ' + acc['name'] if acc['name'] else ''}; versions "
            f"{', '.join('v' + r['version'] for r in rows)}")
    measured = [measure(lab, row, clients, acc["device"]) for row in rows]
    return {"accelerator": acc, "clients": [str(c) for c in clients], "rows": measured, "notes": notes,
            "quick": lab.config.quick, "machine": machine_facts(torch_threads=usable_cores())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.accelerator", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny models, 1 s runs (a smoke test, not figures)")
    p.add_argument("--clients", default="1,16,64", help="client counts to load each server with (default 1,16,64)")
    p.add_argument("--reps", type=int, help="runs per client count (median reported; default 3, 2 with --quick)")
    p.add_argument("--duration", type=float, help="seconds per run (default 6, 1 with --quick)")
    p.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "tandem-bench")
    p.add_argument("--out", type=Path, help="results folder (default bench/results, bench/results/quick with --quick)")
    args = p.parse_args(argv)
    try:
        clients = sorted({int(c) for c in args.clients.split(",") if c.strip()})
    except ValueError:
        p.error(f"--clients takes comma-separated client counts, e.g. 1,16,64; got {args.clients!r}")
    if not clients or min(clients) < 1:
        p.error(f"--clients takes client counts of at least 1, e.g. 1,16,64; got {args.clients!r}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    lab = Lab(RunConfig.make(quick=args.quick, work_dir=args.work.absolute(), reps=args.reps,
                             duration_s=args.duration))
    try:
        doc = run(lab, clients)
    finally:
        lab.close()
    out = args.out or (RESULTS / "quick" if args.quick else RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    (out / "accelerator.json").write_text(json.dumps(doc, indent=2, default=str) + "\n")
    print(markdown(doc))
    print(f"\nwrote {out / 'accelerator.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
