"""Distribution distances and summaries shared by the canary and drift assets (pure functions)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = ["p95", "parse_summaries", "psi", "psi_categorical", "tv_distance"]

_EPS = 1e-4


def psi(reference: Sequence[float], current: Sequence[float], bins: int = 10) -> float:
    """Population stability index of `current` against `reference`, over the reference's quantile bins.

    Rule of thumb: < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 significant shift.
    """
    ref, cur = np.asarray(reference, dtype=float), np.asarray(current, dtype=float)
    if ref.size == 0 or cur.size == 0:
        raise ValueError("psi needs at least one reference and one current value")
    edges = np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))
    n = edges.size + 1
    r = np.bincount(np.searchsorted(edges, ref, side="right"), minlength=n) / ref.size
    c = np.bincount(np.searchsorted(edges, cur, side="right"), minlength=n) / cur.size
    return _psi(r, c)


def psi_categorical(reference: Iterable[str], current: Iterable[str]) -> float:
    """PSI between the category frequencies of two samples (unseen categories get a small floor)."""
    r, c = _frequencies(reference, current)
    return _psi(r, c)


def tv_distance(a: Iterable[str], b: Iterable[str]) -> float:
    """Total variation distance between two categorical samples: 0 identical, 1 disjoint."""
    p, q = _frequencies(a, b)
    return float(0.5 * np.abs(p - q).sum())


def p95(values: Sequence[float]) -> float | None:
    """The 95th percentile, or None for no values."""
    return float(np.percentile(np.asarray(values, dtype=float), 95)) if len(values) else None


def parse_summaries(raw: Iterable[str | None]) -> list[dict[str, Any]]:
    """`output_summary` JSON strings as dicts ({} for missing or malformed ones)."""
    out = []
    for s in raw:
        try:
            value = json.loads(s) if s else {}
        except json.JSONDecodeError:
            value = {}
        out.append(value if isinstance(value, dict) else {})
    return out


def _frequencies(a: Iterable[str], b: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    ca, cb = Counter(a), Counter(b)
    na, nb = sum(ca.values()), sum(cb.values())
    if not na or not nb:
        raise ValueError("both samples need at least one value")
    keys = sorted(set(ca) | set(cb))
    return (np.array([ca[k] / na for k in keys]), np.array([cb[k] / nb for k in keys]))


def _psi(r: np.ndarray, c: np.ndarray) -> float:
    r, c = np.clip(r, _EPS, None), np.clip(c, _EPS, None)
    return float(np.sum((c - r) * np.log(c / r)))
