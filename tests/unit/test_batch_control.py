"""The control loop's pure parts: distances, ladder decisions, retention plans, tenant files.

The canary guard's statistics and decisions are in test_canary_guard.py.
"""

from __future__ import annotations

import json
import random
from datetime import UTC, date, datetime

import pytest

from assets.maintenance import retention_plan
from assets.resources import read_tenant_retention
from assets.stats import p95, parse_summaries, psi, psi_categorical, tv_distance
from models.registry import AliasState
from orchestration.sensors import canary_decision

NOW = datetime(2026, 3, 1, tzinfo=UTC)


def test_psi_is_near_zero_for_the_same_distribution_and_large_for_a_shift():
    rng = random.Random(0)
    ref = [rng.gauss(100, 10) for _ in range(2000)]
    same = [rng.gauss(100, 10) for _ in range(2000)]
    shifted = [rng.gauss(130, 10) for _ in range(2000)]
    assert psi(ref, same) < 0.02
    assert psi(ref, shifted) > 1.0
    assert psi([5.0] * 50, [5.0] * 50) == pytest.approx(0.0)  # a constant reference still works


def test_categorical_distances():
    assert tv_distance("aabb", "aabb") == 0.0
    assert tv_distance("aaaa", "bbbb") == 1.0
    assert tv_distance("aabb", "aaab") == pytest.approx(0.25)
    assert psi_categorical("aabb", "aabb") == pytest.approx(0.0)
    assert psi_categorical("aabb", "aaac") > 0.25  # an unseen category counts, it does not divide by zero
    with pytest.raises(ValueError):
        tv_distance([], "ab")


def test_summaries_and_percentiles_tolerate_missing_values():
    assert parse_summaries(['{"label": "a"}', None, "not json", "[1]"]) == [{"label": "a"}, {}, {}, {}]
    assert p95([]) is None
    assert p95(list(range(101))) == pytest.approx(95.0)


def state(weight: float) -> AliasState:
    return AliasState(name="m", stable="1", canary="2", canary_weight=weight, updated_at=NOW)


def ev(i: int, passed: bool, requests: int = 50, decision: str | None = None) -> dict:
    """An evaluation row; without `decision` it is one written before that column existed."""
    return {"eval_id": f"e{i}", "run_id": f"run{i}", "passed": passed, "canary_requests": requests,
            "reasons": None if passed else json.dumps(["error rate 0.3 vs stable 0.0"]), "decision": decision}


@pytest.mark.parametrize(("weight", "action", "target"), [
    (0.05, "advance", 0.25), (0.1, "advance", 0.25), (0.25, "advance", 0.5), (0.5, "promote", None),
])
def test_two_passes_move_the_canary_one_ladder_step_or_promote_it(weight, action, target):
    d = canary_decision(state(weight), [ev(1, True), ev(2, True)], (0.05, 0.25, 0.5), 2, 20)
    assert (d.action, d.weight) == (action, target)
    assert "2 consecutive passing evaluations" in d.reason and "run2" in d.reason


def test_the_latest_failure_rolls_back_with_its_run_id_and_reasons():
    d = canary_decision(state(0.25), [ev(1, True), ev(2, True), ev(3, False)], (0.05, 0.25, 0.5), 2, 20)
    assert d.action == "rollback"
    assert "run3" in d.reason and "error rate 0.3" in d.reason


def test_a_streak_needs_enough_traffic_and_restarts_after_a_failure():
    ladder = (0.05, 0.25, 0.5)
    assert canary_decision(state(0.05), [ev(1, True, requests=3), ev(2, True)], ladder, 2, 20).action == "hold"
    assert canary_decision(state(0.05), [ev(1, True), ev(2, False), ev(3, True)], ladder, 2, 20).action == "hold"
    assert canary_decision(state(0.05), [], ladder, 2, 20) is None


def test_holds_neither_count_nor_break_a_streak_and_only_a_rollback_decision_rolls_back():
    ladder = (0.05, 0.25, 0.5)
    passing, holding = (lambda i: ev(i, True, decision="pass")), (lambda i: ev(i, False, 0, decision="hold"))
    assert canary_decision(state(0.05), [holding(1), holding(2)], ladder, 2, 20).action == "hold"
    assert canary_decision(state(0.05), [passing(1), holding(2)], ladder, 2, 20).action == "hold"
    d = canary_decision(state(0.05), [passing(1), holding(2), passing(3)], ladder, 2, 20)
    assert (d.action, d.weight) == ("advance", 0.25) and "2 consecutive passing evaluations" in d.reason
    rollback = ev(4, False, decision="rollback")
    assert canary_decision(state(0.25), [passing(1), passing(2), rollback], ladder, 2, 20).action == "rollback"
    assert canary_decision(state(0.25), [rollback, passing(5)], ladder, 2, 20).action == "hold"


def test_retention_plan_covers_listed_tenants_and_everyone_else():
    plan = retention_plan({"acme": 7, "o'brien": 90}, 30, date(2026, 3, 31))
    assert plan == [
        (date(2026, 3, 24), "tenant = 'acme'"),
        (date(2025, 12, 31), "tenant = 'o''brien'"),
        (date(2026, 3, 1), "tenant NOT IN ('acme', 'o''brien')"),
    ]
    assert retention_plan({}, 30, date(2026, 3, 31)) == [(date(2026, 3, 1), "true")]


def test_retention_reads_the_tenant_file_through_the_one_tenant_parser(tmp_path):
    from models.errors import TenancyError

    gateway_format = tmp_path / "a.yaml"
    gateway_format.write_text("tenants:\n  acme: {retention_days: 7, rate_per_s: 5}\n  demo: {}\n")
    assert read_tenant_retention(gateway_format) == {"acme": 7, "demo": 30}
    assert read_tenant_retention(tmp_path / "missing.yaml") == {}
    broken = tmp_path / "c.yaml"
    broken.write_text("tenants:\n  acme: {retention_days: zero}\n")
    with pytest.raises(TenancyError, match="tenant 'acme' is invalid: field 'retention_days'"):
        read_tenant_retention(broken)


def test_without_a_tenant_file_the_default_retention_applies_to_every_tenant(tmp_path):
    from datetime import timedelta

    from assets.maintenance import apply_retention
    from lakehouse import Lake
    from tests.integration.dagster_support import prediction_rows

    lake, today = Lake(str(tmp_path / "lake")), date(2026, 3, 31)
    lake.append("predictions", [
        *prediction_rows(model="m", version="1", arm="stable", day=today - timedelta(days=40), n=3, tenant="a"),
        *prediction_rows(model="m", version="1", arm="stable", day=today - timedelta(days=2), n=2, tenant="b"),
    ])
    report = apply_retention(lake, {}, 30, today)
    assert report.deleted["predictions"] == 3 and report.by_predicate["true"]["predictions"] == 3
    assert lake.read("predictions").column("tenant").to_pylist() == ["b", "b"]
