"""Shared setup for the Dagster integration tests: a TANDEM_HOME in tmp_path with tiny registered models."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from assets.resources import build_resources
from lakehouse import Lake
from models.artifacts import ArtifactStore
from models.registry import Registry
from models.settings import TandemSettings
from models.testing import write_tiny_artifact

LABELS = ["finance", "sports", "technology"]


@dataclass
class Home:
    """A TANDEM_HOME with embedder, classifier and reranker v1 (tiny models) registered and stable."""

    root: Path
    settings: TandemSettings
    lake: Lake
    registry: Registry
    resources: dict

    def artifact(self, name: str, kind: str, **knobs) -> Path:
        return write_tiny_artifact(self.root / "src" / name, kind, **knobs)

    def inbox(self, day: date) -> Path:
        path = self.settings.home / "inbox" / day.isoformat()
        path.mkdir(parents=True, exist_ok=True)
        return path


def make_home(tmp_path: Path) -> Home:
    settings = TandemSettings(home=tmp_path / "home")
    lake = Lake(settings.lake_root)
    registry = Registry(lake, ArtifactStore(settings.artifacts_root))
    home = Home(tmp_path, settings, lake, registry, build_resources(home=str(settings.home)))
    for name, task, kind, knobs in [
        ("embedder", "embed", "tiny-embed", {"dim": 8}),
        ("classifier", "classify", "tiny-classify", {"labels": LABELS}),
        ("reranker", "rerank", "tiny-rerank", {"dim": 8}),
    ]:
        registry.register(name, task, home.artifact(f"{name}-1", kind, **knobs), version="1", actor="test")
        registry.promote(name, "1", actor="test")
    return home


def prediction_rows(
    *, model: str, version: str, arm: str, day: date, n: int, chars: float = 100.0, spread: float = 10.0,
    labels: list[str] | None = None, error_rate: float = 0.0, latency_ms: float = 10.0, tenant: str = "demo",
    at: datetime | None = None, seed: int = 0,
) -> list[dict]:
    """`n` rows of the `predictions` log shaped like the gateway writes them."""
    import random

    rng = random.Random(seed)
    labels = labels or LABELS
    ts = at or datetime.combine(day, time(12), tzinfo=UTC)
    rows = []
    for i in range(n):
        failed = rng.random() < error_rate
        chars_i = max(1, int(rng.gauss(chars, spread)))
        summary = {"input_chars": chars_i, "input_words": max(1, chars_i // 6)}
        if not failed:
            summary |= {"label": rng.choice(labels), "score": round(rng.uniform(0.4, 0.9), 4)}
        rows.append({
            "request_id": f"r-{model}-{version}-{arm}-{day}-{seed}-{i}", "trace_id": None, "tenant": tenant,
            "workflow": "classify", "workflow_version": 1, "step": "classify", "model": model, "version": version,
            "arm": arm, "input_hash": None, "output_summary": json.dumps(summary),
            "latency_ms": latency_ms + rng.random(), "status": "error" if failed else "ok",
            "error": "boom" if failed else None, "cached": False, "ts": ts - timedelta(seconds=i), "day": day,
        })
    return rows
