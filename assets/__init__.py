"""Tandem's Dagster assets and asset checks, one module per family; resources in `assets.resources`.

    documents            daily inbox files -> Delta `documents`
    batch_predictions    daily workflow scoring, in-process, stable versions
    classifier_training  a new classifier version, registered, not promoted
    canary_evaluation    canary vs stable (+ check `canary_guardrails`: the guard decision, WARN on rollback)
    drift_report         daily PSI per model version (+ check `drift_within_thresholds`)
    async_job_results    one dynamic partition per async job
    replay_evaluation    logged requests replayed through a candidate version (the offline gate)
    lake_compaction, tenant_retention   maintenance

Asset and resource modules do not use `from __future__ import annotations`: Dagster resolves
`Config` and resource parameters from the annotations when the decorators run.
"""

from assets.canary import canary_evaluation, canary_guardrails
from assets.documents import documents
from assets.drift import drift_report
from assets.jobs import async_job_results
from assets.maintenance import lake_compaction, tenant_retention
from assets.partitions import ASYNC_JOBS, DAILY
from assets.replay import replay_evaluation
from assets.resources import LakeResource, ModelLoader, RegistryResource, TandemConfig, build_resources
from assets.scoring import batch_predictions
from assets.training import classifier_training

ALL_ASSETS = [
    documents, batch_predictions, classifier_training, canary_evaluation, drift_report, async_job_results,
    lake_compaction, tenant_retention, replay_evaluation,
]
ALL_CHECKS = [canary_guardrails]

__all__ = [
    "ALL_ASSETS",
    "ALL_CHECKS",
    "ASYNC_JOBS",
    "DAILY",
    "LakeResource",
    "ModelLoader",
    "RegistryResource",
    "TandemConfig",
    "async_job_results",
    "batch_predictions",
    "build_resources",
    "canary_evaluation",
    "canary_guardrails",
    "classifier_training",
    "documents",
    "drift_report",
    "lake_compaction",
    "replay_evaluation",
    "tenant_retention",
]
