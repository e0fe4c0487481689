"""Offline evaluations that a model version records in its metrics, and a quick in-process timing.

Every evaluation is one dict under `metrics["evaluation"]`, the convention an offline gate reads:

    {"method": "reference", "against": "embedder@1", "metric": "cosine_mean", "value": 0.9993,
     "threshold": 0.999, "passed": true, "n": 300, ...}

`method` is "reference" (agreement with a reference version's outputs on the same inputs),
"labelled" (a score on labelled rows) or, for the reference itself, `{"method": "reference",
"passed": true, "note": "the reference"}`.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict

import numpy as np

from models.schemas import ClassifyIn, EmbedIn, RerankIn

__all__ = [
    "classifier_agreement",
    "embed_vectors",
    "embedder_agreement",
    "labelled_evaluation",
    "predicted_labels",
    "reference_itself",
    "rerank_inputs",
    "reranker_agreement",
    "throughput",
    "top1",
]

COSINE_FP32 = 0.999
COSINE_INT8 = 0.99
ACCURACY_POINTS = 0.005
TOP1_AGREEMENT = 0.95


def reference_itself() -> dict:
    """The evaluation a reference version records: it is what the others are compared with."""
    return {"method": "reference", "passed": True, "note": "the reference"}


def labelled_evaluation(metrics: dict, *, threshold: float | None = None) -> dict:
    """A trained model's own holdout score as an evaluation."""
    value = float(metrics["accuracy"])
    passed = True if threshold is None else value >= threshold
    return {"method": "labelled", "metric": "accuracy", "value": value, "threshold": threshold,
            "passed": passed, "n": int(metrics.get("n_test", 0)), "macro_f1": metrics.get("macro_f1")}


def _batched(op, inputs: list, batch: int = 64) -> list:
    out: list = []
    for start in range(0, len(inputs), batch):
        out.extend(op.predict_batch(inputs[start : start + batch]))
    return out


def embed_vectors(op, texts: list[str]) -> np.ndarray:
    """An embed op's vectors for `texts` as an (n, dim) array."""
    return np.array([o.embedding for o in _batched(op, [EmbedIn(text=t) for t in texts])], dtype=np.float32)


def embedder_agreement(reference: np.ndarray, op, texts: list[str], *, against: str, threshold: float) -> dict:
    """Cosine of `op`'s vectors to the `reference` vectors of `texts` (the mean must reach `threshold`)."""
    cos = np.sum(embed_vectors(op, texts) * reference, axis=1)
    mean = float(cos.mean())
    return {"method": "reference", "against": against, "metric": "cosine_mean", "value": round(mean, 6),
            "threshold": threshold, "passed": mean >= threshold, "n": len(texts), "cosine_min": round(float(cos.min()), 6),
            "cosine_p01": round(float(np.quantile(cos, 0.01)), 6)}


def predicted_labels(op, rows: list[dict]) -> list[str]:
    """A classify op's labels for `rows` ({"text", ...})."""
    return [o.label for o in _batched(op, [ClassifyIn(text=r["text"]) for r in rows])]


def classifier_agreement(reference: list[str], op, rows: list[dict], *, against: str,
                         points: float = ACCURACY_POINTS) -> dict:
    """Accuracy of `op` on labelled `rows`, passing within `points` (a fraction) of the `reference` labels'."""
    truth = [r["label"] for r in rows]
    got = predicted_labels(op, rows)
    acc_ref = float(np.mean([a == b for a, b in zip(reference, truth)]))
    acc = float(np.mean([a == b for a, b in zip(got, truth)]))
    return {"method": "reference", "against": against, "metric": "accuracy_delta", "value": round(acc - acc_ref, 6),
            "threshold": -points, "passed": acc >= acc_ref - points, "n": len(rows), "accuracy": acc,
            "reference_accuracy": acc_ref, "label_agreement": float(np.mean([a == b for a, b in zip(got, reference)]))}


def rerank_inputs(rows: list[dict], *, queries: int, documents: int = 8, seed: int = 0) -> list[RerankIn]:
    """Queries that each rank `documents` texts of the query's own label (close calls, not easy ones)."""
    rng = random.Random(seed)
    by_label: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        by_label[r["label"]].append(r["text"])
    labels = sorted(k for k, v in by_label.items() if len(v) > documents)
    if not labels:
        raise ValueError(f"rerank queries need a label with more than {documents} rows; got {len(rows)} rows")
    out = []
    for i in range(queries):
        pool = by_label[labels[i % len(labels)]]
        picked = rng.sample(pool, documents + 1)
        out.append(RerankIn(query=picked[0], documents=picked[1:]))
    return out


def top1(op, inputs: list[RerankIn]) -> list[int]:
    """The index of each query's best document under a rerank op."""
    return [o.results[0].index for o in _batched(op, inputs, 16)]


def reranker_agreement(reference: list[int], op, inputs: list[RerankIn], *, against: str,
                       threshold: float = TOP1_AGREEMENT) -> dict:
    """Share of queries whose top-1 document under `op` is the `reference` top-1."""
    value = float(np.mean([a == b for a, b in zip(reference, top1(op, inputs))]))
    return {"method": "reference", "against": against, "metric": "top1_agreement", "value": value,
            "threshold": threshold, "passed": value >= threshold, "n": len(inputs)}


def throughput(ops: dict[str, object], inputs: list, *, batch: int = 32, rounds: int = 3) -> dict[str, float]:
    """Inputs per second of each op's `predict_batch` over batches of `batch`: the best of `rounds` passes.

    The ops take turns within every round, so a burst of other work on a shared machine falls on
    all of them alike, and the best pass counts, because other processes only ever slow one down.
    """
    for op in ops.values():
        op.predict_batch(inputs[:batch])  # warm-up: first-call allocations are not the steady state
    best = dict.fromkeys(ops, 0.0)
    for _ in range(rounds):
        for key, op in ops.items():
            started = time.perf_counter()
            for start in range(0, len(inputs), batch):
                op.predict_batch(inputs[start : start + batch])
            best[key] = max(best[key], len(inputs) / (time.perf_counter() - started))
    return best
