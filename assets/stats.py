"""Distribution distances, summaries and the canary guard's tests, shared by the canary and drift assets.

Pure functions. The normal distribution comes from `math.erf` (no SciPy): the guard's tests are
large-sample (normal-approximation) tests, which is why each is applied only above a minimum sample.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

__all__ = [
    "mean_bounds",
    "normal_cdf",
    "normal_quantile",
    "p95",
    "parse_summaries",
    "psi",
    "psi_categorical",
    "tv_distance",
    "two_proportion_test",
    "wilson_bounds",
]

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


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z."""
    return 0.5 * (1.0 + math.erf(z / math.sqrt(2.0)))


def normal_quantile(p: float) -> float:
    """The z with P(Z <= z) = p (bisection on `normal_cdf`, to ~1e-9), e.g. 1.645 for 0.95."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a probability strictly between 0 and 1 is needed, got {p}")
    lo, hi = -40.0, 40.0
    while hi - lo > 1e-10:
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if normal_cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


def two_proportion_test(errors_a: int, n_a: int, errors_b: int, n_b: int) -> float:
    """One-sided p-value of the pooled two-proportion z-test of H1: rate(b) > rate(a).

    1.0 when both rates are 0 or both 1 (no variance: no evidence that b is worse).
    """
    if n_a <= 0 or n_b <= 0:
        raise ValueError(f"both samples need at least one trial, got n_a={n_a}, n_b={n_b}")
    pooled = (errors_a + errors_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return 1.0
    z = (errors_b / n_b - errors_a / n_a) / se
    return 1.0 - normal_cdf(z)


def wilson_bounds(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at `confidence`."""
    if n <= 0:
        raise ValueError(f"a proportion needs at least one trial, got n={n}")
    z = normal_quantile(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_bounds(values: Sequence[float], confidence: float) -> tuple[float, float, float]:
    """(mean, lower, upper): one-sided normal-approximation bounds of the mean, each at `confidence`."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        raise ValueError("a mean needs at least one value")
    mean = float(arr.mean())
    if arr.size == 1:
        return mean, mean, mean
    half = normal_quantile(confidence) * float(arr.std(ddof=1)) / math.sqrt(arr.size)
    return mean, mean - half, mean + half


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
