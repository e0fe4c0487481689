"""The ceiling case: the fastest embedder version that passes its offline evaluation ÷ torch fp32, in-process.

Every embedder version of the real home whose `metrics["evaluation"]` passed (`tandem init` records
them: torch fp32 and int8, ONNX Runtime fp32 and int8) embeds fresh 15-25-word texts in batches of
32 with `predict_batch`, in this process, on the same threads. Versions take turns within each
repetition, so noise from other processes falls on all of them alike; each repetition's ratio is
the fastest version's rate over torch fp32's (version 1) in that same repetition.
"""

from __future__ import annotations

from bench._lab import Lab, usable_cores
from bench._report import CaseResult, median, new_result

REFERENCE = "1"
BATCH = 32
_BATCHES = 8  # per version per repetition: ~1 s for torch fp32 here


def ceiling(lab: Lab) -> CaseResult:
    res = new_result("ceiling")
    import torch

    from models.ops import load_op
    from models.schemas import EmbedIn
    from orchestration.bootstrap import Platform

    home = lab.home("main")
    registry = Platform.open(home.settings).registry
    passing = [mv.version for mv in registry.versions("embedder")
               if mv.version == REFERENCE or mv.metrics.get("evaluation", {}).get("passed")]
    if passing == [REFERENCE]:
        res.notes.append("only the reference embedder passes (or the home predates the ONNX versions: "
                         "rebuild it with --fresh)")
    torch.set_num_threads(usable_cores())
    ops = {v: load_op(home.artifact("embedder", v)) for v in passing}

    for op in ops.values():  # warm-up: first calls allocate
        op.predict_batch([EmbedIn(text=t) for t in lab.texts.take(BATCH)])

    rates: dict[str, list[float]] = {v: [] for v in ops}
    others: list[float] = []
    for _ in range(lab.config.reps):
        for version, op in ops.items():
            inputs = [EmbedIn(text=t) for t in lab.texts.take(BATCH * (2 if lab.config.quick else _BATCHES))]

            def run(op=op, inputs=inputs) -> None:
                for start in range(0, len(inputs), BATCH):
                    op.predict_batch(inputs[start : start + BATCH])

            _, wall, other = lab.in_process(run)
            rates[version].append(len(inputs) / wall)
            others.append(other)
    fastest = max(rates, key=lambda v: median(rates[v]))
    per_rep = [f / r for f, r in zip(rates[fastest], rates[REFERENCE])]
    res.ratio = median(per_rep)
    kinds = {v: registry.get("embedder", v).description for v in ops}
    res.raw = {"batch": BATCH, "texts_per_rep": BATCH * _BATCHES, "threads": usable_cores(), "versions": kinds,
               "texts_per_s": rates, "fastest": fastest, "ratios": per_rep, "other_cpu_cores": others}
    res.summary = ", ".join(f"v{v} {median(r):.0f}" for v, r in rates.items()) + \
        f" texts/s; fastest passing: v{fastest} ({kinds[fastest]})"
    if others and max(others) > 0.25:
        res.notes.append(f"other processes on the machine used up to {max(others):.2f} cores during a measurement")
    return res
