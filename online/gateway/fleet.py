"""What the model servers have loaded, and the alias state the gateway may route by.

The registry says where aliases point; a model server loads a version some seconds after it
gains an alias (see `online.servers.versions`). Until a server reports a version in its
`GET /info`, routing it traffic would only earn 503s, so the gateway routes by an *effective*
state: a canary or shadow no server has loaded yet is left out (its share goes to stable), and a
freshly promoted stable that is still loading keeps the previous stable serving. When a server
cannot be asked (down, or an older server without the report) its model's state is used as is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

__all__ = ["ServedView"]

log = logging.getLogger("tandem.gateway")

InfoFetcher = Callable[[str], Awaitable[dict[str, Any] | None]]


class ServedView:
    """Loaded versions per model (from each server's /info) and the effective alias states."""

    def __init__(self, servers: Callable[[], Mapping[str, str]], fetch: InfoFetcher):
        self._servers = servers
        self._fetch = fetch
        self.loaded: dict[str, set[str] | None] = {}  # model -> versions its server has loaded; None: unknown
        self._serving_stable: dict[str, str] = {}  # model -> the stable last routed to

    async def refresh(self) -> None:
        """Ask every model server what it has loaded (concurrently; a failure means "unknown")."""
        servers = dict(self._servers())
        replies = await asyncio.gather(*(self._fetch(url) for url in servers.values()), return_exceptions=True)
        loaded: dict[str, set[str] | None] = {}
        for model, reply in zip(servers, replies):
            served = reply.get("served") if isinstance(reply, dict) else None
            loaded[model] = set(served["loaded"]) if isinstance(served, dict) and "loaded" in served else None
        self.loaded = loaded

    def effective(self, states: Mapping[str, Any]) -> dict[str, Any]:
        """`states` with every alias no server has loaded yet taken out of routing."""
        out = {}
        for model, state in states.items():
            have = self.loaded.get(model)
            if have is None:
                if state.stable:
                    self._serving_stable[model] = state.stable
                out[model] = state
                continue
            changes: dict[str, Any] = {}
            if state.canary and state.canary not in have:
                changes.update(canary=None, canary_weight=0.0)
            if state.shadow and state.shadow not in have:
                changes["shadow"] = None
            if state.stable and state.stable not in have:
                previous = self._serving_stable.get(model)
                if previous in have:
                    changes["stable"] = previous  # the new stable is still loading
            elif state.stable:
                self._serving_stable[model] = state.stable
            out[model] = dataclasses.replace(state, **changes) if changes else state
        return out

    def describe(self) -> dict[str, list[str] | None]:
        return {m: sorted(v) if v is not None else None for m, v in self.loaded.items()}
