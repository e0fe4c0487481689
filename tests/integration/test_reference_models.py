"""The reference models on the real MiniLM weights (loaded once per module, offline)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from models.artifacts import ArtifactStore
from models.classifier import (
    MiniLMClassifier,
    corrupt_classifier_artifact,
    evaluate_classifier,
    train_classifier,
)
from models.corpus import generate_demo_corpus
from models.embedder import MiniLMEmbedder, MiniLMFp16Embedder, MiniLMInt8Embedder, write_embedder_artifact
from models.errors import DigestMismatchError, SchemaError
from models.ops import load_op
from models.reranker import MiniLMReranker, write_reranker_artifact
from models.schemas import ClassifyIn, EmbedIn, RerankIn

pytestmark = pytest.mark.integration

TEXTS = [
    "The striker scored twice in the derby.",
    "Central banks raised interest rates again, and bond yields climbed to their highest level in a decade.",
    "A new phone.",
    "The chef served a spicy ramen with fresh noodles to a packed dining room on Saturday night.",
    "Doctors warned about rising cases of seasonal flu in rural communities this winter.",
    "Cheap flights to Lisbon.",
]


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("reference-models")


@pytest.fixture(scope="module")
def fp32(workdir):
    return load_op(write_embedder_artifact(workdir / "minilm", precision="fp32"))


@pytest.fixture(scope="module")
def int8(workdir):
    return load_op(write_embedder_artifact(workdir / "minilm-int8", precision="int8"))


@pytest.fixture(scope="module")
def trained(workdir):
    return train_classifier(generate_demo_corpus(1500, seed=0), workdir / "classifier", epochs=30, seed=0)


@pytest.fixture(scope="module")
def classifier(trained):
    return load_op(trained.artifact_dir)


@pytest.fixture(scope="module")
def eval_rows():
    seen = {r["text"] for r in generate_demo_corpus(1500, seed=0)}
    return [r for r in generate_demo_corpus(240, seed=1) if r["text"] not in seen]


@pytest.fixture(scope="module")
def good_eval(classifier, eval_rows):
    return evaluate_classifier(classifier, eval_rows)


@pytest.fixture(scope="module")
def reranker(workdir):
    return load_op(write_reranker_artifact(workdir / "reranker"))


def _vectors(op, texts):
    return np.array([o.embedding for o in op.predict_batch([EmbedIn(text=t) for t in texts])])


def test_load_op_loads_each_reference_kind(fp32, int8, classifier, reranker):
    assert isinstance(fp32, MiniLMEmbedder) and fp32.task == "embed"
    assert isinstance(int8, MiniLMInt8Embedder) and int8.task == "embed"
    assert isinstance(classifier, MiniLMClassifier) and classifier.task == "classify"
    assert isinstance(reranker, MiniLMReranker) and reranker.task == "rerank"


def test_ops_in_one_process_share_one_fp32_encoder(fp32, classifier, reranker):
    assert fp32.encoder is classifier.encoder is reranker.encoder
    assert fp32.encoder is not None


def test_embeddings_are_384_dim_and_unit_length(fp32):
    vecs = _vectors(fp32, TEXTS)
    assert vecs.shape == (len(TEXTS), 384)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)


def test_embedding_does_not_depend_on_batch_order_or_neighbours(fp32):
    base = _vectors(fp32, TEXTS)
    order = list(range(len(TEXTS)))
    random.Random(7).shuffle(order)
    shuffled = _vectors(fp32, [TEXTS[i] for i in order])
    np.testing.assert_allclose(shuffled, base[order], atol=1e-5)
    alone = _vectors(fp32, [TEXTS[2]])
    np.testing.assert_allclose(alone[0], base[2], atol=1e-5)
    # Different texts really do get different vectors (order is restored, not collapsed).
    assert float(base[0] @ base[1]) < 0.9


def test_int8_is_close_to_fp32_but_not_identical(fp32, int8):
    texts = TEXTS + [r["text"] for r in generate_demo_corpus(60, seed=5)]
    a, b = _vectors(fp32, texts), _vectors(int8, texts)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.95, cos.min()
    assert np.abs(a - b).max() > 1e-3
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_fp16_is_within_fp32_tolerance_and_runs_in_half_precision(fp32, workdir):
    fp16 = load_op(write_embedder_artifact(workdir / "minilm-fp16", precision="fp16"))
    assert isinstance(fp16, MiniLMFp16Embedder) and fp16.encoder is not fp32.encoder
    assert next(fp16.encoder._model.parameters()).dtype == torch.float16
    texts = TEXTS + [r["text"] for r in generate_demo_corpus(60, seed=5)]
    a, b = _vectors(fp32, texts), _vectors(fp16, texts)
    cos = (a * b).sum(axis=1)
    assert cos.min() > 0.999, cos.min()  # the fp32 threshold init evaluates it against
    assert np.abs(a - b).max() > 1e-6  # really computed in half precision, not fp32 again
    np.testing.assert_allclose(np.linalg.norm(b, axis=1), 1.0, atol=1e-5)


def test_classifier_beats_80_percent_and_returns_valid_scores(trained, classifier, good_eval):
    assert trained.metrics["accuracy"] > 0.8
    assert set(trained.metrics) == {"accuracy", "macro_f1", "n_train", "n_test"}
    assert trained.metrics["n_train"] + trained.metrics["n_test"] == 1500
    assert len(trained.labels) >= 5
    assert good_eval["accuracy"] > 0.8
    outs = classifier.predict_batch([ClassifyIn(text=t) for t in TEXTS])
    assert len(outs) == len(TEXTS)
    for out in outs:
        assert set(out.scores) == set(trained.labels)
        assert sum(out.scores.values()) == pytest.approx(1.0, abs=1e-4)
        assert out.label == max(out.scores, key=out.scores.get)
        assert out.score == pytest.approx(out.scores[out.label])
    assert outs[0].label == "sports" and outs[3].label == "food"


def test_classifier_artifact_records_its_provenance(trained):
    manifest = json.loads((trained.artifact_dir / "manifest.json").read_text())
    assert manifest["kind"] == "classifier-head"
    assert manifest["labels"] == trained.labels
    assert manifest["training_data_hash"] == trained.training_data_hash
    assert manifest["metrics"] == trained.metrics
    assert manifest["encoder"]["kind"] == "minilm" and len(manifest["encoder"]["weights_sha256"]) == 64


def test_training_is_deterministic_and_independent_of_row_order(workdir):
    rows = generate_demo_corpus(60, seed=9)
    a = train_classifier(rows, workdir / "det-a", epochs=2, seed=1)
    b = train_classifier(list(reversed(rows)), workdir / "det-b", epochs=2, seed=1)
    assert a.training_data_hash == b.training_data_hash
    assert a.metrics == b.metrics
    sa = torch.load(a.artifact_dir / "head.pt", weights_only=True)
    sb = torch.load(b.artifact_dir / "head.pt", weights_only=True)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_corrupt_classifier_is_much_worse(trained, good_eval, eval_rows, workdir):
    bad = load_op(corrupt_classifier_artifact(trained.artifact_dir, workdir / "classifier-bad"))
    good_acc = good_eval["accuracy"]
    bad_acc = evaluate_classifier(bad, eval_rows)["accuracy"]
    assert bad_acc < good_acc - 0.5, (good_acc, bad_acc)


def test_reranker_puts_the_relevant_document_first(reranker):
    docs = [
        "Bond yields rose after the central bank meeting.",
        "The goalkeeper saved a penalty in the cup final.",
        "How to bake sourdough bread with a crisp crust at home.",
        "A new processor doubles battery life in laptops.",
    ]
    [out] = reranker.predict_batch([RerankIn(query="recipe for homemade bread", documents=docs)])
    assert out.results[0].index == 2
    assert out.results[0].document == docs[2]
    scores = [r.score for r in out.results]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4
    [top] = reranker.predict_batch([RerankIn(query="recipe for homemade bread", documents=docs, top_n=2)])
    assert [r.index for r in top.results] == [r.index for r in out.results[:2]]


def test_reranker_uses_given_embeddings_without_encoding(reranker, fp32):
    docs = ["Stocks fell sharply.", "The team won the league.", "Flu cases are rising."]
    q = _vectors(fp32, ["football match result"])[0].tolist()
    d = _vectors(fp32, docs).tolist()
    real = reranker.encoder

    class _NoEncode:
        kind, dim = real.kind, real.dim

        def encode(self, *_a, **_k):
            raise AssertionError("encoder called although embeddings were given")

    reranker.encoder = _NoEncode()
    try:
        [out] = reranker.predict_batch([RerankIn(query="x", documents=docs, query_embedding=q, document_embeddings=d)])
    finally:
        reranker.encoder = real
    assert out.results[0].index == 1
    [plain] = reranker.predict_batch([RerankIn(query="football match result", documents=docs)])
    assert [r.index for r in plain.results] == [r.index for r in out.results]


def test_tampered_classifier_artifact_is_refused_by_the_store(trained, workdir):
    store = ArtifactStore(str(workdir / "store"))
    ref = store.put(trained.artifact_dir)
    assert isinstance(load_op(store.fetch(ref)), MiniLMClassifier)
    stored = store.fetch(ref)
    with (stored / "head.pt").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(DigestMismatchError, match="modified or corrupted"):
        store.fetch(ref)


def test_artifact_pinned_to_other_weights_is_refused(workdir):
    path = write_embedder_artifact(workdir / "minilm-other", precision="fp32")
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["weights_sha256"] = "f" * 64
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DigestMismatchError, match="f" * 64):
        load_op(path)


def test_reranker_rejects_embeddings_that_do_not_match_the_documents(reranker):
    with pytest.raises(SchemaError, match="2 document_embeddings for 3 documents"):
        reranker.predict_batch(
            [RerankIn(query="q", documents=["a", "b", "c"], document_embeddings=[[1.0, 0.0], [0.0, 1.0]])]
        )
    with pytest.raises(SchemaError, match="dims"):
        reranker.predict_batch([RerankIn(query="q", documents=["a"], query_embedding=[1.0, 0.0, 0.0])])
