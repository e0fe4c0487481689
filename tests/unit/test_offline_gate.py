"""The offline gate's decision (models.gate): which evaluations let a version take canary traffic."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from models._registry_state import ModelVersion
from models.errors import InvalidRegistryOperation, UnevaluatedVersionError, UnknownVersionError
from models.gate import MAX_ACCURACY_DROP, decide, require_evaluation


def mv(version: str, task: str = "classify", **metrics) -> ModelVersion:
    return ModelVersion(name="classifier", version=version, task=task, artifact_uri="mem://x", sha256="0" * 64,
                        schema_hash="h", metrics=metrics)


def replay_row(passed: bool, version: str = "3") -> dict:
    return {"replay_id": "r" * 32, "model": "classifier", "candidate_version": version, "passed": passed,
            "n_replayed": 40, "n_skipped": 2, "agreement": 0.97 if passed else 0.4,
            "reasons": None if passed else '["label agreement with stable 0.4 < 0.85"]',
            "evaluated_at": datetime(2026, 11, 30, tzinfo=UTC)}


def test_a_version_without_any_evaluation_is_refused():
    verdict = decide(mv("3", task="embed"), mv("1", task="embed"), None)
    assert not verdict.passed and verdict.summary == "no offline evaluation"


@pytest.mark.parametrize("passed", [True, False])
def test_the_versions_own_evaluation_metrics_decide(passed):
    ev = {"method": "reference", "metric": "cosine", "value": 0.995, "threshold": 0.98, "passed": passed}
    verdict = decide(mv("2", task="embed", evaluation=ev), mv("1", task="embed"), None)
    assert verdict.passed is passed and verdict.evaluations[0].source == "metrics"
    assert "reference cosine 0.995 threshold 0.98" in verdict.summary


def test_a_trained_classifier_passes_within_the_allowed_accuracy_drop_of_stable():
    stable = mv("1", accuracy=0.90)
    assert decide(mv("3", accuracy=0.90 - MAX_ACCURACY_DROP), stable, None).passed
    below = decide(mv("3", accuracy=0.85), stable, None)
    assert not below.passed and below.evaluations[0].record["threshold"] == pytest.approx(0.88)
    assert "holdout accuracy 0.850 vs stable 1's 0.900" in below.summary


def test_a_trained_classifier_passes_when_there_is_no_stable_accuracy_to_compare_with():
    assert decide(mv("1", accuracy=0.6), None, None).passed
    assert decide(mv("3", accuracy=0.6), mv("1"), None).passed  # a stable registered without metrics


def test_a_passing_replay_lets_a_version_through_and_a_failing_one_is_named():
    assert decide(mv("3", task="embed"), mv("1", task="embed"), replay_row(True)).passed
    failed = decide(mv("3", accuracy=0.5), mv("1", accuracy=0.9), replay_row(False))
    assert not failed.passed and [e.source for e in failed.evaluations] == ["labelled", "replay"]
    assert "label agreement with stable 0.4" in failed.summary


class _Reg:
    def __init__(self, *versions: ModelVersion, stable: str | None = "1"):
        self.versions, self.stable = {v.version: v for v in versions}, stable

    def resolve(self, name, ref="stable"):
        if ref == "stable":
            if self.stable is None:
                raise UnknownVersionError("no stable")
            ref = self.stable
        return self.versions[ref]

    def get(self, name, version):
        return self.versions[version]


class _NoReplays:
    def read(self, name, filter=None, columns=None):
        import pyarrow as pa

        from lakehouse import get_table

        assert name == "replay_evaluations"
        return pa.Table.from_pylist([], schema=get_table(name).schema)


def test_refusal_says_what_to_run_and_force_needs_a_reason_that_is_recorded():
    reg = _Reg(mv("1", task="embed"), mv("3", task="embed"))
    with pytest.raises(UnevaluatedVersionError, match=r"`tandem replay classifier --candidate 3`.*--force --reason"):
        require_evaluation(reg, _NoReplays(), "classifier", "3")
    with pytest.raises(InvalidRegistryOperation, match="needs a reason"):
        require_evaluation(reg, _NoReplays(), "classifier", "3", force=True, reason="  ")
    verdict, why = require_evaluation(reg, _NoReplays(), "classifier", "3", force=True, reason="hotfix, see INC-7")
    assert not verdict.passed and why.startswith("forced past the offline gate (no offline evaluation)")
    assert why.endswith(": hotfix, see INC-7")


def test_a_passing_version_keeps_the_callers_reason_unchanged():
    reg = _Reg(mv("1", accuracy=0.9), mv("3", accuracy=0.95))
    verdict, why = require_evaluation(reg, _NoReplays(), "classifier", "3", reason="better holdout")
    assert verdict.passed and why == "better holdout"


def test_the_stable_version_is_left_to_the_registry_which_refuses_it_as_a_canary():
    assert decide(mv("1", task="embed"), mv("1", task="embed"), None).passed
