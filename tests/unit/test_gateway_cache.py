"""Prediction cache: content hashing, TTL, LRU by entries and bytes, version isolation."""

from __future__ import annotations

import pytest

from online.gateway.cache import PredictionCache, content_hash


class FakeClock:
    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_content_hash_ignores_key_order_at_every_depth_but_not_values():
    a = {"text": "hi", "opts": {"lang": "en", "k": 3}}
    b = {"opts": {"k": 3, "lang": "en"}, "text": "hi"}
    assert content_hash(a) == content_hash(b)
    assert len(content_hash(a)) == 64
    assert content_hash(a) != content_hash({**a, "text": "ho"})
    assert content_hash([1, 2]) != content_hash([2, 1])


def test_hit_after_put_and_miss_otherwise_with_counters():
    cache = PredictionCache(clock=FakeClock())
    h = content_hash({"text": "x"})
    assert cache.get("sent", "1", h) is None
    cache.put("sent", "1", h, {"label": "pos"})
    assert cache.get("sent", "1", h) == {"label": "pos"}
    assert (cache.hits, cache.misses) == (1, 1)
    assert cache.stats()["hit_rate"] == 0.5


def test_a_new_version_never_serves_the_old_versions_entry():
    cache = PredictionCache(clock=FakeClock())
    h = content_hash({"text": "x"})
    cache.put("sent", "1", h, {"label": "pos"})
    assert cache.get("sent", "2", h) is None
    assert cache.get("other", "1", h) is None
    cache.put("sent", "2", h, {"label": "neg"})
    assert cache.get("sent", "1", h) == {"label": "pos"}
    assert cache.get("sent", "2", h) == {"label": "neg"}


def test_entries_expire_after_ttl():
    clock = FakeClock()
    cache = PredictionCache(ttl_s=10, clock=clock)
    cache.put("m", "1", "h", 1)
    clock.t += 9.9
    assert cache.get("m", "1", "h") == 1
    clock.t += 0.1
    assert cache.get("m", "1", "h") is None
    assert len(cache) == 0 and cache.bytes == 0
    assert cache.stats()["expirations"] == 1


def test_purge_expired_frees_memory_without_lookups():
    clock = FakeClock()
    cache = PredictionCache(ttl_s=10, clock=clock)
    cache.put("m", "1", "a", 1)
    clock.t += 5
    cache.put("m", "1", "b", 2)
    clock.t += 5
    assert cache.purge_expired() == 1
    assert len(cache) == 1


def test_lru_eviction_by_entry_count_keeps_recently_used():
    cache = PredictionCache(max_entries=2, clock=FakeClock())
    cache.put("m", "1", "a", 1)
    cache.put("m", "1", "b", 2)
    cache.get("m", "1", "a")  # a is now most recent
    cache.put("m", "1", "c", 3)
    assert cache.get("m", "1", "b") is None
    assert cache.get("m", "1", "a") == 1 and cache.get("m", "1", "c") == 3
    assert cache.evictions == 1


def test_lru_eviction_by_bytes():
    big = "x" * 1000
    cache = PredictionCache(max_bytes=3000, clock=FakeClock())
    for k in "abcd":
        assert cache.put("m", "1", k, big)
    assert cache.bytes <= 3000
    assert cache.get("m", "1", "a") is None and cache.get("m", "1", "b") is None
    assert cache.get("m", "1", "d") == big
    assert cache.stats()["evictions"] == 2


def test_a_value_larger_than_the_budget_is_not_cached():
    cache = PredictionCache(max_bytes=500, clock=FakeClock())
    cache.put("m", "1", "small", 1)
    assert cache.put("m", "1", "huge", "x" * 1000) is False
    assert cache.get("m", "1", "small") == 1
    assert cache.get("m", "1", "huge") is None


def test_replacing_an_entry_keeps_the_byte_count_exact():
    cache = PredictionCache(clock=FakeClock())
    cache.put("m", "1", "a", "x" * 100)
    one = cache.bytes
    cache.put("m", "1", "a", "x" * 100)
    assert cache.bytes == one and len(cache) == 1
    cache.clear()
    assert cache.bytes == 0 and len(cache) == 0


def test_callers_cannot_corrupt_cached_values():
    cache = PredictionCache(clock=FakeClock())
    value = {"labels": ["a"]}
    cache.put("m", "1", "h", value)
    value["labels"].append("b")
    got = cache.get("m", "1", "h")
    got["labels"].append("c")
    assert cache.get("m", "1", "h") == {"labels": ["a"]}


def test_invalid_settings_are_refused():
    with pytest.raises(ValueError):
        PredictionCache(max_entries=0)
    with pytest.raises(ValueError):
        PredictionCache(ttl_s=0)


def test_lookup_returns_the_entry_with_what_was_kept_beside_it_and_get_a_fresh_copy():
    cache = PredictionCache(clock=FakeClock())
    h = content_hash({"text": "x"})
    assert cache.lookup("emb", "1", h) is None
    cache.put("emb", "1", h, {"embedding": [0.5, 0.25]}, extra=("hash", "summary"))
    entry = cache.lookup("emb", "1", h)
    assert entry.data == b'{"embedding":[0.5,0.25]}' and entry.extra == ("hash", "summary")
    first = cache.get("emb", "1", h)
    first["embedding"].append(9.0)  # a caller mutating its copy
    assert cache.get("emb", "1", h) == {"embedding": [0.5, 0.25]}
    assert (cache.hits, cache.misses) == (3, 1)
