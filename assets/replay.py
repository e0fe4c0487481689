"""The `replay_evaluation` asset: `tandem replay` launched from the Dagster UI (the logic is assets.offline_replay)."""

from datetime import date

import dagster as dg

from assets.offline_replay import ReplayFilters, ReplayThresholds, evaluate_candidate
from assets.resources import LakeResource, ModelLoader, RegistryResource, TandemConfig


class ReplayConfig(dg.Config):
    """Which candidate to replay logged requests through, and which requests (as `tandem replay` takes them)."""

    model: str
    candidate: str
    since: str | None = None  # a UTC day, YYYY-MM-DD
    tenant: str | None = None
    limit: int | None = None
    min_replay: int = 30
    batch_size: int = 32


@dg.asset(group_name="control", kinds={"delta"})
def replay_evaluation(
    context: dg.AssetExecutionContext, config: ReplayConfig, tandem: TandemConfig, lake: LakeResource,
    registry: RegistryResource, models: ModelLoader,
) -> dg.MaterializeResult:
    """Logged requests replayed through a candidate version in-process: the offline gate's evaluation."""
    filters = ReplayFilters(since=date.fromisoformat(config.since) if config.since else None, tenant=config.tenant,
                            limit=config.limit)
    row = evaluate_candidate(
        lake.lake(), registry.registry(), models.resolver(registry), tandem.workflows(), config.model,
        config.candidate, filters, ReplayThresholds(min_replay=config.min_replay, batch_size=config.batch_size),
        run_id=context.run.run_id,
        progress=lambda done, total: context.log.info(f"replayed {done}/{total}"))
    lake.lake().append("replay_evaluations", [row])
    context.log.info(f"{config.model}@{config.candidate}: {'passed' if row['passed'] else 'not passed'} "
                     f"{row['reasons'] or ''}")
    return dg.MaterializeResult(metadata={
        k: row[k] for k in ("replay_id", "model", "candidate_version", "baseline_versions", "n_replayed", "n_skipped",
                            "skipped", "agreement", "agreement_upper", "topk_overlap", "score_distance",
                            "candidate_p50_ms", "logged_p50_ms", "passed", "reasons")
        if row[k] is not None})
