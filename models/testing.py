"""Deterministic tiny models for fast tests: no weights, same input -> same output.

Each kind reads optional knobs from its manifest so tests can make a model slow or failing:
`delay_ms` (sleep per batch), `fail_every` (raise on every n-th batch), `dim`, `labels`.
"""

from __future__ import annotations

import hashlib
import math
import time
from pathlib import Path

from models.errors import TandemModelError
from models.ops import read_manifest, register_kind
from models.schemas import ClassifyIn, ClassifyOut, EmbedIn, EmbedOut, RankedDocument, RerankIn, RerankOut


def hash_vector(text: str, dim: int) -> list[float]:
    """A unit vector derived from the text's sha256 (stable across processes)."""
    raw = hashlib.sha256(text.encode()).digest()
    vals = [(raw[i % len(raw)] - 127.5) / 127.5 for i in range(dim)]
    norm = math.sqrt(sum(v * v for v in vals)) or 1.0
    return [v / norm for v in vals]


class InjectedFailure(TandemModelError):
    """Raised by a tiny model configured to fail."""


class _Tiny:
    task = ""

    def load(self, artifact_dir: Path, device: str) -> None:
        m = read_manifest(artifact_dir)
        self.delay_s = float(m.get("delay_ms", 0)) / 1000
        self.fail_every = int(m.get("fail_every", 0))
        self.dim = int(m.get("dim", 8))
        self.labels = list(m.get("labels", ["negative", "positive"]))
        self.salt = str(m.get("salt", ""))
        self._batches = 0

    def _tick(self) -> None:
        self._batches += 1
        if self.delay_s:
            time.sleep(self.delay_s)
        if self.fail_every and self._batches % self.fail_every == 0:
            raise InjectedFailure(f"injected failure on batch {self._batches}")


@register_kind("tiny-embed")
class TinyEmbedder(_Tiny):
    task = "embed"

    def predict_batch(self, inputs: list[EmbedIn]) -> list[EmbedOut]:
        self._tick()
        return [EmbedOut(embedding=hash_vector(self.salt + x.text, self.dim)) for x in inputs]


@register_kind("tiny-classify")
class TinyClassifier(_Tiny):
    task = "classify"

    def predict_batch(self, inputs: list[ClassifyIn]) -> list[ClassifyOut]:
        self._tick()
        out = []
        for x in inputs:
            vec = hash_vector(self.salt + x.text, len(self.labels))
            exps = [math.exp(v) for v in vec]
            total = sum(exps)
            scores = {label: e / total for label, e in zip(self.labels, exps)}
            best = max(scores, key=scores.get)
            out.append(ClassifyOut(label=best, score=scores[best], scores=scores))
        return out


@register_kind("tiny-rerank")
class TinyReranker(_Tiny):
    task = "rerank"

    def predict_batch(self, inputs: list[RerankIn]) -> list[RerankOut]:
        self._tick()
        out = []
        for x in inputs:
            q = x.query_embedding or hash_vector(self.salt + x.query, self.dim)
            docs = x.document_embeddings or [hash_vector(self.salt + d, self.dim) for d in x.documents]
            scored = [
                RankedDocument(index=i, document=d, score=sum(a * b for a, b in zip(q, v)))
                for i, (d, v) in enumerate(zip(x.documents, docs))
            ]
            scored.sort(key=lambda r: -r.score)
            out.append(RerankOut(results=scored[: x.top_n] if x.top_n else scored))
        return out


def write_tiny_artifact(dest: Path, kind: str, **knobs) -> Path:
    """Write a tiny model's artifact directory (a manifest only) and return it."""
    import json

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "manifest.json").write_text(json.dumps({"kind": kind, **knobs}, sort_keys=True))
    return dest
