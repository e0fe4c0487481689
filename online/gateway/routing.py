"""Which version of a model serves a step: explicit pin > tenant pin > the registry's aliases.

The canary arm is chosen by a hash of (model, routing key), so a given key always lands on the
same arm for a given weight (sticky), and raising the weight only moves keys stable -> canary.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal, Protocol

from online.gateway.problems import NotFound, ServiceUnavailable

__all__ = ["AliasStateLike", "Arm", "Route", "Router", "bucket"]

Arm = Literal["pinned", "stable", "canary"]


class AliasStateLike(Protocol):
    """What routing reads of a model's alias state (`models._registry_state.AliasState` fits)."""

    @property
    def stable(self) -> str | None: ...
    @property
    def canary(self) -> str | None: ...
    @property
    def canary_weight(self) -> float: ...
    @property
    def shadow(self) -> str | None: ...


@dataclass(frozen=True)
class Route:
    """The version a step calls, the arm it came from, and a version to shadow-call (or None)."""

    version: str
    arm: Arm
    shadow_version: str | None = None


def bucket(routing_key: str, model: str) -> float:
    """The key's position in [0, 1) for `model`: the first 32 bits of sha256("model:key")."""
    return int(hashlib.sha256(f"{model}:{routing_key}".encode()).hexdigest()[:8], 16) / 2**32


class Router:
    """Resolves (model, pins, alias state, routing key) to a `Route`; stateless and deterministic."""

    def route(
        self,
        model: str,
        *,
        explicit: str | None = None,
        tenant_pin: str | None = None,
        state: AliasStateLike | None,
        routing_key: str,
    ) -> Route:
        if explicit:
            return Route(explicit, "pinned")
        if tenant_pin:
            return Route(tenant_pin, "pinned")
        if state is None:
            raise NotFound(
                f"model {model!r} is not in the registry; register a version and promote it to 'stable'"
            )
        if not state.stable:
            raise ServiceUnavailable(
                f"model {model!r} has no stable version to route to; promote one to the 'stable' alias "
                "(or pin a version in the request)"
            )
        weight = min(1.0, max(0.0, float(state.canary_weight or 0.0)))
        if state.canary and state.canary != state.stable and bucket(routing_key, model) < weight:
            version, arm = state.canary, "canary"
        else:
            version, arm = state.stable, "stable"
        shadow = state.shadow if state.shadow and state.shadow != version else None
        return Route(version, arm, shadow)
