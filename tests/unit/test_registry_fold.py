"""The registry's alias state is a pure fold of its events: tested here without Delta."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from models.registry import AliasState, RegistryEvent, fold_events, stable_trail

T0 = datetime(2025, 1, 1, tzinfo=UTC)


def ev(i: int, alias: str, version: str | None, *, name: str = "m", weight: float | None = None, at=None):
    return RegistryEvent(
        event_id=f"{i:04d}",
        name=name,
        alias=alias,
        version=version,
        weight=weight,
        actor="test",
        reason=None,
        at=at or T0 + timedelta(seconds=i),
    )


def test_no_events_fold_to_no_models():
    assert fold_events([]) == {}


def test_stable_canary_and_shadow_are_set_independently():
    state = fold_events([ev(1, "stable", "1"), ev(2, "canary", "2", weight=0.1), ev(3, "shadow", "3")])["m"]
    assert state == AliasState(
        name="m", stable="1", canary="2", canary_weight=0.1, shadow="3", updated_at=T0 + timedelta(seconds=3)
    )


def test_fold_orders_by_time_not_by_input_order():
    events = [ev(2, "stable", "2"), ev(1, "stable", "1")]
    assert fold_events(events)["m"].stable == "2"
    assert fold_events(reversed(events))["m"].stable == "2"


def test_events_at_the_same_instant_are_ordered_by_event_id():
    same = T0
    events = [ev(2, "stable", "b", at=same), ev(1, "stable", "a", at=same)]
    assert fold_events(events)["m"].stable == "b"


def test_promoting_the_canary_clears_it_in_the_same_fold():
    state = fold_events([ev(1, "stable", "1"), ev(2, "canary", "2", weight=0.5), ev(3, "stable", "2")])["m"]
    assert (state.stable, state.canary, state.canary_weight) == ("2", None, 0.0)


def test_promoting_another_version_keeps_the_canary():
    state = fold_events([ev(1, "stable", "1"), ev(2, "canary", "2", weight=0.5), ev(3, "stable", "3")])["m"]
    assert (state.stable, state.canary, state.canary_weight) == ("3", "2", 0.5)


def test_clearing_the_canary_resets_its_weight():
    state = fold_events([ev(1, "stable", "1"), ev(2, "canary", "2", weight=0.3), ev(3, "canary", None)])["m"]
    assert (state.canary, state.canary_weight) == (None, 0.0)


def test_version_none_clears_shadow():
    assert fold_events([ev(1, "shadow", "2"), ev(2, "shadow", None)])["m"].shadow is None


def test_models_fold_independently():
    states = fold_events(
        [
            ev(1, "stable", "1", name="a"),
            ev(2, "stable", "7", name="b"),
            ev(3, "canary", "2", name="a", weight=0.2),
        ]
    )
    assert states["a"].stable == "1" and states["a"].canary == "2"
    assert states["b"].stable == "7" and states["b"].canary is None


def test_unknown_alias_is_ignored_rather_than_guessed():
    assert fold_events([ev(1, "stable", "1"), ev(2, "blue", "9")])["m"].stable == "1"


@pytest.mark.parametrize(
    ("stables", "trail"),
    [
        (["1", "2", "3"], ["1", "2", "3"]),
        (["1", "2", "3", "2"], ["1", "2"]),  # a rollback pops
        (["1", "2", "3", "2", "1"], ["1"]),  # two rollbacks
        (["1", "2", "2"], ["1", "2"]),  # re-promoting stable changes nothing
        (["1", "2", None, "3"], ["3"]),  # clearing stable forgets the past
    ],
)
def test_stable_trail_is_the_stack_rollback_walks(stables, trail):
    events = [ev(i, "stable", v) for i, v in enumerate(stables)]
    assert stable_trail(events, "m") == trail


def test_stable_trail_of_an_unknown_model_is_empty():
    assert stable_trail([ev(1, "stable", "1")], "other") == []
