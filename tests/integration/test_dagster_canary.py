"""Canary evaluation + canary guard: a bad canary is rolled back, a good one walks up the ladder to stable."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

import dagster as dg
import pytest

from assets import canary_evaluation, canary_guardrails
from models.ops import load_op
from models.schemas import ClassifyIn
from orchestration.sensors import make_canary_guard_sensor
from tests.integration.dagster_support import make_home, prediction_rows

pytestmark = pytest.mark.integration

EVAL_DAY = date(2026, 1, 2)


@pytest.fixture
def home(tmp_path):
    home = make_home(tmp_path)
    # The labelled set is what the stable classifier says, so stable scores 1.0 and any change shows.
    stable = load_op(home.root / "src" / "classifier-1")
    texts = [f"labelled document {i} about markets and matches" for i in range(60)]
    labels = [o.label for o in stable.predict_batch([ClassifyIn(text=t) for t in texts])]
    home.lake.append("documents", [
        {"doc_id": f"e{i}", "day": EVAL_DAY, "text": t, "label": y, "source": "eval", "attributes": None,
         "ingested_at": datetime.now(UTC)} for i, (t, y) in enumerate(zip(texts, labels))
    ])
    return home


def log_live_traffic(home, *, canary_error_rate: float, canary_version: str = "2", seed: int = 0) -> None:
    now, today = datetime.now(UTC), datetime.now(UTC).date()
    home.lake.append("predictions", [
        *prediction_rows(model="classifier", version="1", arm="stable", day=today, n=60, at=now, seed=seed),
        *prediction_rows(model="classifier", version=canary_version, arm="canary", day=today, n=40, at=now,
                         error_rate=canary_error_rate, seed=seed + 1),
    ])


def evaluate(home, instance):
    config = {"ops": {"canary_evaluation": {"config": {"eval_size": 60, "min_requests": 20}}}}
    return dg.materialize([canary_evaluation, canary_guardrails], resources=home.resources, instance=instance,
                          run_config=config, raise_on_error=False)


def tick(sensor, instance, home, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=home.resources) as ctx:
        return sensor(ctx)


def test_a_bad_canary_fails_the_blocking_check_and_the_guard_rolls_it_back(home):
    # Version 2 is the same tiny model with another salt: its labels disagree with stable's.
    home.registry.register("classifier", "classify",
                           home.artifact("classifier-2", "tiny-classify", labels=["finance", "sports", "technology"],
                                         salt="retrained-badly"), version="2", actor="test")
    home.registry.set_canary("classifier", "2", 0.05, actor="test")
    log_live_traffic(home, canary_error_rate=0.3)

    with dg.instance_for_test() as instance:
        result = evaluate(home, instance)
        assert not result.success  # the blocking check failed the run
        (check,) = result.get_asset_check_evaluations()
        assert check.check_name == "canary_guardrails" and not check.passed
        numbers = check.metadata["classifier@2"].value
        assert numbers["quality_stable"] == 1.0 and numbers["quality_canary"] < 0.8
        assert numbers["canary_error_rate"] > numbers["stable_error_rate"] + 0.1
        assert any("error rate" in r for r in numbers["reasons"])
        assert any("accuracy" in r for r in numbers["reasons"])

        sensor = make_canary_guard_sensor()
        tick_result = tick(sensor, instance, home)

    state = home.registry.state("classifier")
    assert state.canary is None and state.stable == "1"
    event = home.registry.history("classifier", limit=1)[0]
    assert event.alias == "canary" and event.version is None and event.actor == "dagster:canary_guard"
    assert result.run_id in event.reason and "failed" in event.reason
    alerts = home.lake.read("alerts").to_pylist()
    assert [(a["kind"], a["model"], a["version"]) for a in alerts] == [("canary", "classifier", "2")]
    assert json.loads(tick_result.cursor)["last_eval"]["classifier"]


def test_a_good_canary_advances_along_the_ladder_and_is_promoted(home):
    # Same behaviour, new artifact (another digest): a healthy rebuild.
    home.registry.register("classifier", "classify",
                           home.artifact("classifier-2", "tiny-classify", labels=["finance", "sports", "technology"],
                                         build="2"), version="2", actor="test")
    home.registry.set_canary("classifier", "2", 0.05, actor="test")
    sensor = make_canary_guard_sensor(ladder=(0.05, 0.25, 0.5), passes_required=1, min_canary_requests=20)
    weights, cursor = [], None
    with dg.instance_for_test() as instance:
        for round_ in range(3):
            log_live_traffic(home, canary_error_rate=0.0, seed=10 * round_)
            result = evaluate(home, instance)
            assert result.success
            assert result.get_asset_check_evaluations()[0].passed
            cursor = tick(sensor, instance, home, cursor).cursor
            state = home.registry.state("classifier")
            weights.append(state.canary_weight if state.canary else ("stable", state.stable))
        # Nothing new to act on: the next tick changes nothing.
        idle = tick(sensor, instance, home, cursor)
    assert idle.skip_reason is not None
    assert weights == [0.25, 0.5, ("stable", "2")]
    reasons = [e.reason for e in home.registry.history("classifier", limit=3)]
    assert all(r.startswith("canary guard: 1 consecutive passing evaluations") for r in reasons)
    assert home.lake.read("canary_evaluations").num_rows == 3


def test_no_active_canary_is_a_passing_check_with_nothing_written(home):
    with dg.instance_for_test() as instance:
        result = evaluate(home, instance)
    assert result.success and result.get_asset_check_evaluations()[0].passed
    assert home.lake.read("canary_evaluations").num_rows == 0
