"""The ONNX Runtime reference models on the real MiniLM weights: quality against torch, the op contract.

The `.onnx` files are exported once into the shared ONNX cache (`models.encoders.default_onnx_cache`)
and reused by later sessions; every check compares with torch fp32 on held-out demo sentences.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from models.artifacts import ArtifactStore
from models.classifier import MiniLMClassifier, rebase_classifier, train_classifier
from models.corpus import generate_demo_corpus
from models.embedder import get_encoder, write_embedder_artifact
from models.encoders import default_onnx_cache
from models.errors import DigestMismatchError
from models.evaluation import (
    classifier_agreement,
    embed_vectors,
    predicted_labels,
    rerank_inputs,
    reranker_agreement,
    top1,
)
from models.onnx_encoder import OrtEmbedder, OrtInt8Embedder, write_onnx_embedder_artifact
from models.ops import load_op
from models.reranker import MiniLMReranker, write_reranker_artifact
from models.schemas import ClassifyIn, EmbedIn, RerankIn

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def offline():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("TRANSFORMERS_OFFLINE", "1")
        yield


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx-models")


@pytest.fixture(scope="module")
def cache():
    return default_onnx_cache()


@pytest.fixture(scope="module")
def store(workdir):
    return ArtifactStore(str(workdir / "store"))


def _stored_op(store: ArtifactStore, artifact_dir):
    """Load an op the way a server does: from the content-addressed store, digest-verified."""
    return load_op(store.fetch(store.put(artifact_dir)))


@pytest.fixture(scope="module")
def onnx_fp32(workdir, cache, store):
    return _stored_op(store, write_onnx_embedder_artifact(workdir / "onnx-fp32", "fp32", cache))


@pytest.fixture(scope="module")
def onnx_int8(workdir, cache, store):
    return _stored_op(store, write_onnx_embedder_artifact(workdir / "onnx-int8", "int8", cache))


@pytest.fixture(scope="module")
def torch_fp32(workdir):
    return load_op(write_embedder_artifact(workdir / "torch-fp32", precision="fp32"))


@pytest.fixture(scope="module")
def rows():
    """Held-out demo rows: none is in the 600-row training corpus the classifier below sees."""
    seen = {r["text"] for r in generate_demo_corpus(600, seed=0)}
    return [r for r in generate_demo_corpus(400, seed=3) if r["text"] not in seen][:240]


@pytest.fixture(scope="module")
def reference_vectors(torch_fp32, rows):
    return embed_vectors(torch_fp32, [r["text"] for r in rows])


def _cosines(op, rows, reference_vectors):
    return np.sum(embed_vectors(op, [r["text"] for r in rows]) * reference_vectors, axis=1)


def test_onnx_embedders_load_from_the_store_and_keep_the_contract(onnx_fp32, onnx_int8):
    assert isinstance(onnx_fp32, OrtEmbedder) and isinstance(onnx_int8, OrtInt8Embedder)
    texts = ["A new phone.", "Central banks raised interest rates again, and bond yields climbed.", "?", "Rain."]
    for op in (onnx_fp32, onnx_int8):
        assert op.task == "embed"
        outs = op.predict_batch([EmbedIn(text=t) for t in texts])
        vecs = np.array([o.embedding for o in outs])
        assert vecs.shape == (len(texts), 384)
        np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
        alone = np.array(op.predict_batch([EmbedIn(text=texts[1])])[0].embedding)
        if op is onnx_fp32:
            np.testing.assert_allclose(alone, vecs[1], atol=1e-4)  # neighbours and padding do not leak in
        else:  # dynamic int8 scales activations per batch: neighbours move a vector, but only slightly
            assert float(alone @ vecs[1]) > 0.99
        assert op.input_lengths([EmbedIn(text=t) for t in texts])[0] < op.input_lengths([EmbedIn(text=texts[1])])[0]


def test_onnx_fp32_matches_torch_fp32(onnx_fp32, rows, reference_vectors):
    cos = _cosines(onnx_fp32, rows, reference_vectors)
    assert cos.mean() >= 0.999 and cos.min() >= 0.999, (cos.mean(), cos.min())


def test_onnx_int8_stays_close_to_torch_fp32_but_is_really_quantised(onnx_int8, rows, reference_vectors):
    cos = _cosines(onnx_int8, rows, reference_vectors)
    assert cos.mean() >= 0.99 and cos.min() >= 0.98, (cos.mean(), cos.min())
    assert cos.mean() < 0.99999  # int8 weights do move the vectors


def test_int8_artifact_is_smaller_than_fp32_and_records_its_recipe(workdir, onnx_int8, onnx_fp32):
    fp32 = json.loads((workdir / "onnx-fp32" / "manifest.json").read_text())
    int8 = json.loads((workdir / "onnx-int8" / "manifest.json").read_text())
    assert int8["recipe"]["quantize_dynamic"]["per_channel"] is True
    assert fp32["recipe"]["optimizer"]["model_type"] == "bert"
    assert len(int8["weights_sha256"]) == 64 and int8["file_sha256"] != fp32["file_sha256"]
    size = {k: (workdir / f"onnx-{k}" / "encoder.onnx").stat().st_size for k in ("fp32", "int8")}
    assert size["int8"] < 0.8 * size["fp32"]  # the word embeddings (47 MB) stay fp32


def test_a_tampered_onnx_file_is_refused(workdir, cache):
    art = write_onnx_embedder_artifact(workdir / "onnx-tampered", "int8", cache)
    with (art / "encoder.onnx").open("r+b") as f:
        f.seek(-8, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(DigestMismatchError, match="modified or corrupted"):
        load_op(art)


@pytest.fixture(scope="module")
def trained(workdir):
    return train_classifier(generate_demo_corpus(600, seed=0), workdir / "classifier", epochs=30, seed=0)


def test_classifier_over_onnx_int8_keeps_its_accuracy_and_shares_the_encoder(trained, workdir, cache, store, rows,
                                                                            onnx_int8):
    reference = load_op(trained.artifact_dir)
    op = _stored_op(store, rebase_classifier(trained.artifact_dir, workdir / "clf-onnx-int8", "onnx-int8", cache))
    assert isinstance(op, MiniLMClassifier) and op.encoder is onnx_int8.encoder
    ev = classifier_agreement(predicted_labels(reference, rows), op, rows, against="classifier@1")
    assert ev["passed"] and ev["reference_accuracy"] > 0.8, ev
    outs = op.predict_batch([ClassifyIn(text=r["text"]) for r in rows[:5]])
    assert len(outs) == 5 and all(o.label in trained.labels for o in outs)


def test_reranker_over_onnx_agrees_with_torch_on_the_top_document(workdir, cache, store, rows):
    reference = load_op(write_reranker_artifact(workdir / "rr-torch"))
    inputs = rerank_inputs(rows, queries=40, seed=1)
    for variant in ("fp32", "int8"):
        op = _stored_op(store, write_reranker_artifact(workdir / f"rr-{variant}", backend=f"onnx-{variant}",
                                                       cache_root=cache))
        assert isinstance(op, MiniLMReranker)
        ev = reranker_agreement(top1(reference, inputs), op, inputs, against="reranker@1")
        if variant == "fp32":
            assert ev["passed"], (variant, ev)
        else:
            # int8 sits at the threshold: over 200 queries on four seeds its top-1 agreement read
            # 0.925-0.97 (near-tied documents flip). `tandem init` records it and makes it stable only
            # when it passes; here it must be close (a broken export agrees on ~1 query in 8).
            assert ev["value"] >= 0.85 and ev["threshold"] == 0.95, (variant, ev)
        [out] = op.predict_batch([RerankIn(query="recipe for homemade bread", documents=[
            "Bond yields rose.", "How to bake sourdough bread at home.", "The keeper saved a penalty."], top_n=2)])
        assert out.results[0].index == 1 and len(out.results) == 2


@pytest.mark.parametrize("backend", ["torch", "onnx"])
def test_encoders_in_length_buckets_match_each_text_encoded_alone(backend, rows, onnx_fp32):
    encoder = get_encoder("fp32") if backend == "torch" else onnx_fp32.encoder
    texts = [r["text"] for r in rows[:40]] + ["Rain.", "word " * 400]  # a very short and a truncated long one
    bucketed = encoder.encode(texts, batch_size=8)
    alone = np.concatenate([encoder.encode([t]) for t in texts])
    np.testing.assert_allclose(bucketed, alone, atol=1e-4)


def test_a_model_server_serves_onnx_int8_beside_torch_fp32(tmp_path, cache):
    """A real server process: the ORT session is created in the inference worker, next to torch."""
    import httpx

    from models.settings import TandemSettings
    from orchestration.bootstrap import Platform
    from tests.integration.conftest import base_env, model_server

    home = tmp_path / "home"
    reg = Platform.open(TandemSettings(home=home)).registry
    reg.register("embedder", "embed", write_embedder_artifact(tmp_path / "e1", precision="fp32"), version="1")
    reg.register("embedder", "embed", write_onnx_embedder_artifact(tmp_path / "e4", "int8", cache), version="4")
    server = model_server(base_env(home), home, "embedder", "1,4").start(tmp_path)
    try:
        server.wait_healthy(timeout_s=180)
        url = server.health.removesuffix("/health") + "/predict"
        texts = ["Rates rose again.", "The striker scored twice in the derby on a cold evening."]
        vectors = {}
        for version in ("1", "4"):
            r = httpx.post(url, json={"version": version, "inputs": [{"text": t} for t in texts]}, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["version"] == version and len(r.json()["outputs"]) == len(texts)
            vectors[version] = np.array([o["embedding"] for o in r.json()["outputs"]])
        assert np.sum(vectors["1"] * vectors["4"], axis=1).min() > 0.98
        assert not np.allclose(vectors["1"], vectors["4"], atol=1e-4)
    finally:
        server.stop()


def test_passive_sessions_spin_briefly_instead_of_waking_a_thread_per_kernel(monkeypatch):
    from models.onnx_encoder import PASSIVE_SPIN_US, _session_options

    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")  # as model servers run
    opts = _session_options(2)
    assert opts.get_session_config_entry("session.intra_op.allow_spinning") == "1"
    assert opts.get_session_config_entry("session.intra_op.spin_duration_us") == str(PASSIVE_SPIN_US)
    monkeypatch.delenv("OMP_WAIT_POLICY")  # in-process (bench, batch jobs): ONNX Runtime's own default
    with pytest.raises(RuntimeError):  # an entry never set
        _session_options(2).get_session_config_entry("session.intra_op.spin_duration_us")


def test_a_lone_row_sharing_the_cores_runs_on_one_thread_with_the_same_vector(onnx_fp32, monkeypatch):
    from models.threads import sharing_cores

    encoder = onnx_fp32.encoder
    if encoder._single is None:
        pytest.skip("one usable core: every row runs on the one session anyway")
    used = []
    pooled = encoder._pooled
    monkeypatch.setattr(encoder, "_pooled", lambda session, ids, mask: used.append(session) or pooled(session, ids, mask))
    text = [EmbedIn(text="Central banks raised interest rates again.")]
    alone = np.array(onnx_fp32.predict_batch(text)[0].embedding)
    with sharing_cores():
        shared = np.array(onnx_fp32.predict_batch(text)[0].embedding)
    assert used == [encoder._session, encoder._single]  # every thread on a free machine, one beside others
    np.testing.assert_allclose(shared, alone, atol=1e-5)
