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

    def __init__(self, replicas: Callable[[], Mapping[str, list[str]]], fetch: InfoFetcher):
        self._replicas = replicas
        self._fetch = fetch
        self.loaded: dict[str, set[str] | None] = {}  # model -> versions some replica has loaded; None: unknown
        self.by_url: dict[str, set[str] | None] = {}  # replica URL -> versions it has loaded; None: unknown
        self._serving_stable: dict[str, str] = {}  # model -> the stable last routed to

    async def refresh(self) -> None:
        """Ask every model server replica what it has loaded (concurrently; a failure means "unknown")."""
        replicas = {m: list(urls) for m, urls in self._replicas().items()}
        urls = [u for us in replicas.values() for u in us]
        replies = await asyncio.gather(*(self._fetch(u) for u in urls), return_exceptions=True)
        by_url: dict[str, set[str] | None] = {}
        for url, reply in zip(urls, replies):
            served = reply.get("served") if isinstance(reply, dict) else None
            by_url[url] = set(served["loaded"]) if isinstance(served, dict) and "loaded" in served else None
        loaded: dict[str, set[str] | None] = {}
        for model, us in replicas.items():
            known = [by_url[u] for u in us if by_url.get(u) is not None]
            loaded[model] = set().union(*known) if known else None
        self.by_url, self.loaded = by_url, loaded

    def serves(self, url: str, version: str) -> bool:
        """Whether the replica at `url` has `version` loaded (True while unknown)."""
        have = self.by_url.get(url)
        return have is None or version in have

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
