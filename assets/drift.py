"""The `drift_report` asset: a day's inputs and outputs per model version against that version's reference window.

The reference window of a version is its first `reference_days` days of logged traffic (the
evaluated day excluded). Every feature of the `predictions` log's `output_summary` gets a PSI:
inputs (`input_chars`, `input_words`) and outputs (`label` distribution, `score`, embedding
`mean`/`std`, rerank `top_score`). Results go to `drift_metrics` (the day's partition replaced);
the `drift_within_thresholds` check warns (WARN) or fails (ERROR) on the worst status.
"""

from collections.abc import Sequence
from datetime import UTC, date, datetime
from typing import Any

import dagster as dg
import pyarrow.compute as pc

from assets.partitions import DAILY, partition_day
from assets.resources import LakeResource
from assets.stats import parse_summaries, psi, psi_categorical
from lakehouse import Lake

NUMERIC = ("input_chars", "input_words", "score", "mean", "std", "top_score")
CATEGORICAL = ("label",)
_RANK = {"ok": 0, "warn": 1, "fail": 2}
_ANSWERED = ["ok", "fallback"]  # calls whose outputs the version really produced


class DriftConfig(dg.Config):
    """The reference window, the minimum sample sizes and the PSI thresholds."""

    reference_days: int = 7
    min_rows: int = 30
    warn_psi: float = 0.1
    fail_psi: float = 0.25
    bins: int = 10


def day_summaries(lake: Lake, model: str, version: str, days: Sequence[date]) -> list[dict[str, Any]]:
    """The parsed output summaries of `model@version`'s successful calls on `days`."""
    if not days:
        return []
    flt = ((pc.field("model") == model) & (pc.field("version") == version) & pc.field("status").isin(_ANSWERED)
           & pc.field("day").isin(list(days)))
    return parse_summaries(lake.read("predictions", filter=flt, columns=["output_summary"])
                           .column("output_summary").to_pylist())


def reference_window(lake: Lake, model: str, version: str, day: date, n_days: int) -> list[date]:
    """The first `n_days` days on which `model@version` served traffic, `day` excluded."""
    table = lake.sql(
        "SELECT DISTINCT day FROM predictions WHERE model = ? AND version = ? AND status = 'ok' AND day <> ? "
        "ORDER BY day LIMIT ?", [model, version, day, n_days])
    return table.column("day").to_pylist()


def feature_psis(reference: list[dict], current: list[dict], bins: int) -> dict[str, float]:
    """PSI of every summary feature present in both samples."""
    out = {}
    for feature in NUMERIC + CATEGORICAL:
        ref = [s[feature] for s in reference if s.get(feature) is not None]
        cur = [s[feature] for s in current if s.get(feature) is not None]
        if ref and cur:
            out[feature] = psi_categorical(ref, cur) if feature in CATEGORICAL else psi(ref, cur, bins)
    return out


def status_of(value: float, cfg: DriftConfig) -> str:
    return "fail" if value >= cfg.fail_psi else "warn" if value >= cfg.warn_psi else "ok"


def drift_rows(lake: Lake, day: date, cfg: DriftConfig, run_id: str, now: datetime) -> tuple[list[dict], list[str]]:
    """(`drift_metrics` rows for `day`, versions skipped with the reason)."""
    served = lake.read("predictions", filter=(pc.field("day") == day) & pc.field("status").isin(_ANSWERED)
                       & pc.field("version").is_valid(), columns=["model", "version"]).to_pylist()
    rows, skipped = [], []
    for model, version in sorted({(r["model"], r["version"]) for r in served}):
        current = day_summaries(lake, model, version, [day])
        ref_days = reference_window(lake, model, version, day, cfg.reference_days)
        reference = day_summaries(lake, model, version, ref_days)
        if len(current) < cfg.min_rows or len(reference) < cfg.min_rows:
            skipped.append(f"{model}@{version}: {len(current)} rows today, {len(reference)} in its reference "
                           f"window (< {cfg.min_rows})")
            continue
        for feature, value in feature_psis(reference, current, cfg.bins).items():
            rows.append({
                "day": day, "model": model, "version": version, "feature": feature, "metric": "psi",
                "value": value, "warn_threshold": cfg.warn_psi, "fail_threshold": cfg.fail_psi,
                "status": status_of(value, cfg), "run_id": run_id, "computed_at": now,
            })
    return rows, skipped


@dg.asset(
    partitions_def=DAILY, group_name="control", kinds={"delta"},
    check_specs=[dg.AssetCheckSpec("drift_within_thresholds", asset="drift_report",
                                   description="Warns past the PSI warn threshold, fails past the fail threshold.")],
)
def drift_report(context: dg.AssetExecutionContext, config: DriftConfig, lake: LakeResource) -> dg.MaterializeResult:
    """PSI of a day's model inputs and outputs against each version's reference window."""
    day = partition_day(context)
    the_lake = lake.lake()
    rows, skipped = drift_rows(the_lake, day, config, context.run.run_id, datetime.now(UTC))
    the_lake.overwrite_partition("drift_metrics", rows, {"day": day})
    worst = max((r["status"] for r in rows), key=_RANK.__getitem__, default="ok")
    flagged = {f"{r['model']}@{r['version']}.{r['feature']}": round(r["value"], 4) for r in rows if r["status"] != "ok"}
    check = dg.AssetCheckResult(
        check_name="drift_within_thresholds", passed=worst == "ok",
        severity=dg.AssetCheckSeverity.ERROR if worst == "fail" else dg.AssetCheckSeverity.WARN,
        metadata={"day": day.isoformat(), "worst": worst, "flagged": flagged, "warn_psi": config.warn_psi, "fail_psi": config.fail_psi},
    )
    return dg.MaterializeResult(
        metadata={
            "metrics": len(rows), "worst": worst, "flagged": flagged, "skipped": skipped,
            "psi": {f"{r['model']}@{r['version']}.{r['feature']}": round(r["value"], 4) for r in rows},
        },
        check_results=[check],
    )
