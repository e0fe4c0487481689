"""The batch case: Dagster `batch_predictions` over one daily partition ÷ the same models called raw.

Both sides run in this process with the same torch threads. The raw side calls each workflow
step's `predict_batch` directly, step after step over all its texts in batches of the asset's
`batch_size` (texts from the same generator); the Dagster side materializes the asset for a partition of `--batch-docs`
documents (ingested by the `documents` asset first, not timed) and is timed end to end:
run start, reading the partition, the executor, the Delta write, run bookkeeping.
Raw runs bracket every Dagster run (raw, dagster, raw, ...) and each Dagster run is compared
with the faster of its two neighbours, so a raw run slowed by other processes cannot flatter it.
"""

from __future__ import annotations

import json
import time
from datetime import date

from bench._lab import Lab
from bench._report import CaseResult, median, new_result

WORKFLOW = "enrich"  # the asset's default: embed and classify every document
BATCH_SIZE = 64  # the asset's default batch_size
DAY = date(2026, 1, 5)
_RAW_SAMPLE = 1500  # documents per raw run (a rate; the whole partition would double the case's time)


def batch(lab: Lab) -> CaseResult:
    res = new_result("batch")
    try:
        import dagster as dg

        from assets import batch_predictions, build_resources, documents
        from models.schemas import get_task
        from models.workflows import load_workflows
    except ImportError as exc:  # the batch path is built by another change; say so instead of failing
        res.skipped = f"the Dagster batch path is not importable yet ({exc})"
        return res

    home = lab.home("main")
    n_docs = lab.config.batch_docs
    spec = load_workflows(home.settings.workflow_dir)[WORKFLOW]
    steps = [(step.model, get_task(step.task).input) for step in spec.steps]
    inbox = home.path / "inbox" / DAY.isoformat()
    inbox.mkdir(parents=True, exist_ok=True)
    for old in inbox.iterdir():
        old.unlink()
    (inbox / "docs.jsonl").write_text("".join(
        json.dumps({"doc_id": f"d{i:06d}", "text": t}) + "\n" for i, t in enumerate(lab.texts.take(n_docs))))

    started = time.perf_counter()
    ops = {model: lab.op("main", model) for model, _ in steps}
    load_s = time.perf_counter() - started
    sample = min(n_docs, _RAW_SAMPLE)

    others: dict[str, list[float]] = {"raw": [], "dagster": []}

    def raw(n: int = sample) -> float:
        texts = lab.texts.take(n)

        def run() -> None:  # step by step over all texts, as the executor does (it measured faster)
            for model, input_model in steps:
                inputs = [input_model(text=t) for t in texts]
                for i in range(0, n, BATCH_SIZE):
                    ops[model].predict_batch(inputs[i:i + BATCH_SIZE])

        _, wall, other = lab.in_process(run)
        others["raw"].append(other)
        return n / wall

    resources = build_resources(home=str(home.path))
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    run_config = {"ops": {"batch_predictions": {"config": {"workflow": WORKFLOW, "batch_size": BATCH_SIZE}}},
                  **quiet}
    key = DAY.isoformat()
    with dg.instance_for_test() as instance:
        t0 = time.perf_counter()
        dg.materialize([documents], partition_key=key, resources=resources, instance=instance, run_config=quiet)
        ingest_s = time.perf_counter() - t0

        def dagster() -> dict:
            result, elapsed, other = lab.in_process(lambda: dg.materialize(
                [batch_predictions], partition_key=key, resources=resources, instance=instance, run_config=run_config))
            others["dagster"].append(other)
            mat = result.asset_materializations_for_node(batch_predictions.op.name)[0]
            meta = {k: v.value for k, v in mat.metadata.items()}
            return {"rows_per_s": n_docs / elapsed, "elapsed_s": elapsed, "rows": meta["rows"],
                    "errors": meta["errors"], "executor_rows_per_s": meta["rows_per_s"],
                    "executor_elapsed_s": meta["elapsed_s"], "model_calls": meta["model_calls"]}

        raw(BATCH_SIZE)  # warm-up
        raws, runs = [raw()], []
        for _ in range(lab.config.batch_reps):
            runs.append(dagster())
            raws.append(raw())
    # Against the faster raw run around it: a raw run slowed by other processes must not flatter Dagster.
    per_run = [r["rows_per_s"] / max(a, b) for r, a, b in zip(runs, raws, raws[1:])]
    res.ratio = median(per_run)
    res.raw = {"workflow": WORKFLOW, "batch_size": BATCH_SIZE, "partition_docs": n_docs, "raw_sample_docs": sample,
               "raw_rows_per_s": raws, "dagster": runs, "ratios": per_run, "ingest_s": ingest_s,
               "model_load_s": load_s, "dagster_runs": len(runs), "other_cpu_cores": others}
    res.summary = (f"{n_docs:,} docs ({WORKFLOW}): Dagster {median([r['rows_per_s'] for r in runs]):.0f} rows/s "
                   f"(executor alone {median([r['executor_rows_per_s'] for r in runs]):.0f}) vs raw "
                   f"{median(raws):.0f} rows/s")
    if max(others["raw"] + others["dagster"]) > 0.25:
        res.notes.append(f"other processes on the machine used up to {max(others['raw'] + others['dagster']):.2f} "
                         "cores during a measurement")
    if any(r["errors"] for r in runs):
        res.notes.append(f"{max(r['errors'] for r in runs)} documents failed in a Dagster run")
    if any(r["rows"] != n_docs for r in runs):
        res.notes.append("a Dagster run scored a different number of rows than the partition holds")
    return res
