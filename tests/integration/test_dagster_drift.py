"""Drift report: shifted traffic fails the check and raises an alert; same-distribution traffic does not."""

from __future__ import annotations

from datetime import date

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets import drift_report
from orchestration.definitions import training_job
from orchestration.sensors import make_drift_alert_sensor
from tests.integration.dagster_support import make_home, prediction_rows

pytestmark = pytest.mark.integration

REFERENCE = [date(2026, 2, d) for d in (1, 2, 3)]
SAME, SHIFTED = date(2026, 2, 4), date(2026, 2, 5)


@pytest.fixture
def home(tmp_path):
    home = make_home(tmp_path)
    rows = []
    for i, day in enumerate(REFERENCE):
        rows += prediction_rows(model="classifier", version="1", arm="stable", day=day, n=500, seed=i)
    rows += prediction_rows(model="classifier", version="1", arm="stable", day=SAME, n=500, seed=7)
    rows += prediction_rows(model="classifier", version="1", arm="stable", day=SHIFTED, n=500, seed=8,
                            chars=260, spread=40, labels=["sports", "sports", "sports", "finance"])
    home.lake.append("predictions", rows)
    return home


def run(home, instance, day):
    return dg.materialize([drift_report], partition_key=day.isoformat(), resources=home.resources,
                          instance=instance, run_config={"ops": {"drift_report": {"config": {"reference_days": 3}}}})


def test_same_distribution_traffic_passes_and_shifted_traffic_fails_with_the_numbers(home):
    with dg.instance_for_test() as instance:
        same = run(home, instance, SAME)
        shifted = run(home, instance, SHIFTED)

    (ok,) = same.get_asset_check_evaluations()
    assert ok.passed, ok.metadata
    (bad,) = shifted.get_asset_check_evaluations()
    assert not bad.passed and bad.severity == dg.AssetCheckSeverity.ERROR
    assert bad.metadata["worst"].value == "fail"
    # Per-partition check records (AssetCheckSpec.partitions_def) are a preview feature in Dagster 1.13,
    # so the check is unpartitioned and its metadata names the day it judged.
    assert bad.metadata["day"].value == SHIFTED.isoformat()
    flagged = bad.metadata["flagged"].value
    assert flagged["classifier@1.input_chars"] > 0.25 and "classifier@1.label" in flagged

    metrics = home.lake.read("drift_metrics")
    same_rows = metrics.filter(pc.field("day") == SAME).to_pylist()
    assert {r["feature"] for r in same_rows} == {"input_chars", "input_words", "score", "label"}
    assert all(r["status"] == "ok" for r in same_rows)
    shifted_status = {r["feature"]: r["status"] for r in metrics.filter(pc.field("day") == SHIFTED).to_pylist()}
    assert shifted_status["input_chars"] == "fail" and shifted_status["label"] == "fail"
    assert shifted_status["score"] == "ok"  # scores were drawn from the same distribution


def test_rerunning_a_day_replaces_its_metrics(home):
    with dg.instance_for_test() as instance:
        run(home, instance, SAME)
        run(home, instance, SAME)
    assert home.lake.read("drift_metrics").num_rows == 4


def test_the_drift_sensor_alerts_once_per_failed_report_and_requests_retraining(home):
    sensor = make_drift_alert_sensor(retrain_job=training_job)
    with dg.instance_for_test() as instance:
        run(home, instance, SAME)
        with dg.build_sensor_context(instance=instance, resources=home.resources) as ctx:
            quiet = sensor(ctx)
        run(home, instance, SHIFTED)
        with dg.build_sensor_context(instance=instance, resources=home.resources, cursor=quiet.cursor) as ctx:
            loud = sensor(ctx)
        with dg.build_sensor_context(instance=instance, resources=home.resources, cursor=loud.cursor) as ctx:
            again = sensor(ctx)

    assert quiet.skip_reason is not None and not quiet.run_requests
    assert [r.tags["tandem/trigger"] for r in loud.run_requests] == ["drift"]
    assert again.skip_reason is not None and not again.run_requests
    alerts = home.lake.read("alerts").to_pylist()
    assert len(alerts) == 1
    assert alerts[0]["kind"] == "drift" and alerts[0]["model"] == "classifier" and alerts[0]["version"] == "1"
    assert "input_chars psi" in alerts[0]["message"] and str(SHIFTED) in alerts[0]["message"]

