"""Router: pin precedence, sticky canary arm, distribution, shadow, and what it says with no stable."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from models._registry_state import AliasState
from online.gateway.problems import NotFound, ServiceUnavailable
from online.gateway.routing import Route, Router, bucket


@dataclass
class S:
    stable: str | None = "1"
    canary: str | None = None
    canary_weight: float = 0.0
    shadow: str | None = None


router = Router()


def test_explicit_pin_beats_tenant_pin_beats_alias():
    state = S(stable="1", canary="2", canary_weight=1.0, shadow="3")
    assert router.route("m", explicit="7", tenant_pin="5", state=state, routing_key="k") == Route("7", "pinned")
    assert router.route("m", tenant_pin="5", state=state, routing_key="k") == Route("5", "pinned")
    assert router.route("m", state=state, routing_key="k") == Route("2", "canary", "3")


def test_pins_need_no_registry_state():
    assert router.route("m", explicit="7", state=None, routing_key="k") == Route("7", "pinned")


def test_the_registry_alias_state_fits():
    state = AliasState(name="m", stable="1", canary="2", canary_weight=0.0)
    assert router.route("m", state=state, routing_key="k") == Route("1", "stable")


def test_bucket_is_the_documented_hash():
    import hashlib

    expected = int(hashlib.sha256(b"m:key-1").hexdigest()[:8], 16) / 2**32
    assert bucket("key-1", "m") == expected
    assert 0 <= bucket("anything", "m") < 1


def test_weight_zero_never_and_weight_one_always_picks_canary():
    never = S(canary="2", canary_weight=0.0)
    always = S(canary="2", canary_weight=1.0)
    for i in range(2000):
        assert router.route("m", state=never, routing_key=str(i)).arm == "stable"
        assert router.route("m", state=always, routing_key=str(i)).arm == "canary"


def test_the_arm_is_sticky_per_routing_key():
    state = S(canary="2", canary_weight=0.3)
    for i in range(500):
        key = f"user-{i}"
        first = router.route("m", state=state, routing_key=key)
        assert all(router.route("m", state=state, routing_key=key) == first for _ in range(5))
        assert first.arm == ("canary" if bucket(key, "m") < 0.3 else "stable")


@pytest.mark.parametrize("weight", [0.05, 0.1, 0.5, 0.9])
def test_canary_fraction_over_10k_keys_matches_the_weight(weight: float):
    state = S(canary="2", canary_weight=weight)
    canary = sum(router.route("m", state=state, routing_key=f"req-{i}").arm == "canary" for i in range(10_000))
    assert abs(canary / 10_000 - weight) <= 0.02


def test_raising_the_weight_only_moves_keys_to_canary():
    low, high = S(canary="2", canary_weight=0.1), S(canary="2", canary_weight=0.4)
    for i in range(2000):
        if router.route("m", state=low, routing_key=str(i)).arm == "canary":
            assert router.route("m", state=high, routing_key=str(i)).arm == "canary"


def test_shadow_only_when_set_differs_from_chosen_and_not_pinned():
    assert router.route("m", state=S(shadow="9"), routing_key="k") == Route("1", "stable", "9")
    assert router.route("m", state=S(shadow="1"), routing_key="k").shadow_version is None
    canary_is_shadow = S(canary="2", canary_weight=1.0, shadow="2")
    assert router.route("m", state=canary_is_shadow, routing_key="k") == Route("2", "canary", None)
    assert router.route("m", explicit="4", state=S(shadow="9"), routing_key="k").shadow_version is None


def test_canary_equal_to_stable_counts_as_stable():
    assert router.route("m", state=S(canary="1", canary_weight=1.0), routing_key="k").arm == "stable"


def test_no_stable_version_says_to_promote_one():
    with pytest.raises(ServiceUnavailable, match="promote"):
        router.route("m", state=S(stable=None), routing_key="k")
    with pytest.raises(NotFound, match="promote"):
        router.route("m", state=None, routing_key="k")
