"""An in-memory LRU + TTL cache of model outputs, keyed by (model, version, content hash of the input).

The version is part of the key, so promoting a new version never serves the old one's outputs.
Values are stored as JSON bytes: every `get` returns a fresh copy (callers cannot corrupt the
cache by mutating it) and the byte budget is measured, not guessed. `lookup` returns the entry itself:
its bytes (a caller that only serialises the output embeds them as they are) and whatever the caller
stored with them (`extra`: the gateway keeps each output's prediction-log facts there, so a hit
neither parses nor summarises the output again). Event-loop use only.
"""

from __future__ import annotations

import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

__all__ = ["CacheEntry", "PredictionCache", "content_hash"]

_ENTRY_OVERHEAD = 200  # rough bytes per entry for the key tuple, the entry and the dict slot


def content_hash(obj: Any) -> str:
    """sha256 hex of `obj` as canonical JSON (keys sorted at every depth, no whitespace)."""
    return hashlib.sha256(orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class CacheEntry:
    data: bytes  # the output as JSON
    size: int
    expires_at: float
    extra: Any = None  # what `put` was given with it


class PredictionCache:
    """Outputs by (model, version, input hash); evicts least recently used past either budget."""

    def __init__(
        self,
        max_entries: int = 10_000,
        max_bytes: int = 64 * 1024 * 1024,
        ttl_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        if max_entries < 1 or max_bytes < 1:
            raise ValueError(f"max_entries and max_bytes must be >= 1, got {max_entries}, {max_bytes}")
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be > 0 seconds, got {ttl_s}")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str, str], CacheEntry] = OrderedDict()
        self._bytes = 0
        self.hits = 0
        self.misses = 0
        self.evictions = 0
        self.expirations = 0

    def __len__(self) -> int:
        return len(self._entries)

    @property
    def bytes(self) -> int:
        return self._bytes

    def get(self, model: str, version: str, input_hash: str) -> Any | None:
        """The cached output (a fresh copy), or None on a miss or an expired entry."""
        entry = self.lookup(model, version, input_hash)
        return None if entry is None else orjson.loads(entry.data)

    def lookup(self, model: str, version: str, input_hash: str) -> CacheEntry | None:
        """The entry (read it, never change it), or None on a miss or an expired entry."""
        key = (model, version, input_hash)
        entry = self._entries.get(key)
        if entry is not None and entry.expires_at <= self._clock():
            self._remove(key)
            self.expirations += 1
            entry = None
        if entry is None:
            self.misses += 1
            return None
        self._entries.move_to_end(key)
        self.hits += 1
        return entry

    def put(self, model: str, version: str, input_hash: str, value: Any, extra: Any = None) -> bool:
        """Cache `value` (JSON-serialisable) and `extra` (kept as is, not counted in the byte budget: keep
        it small); False if the value alone is larger than `max_bytes`."""
        key = (model, version, input_hash)
        data = orjson.dumps(value)
        size = len(data) + len(model) + len(version) + len(input_hash) + _ENTRY_OVERHEAD
        if key in self._entries:
            self._remove(key)
        if size > self.max_bytes:
            return False
        self._entries[key] = CacheEntry(data, size, self._clock() + self.ttl_s, extra)
        self._bytes += size
        while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
            self._remove(next(iter(self._entries)))
            self.evictions += 1
        return True

    def purge_expired(self) -> int:
        """Drop every expired entry now (O(n)); returns how many."""
        now = self._clock()
        expired = [k for k, e in self._entries.items() if e.expires_at <= now]
        for k in expired:
            self._remove(k)
        self.expirations += len(expired)
        return len(expired)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0

    def stats(self) -> dict[str, int | float]:
        lookups = self.hits + self.misses
        return {
            "entries": len(self._entries),
            "bytes": self._bytes,
            "max_entries": self.max_entries,
            "max_bytes": self.max_bytes,
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / lookups if lookups else 0.0,
            "evictions": self.evictions,
            "expirations": self.expirations,
        }

    def _remove(self, key: tuple[str, str, str]) -> None:
        self._bytes -= self._entries.pop(key).size
