"""Offline evaluations (`models.evaluation`) on fake ops: the record an offline gate reads, and its verdicts."""

from __future__ import annotations

import numpy as np
import pytest

from models.evaluation import (
    classifier_agreement,
    embedder_agreement,
    labelled_evaluation,
    predicted_labels,
    reference_itself,
    rerank_inputs,
    reranker_agreement,
    throughput,
    top1,
)
from models.schemas import ClassifyOut, EmbedIn, EmbedOut, RankedDocument, RerankOut

GATE_KEYS = {"method", "against", "metric", "value", "threshold", "passed", "n"}


class _Embed:
    def __init__(self, noise: float):
        self.noise = noise

    def predict_batch(self, inputs):
        out = []
        for x in inputs:
            v = np.random.default_rng(len(x.text)).normal(size=8)
            v[0] += self.noise
            out.append(EmbedOut(embedding=(v / np.linalg.norm(v)).tolist()))
        return out


class _Classify:
    def __init__(self, wrong_every: int = 0):
        self.wrong_every = wrong_every

    def predict_batch(self, inputs):
        outs = []
        for x in inputs:
            label = x.text.split()[0]
            if self.wrong_every and int(x.text.split()[1]) % self.wrong_every == 0:
                label = "other"
            outs.append(ClassifyOut(label=label, score=1.0, scores={label: 1.0}))
        return outs


class _Rerank:
    def __init__(self, flip: bool):
        self.flip = flip

    def predict_batch(self, inputs):
        best = 1 if self.flip else 0
        return [RerankOut(results=[RankedDocument(index=best, document=x.documents[best], score=1.0)]) for x in inputs]


ROWS = [{"text": f"{label} {i} words", "label": label} for i in range(60) for label in ("a", "b")]


def test_embedder_agreement_passes_the_same_vectors_and_fails_moved_ones():
    texts = [r["text"] for r in ROWS]
    reference = np.array([o.embedding for o in _Embed(0.0).predict_batch([EmbedIn(text=t) for t in texts])])
    same = embedder_agreement(reference, _Embed(0.0), texts, against="embedder@1", threshold=0.999)
    moved = embedder_agreement(reference, _Embed(2.0), texts, against="embedder@1", threshold=0.999)
    assert GATE_KEYS <= set(same) and same["method"] == "reference" and same["metric"] == "cosine_mean"
    assert same["passed"] and same["value"] == pytest.approx(1.0) and same["n"] == len(texts)
    assert not moved["passed"] and moved["cosine_min"] <= moved["value"] < 0.999


def test_classifier_agreement_allows_half_a_point_and_no_more():
    reference = predicted_labels(_Classify(), ROWS)
    assert classifier_agreement(reference, _Classify(), ROWS, against="classifier@1")["passed"]
    worse = classifier_agreement(reference, _Classify(wrong_every=7), ROWS, against="classifier@1")
    assert GATE_KEYS <= set(worse) and not worse["passed"] and worse["value"] < -0.005
    assert worse["reference_accuracy"] == 1.0 and worse["label_agreement"] < 1.0


def test_reranker_agreement_counts_top1_matches():
    inputs = rerank_inputs(ROWS, queries=10, documents=4)
    assert all(len(x.documents) == 4 and x.query not in x.documents for x in inputs)
    reference = top1(_Rerank(False), inputs)
    assert reranker_agreement(reference, _Rerank(False), inputs, against="reranker@1")["value"] == 1.0
    flipped = reranker_agreement(reference, _Rerank(True), inputs, against="reranker@1")
    assert GATE_KEYS <= set(flipped) and flipped["value"] == 0.0 and not flipped["passed"]
    with pytest.raises(ValueError, match="more than 4 rows"):
        rerank_inputs(ROWS[:4], queries=1, documents=4)


def test_references_pass_by_definition_and_labelled_scores_carry_their_figures():
    assert reference_itself() == {"method": "reference", "passed": True, "note": "the reference"}
    ev = labelled_evaluation({"accuracy": 0.93, "macro_f1": 0.92, "n_test": 120})
    assert ev["method"] == "labelled" and ev["metric"] == "accuracy" and ev["value"] == 0.93 and ev["n"] == 120


def test_throughput_reports_every_op():
    inputs = [EmbedIn(text=f"t {i}") for i in range(10)]
    rates = throughput({"1": _Embed(0.0), "2": _Embed(1.0)}, inputs, batch=4, rounds=2)
    assert set(rates) == {"1", "2"} and all(r > 0 for r in rates.values())
