"""The batch executor runs the same workflow specs as the gateway, in-process over many rows."""

from __future__ import annotations

import math

import pytest

from models.errors import WorkflowError
from models.executor import BatchFailedError, run_workflow_batch
from models.ops import load_op
from models.schemas import ClassifyIn, EmbedIn
from models.testing import write_tiny_artifact
from models.workflows import BUILTIN_WORKFLOWS, load_workflow, parse_workflow

ENRICH = load_workflow(BUILTIN_WORKFLOWS / "enrich.yaml")
SEARCH = load_workflow(BUILTIN_WORKFLOWS / "search.yaml")
CLASSIFY = load_workflow(BUILTIN_WORKFLOWS / "classify.yaml")
VERSIONS = {"embedder": "1", "classifier": "1", "reranker": "1"}


def strict(spec):
    """`spec` without its failure handling (no optional steps, no fallbacks): a failure fails the row."""
    data = spec.model_dump(exclude_none=True)
    for step in data["steps"]:
        step["optional"] = False
        step.pop("fallback", None)
    return parse_workflow(data)


class Counting:
    """Wraps an op and records the size of every batch it is given."""

    def __init__(self, op, fail_on: str | None = None):
        self.op, self.task, self.fail_on, self.batches = op, op.task, fail_on, []

    def predict_batch(self, inputs):
        self.batches.append(len(inputs))
        if self.fail_on is not None and any(getattr(x, "text", None) == self.fail_on for x in inputs):
            raise RuntimeError(f"cannot handle {self.fail_on!r}")
        return self.op.predict_batch(inputs)


class Broken:
    task = "classify"

    def predict_batch(self, inputs):
        raise RuntimeError("model server melted")


@pytest.fixture
def ops(tmp_path):
    made = {
        ("embedder", "1"): load_op(write_tiny_artifact(tmp_path / "e", "tiny-embed", dim=8)),
        ("classifier", "1"): load_op(write_tiny_artifact(tmp_path / "c", "tiny-classify")),
        ("reranker", "1"): load_op(write_tiny_artifact(tmp_path / "r", "tiny-rerank", dim=8)),
    }
    return {key: Counting(op) for key, op in made.items()}


def texts(n: int) -> list[dict]:
    return [{"text": f"document number {i} about topic {i % 7}"} for i in range(n)]


def test_rows_are_gathered_into_model_batches_and_scattered_back_in_order(ops):
    rows = texts(100)
    result = run_workflow_batch(ENRICH, rows, lambda m, v: ops[(m, v)], VERSIONS, batch_size=16)

    assert [r.status for r in result.rows] == ["ok"] * 100
    assert ops[("embedder", "1")].batches == [16] * 6 + [4]
    assert ops[("classifier", "1")].batches == [16] * 6 + [4]
    assert result.model_calls == 14
    expected = ops[("classifier", "1")].op.predict_batch([ClassifyIn(text=rows[37]["text"])])[0]
    assert result.rows[37].output["label"] == expected.label
    assert result.rows[37].output["scores"] == expected.scores
    assert len(result.rows[37].output["embedding"]) == 8
    assert result.rows[37].model_versions == {"embed": "embedder@1", "classify": "classifier@1"}
    assert result.versions == {"embed": "embedder@1", "classify": "classifier@1"}
    assert result.rows_per_s > 0


def test_outputs_do_not_depend_on_batch_size(ops):
    rows = texts(23)
    resolve = lambda m, v: ops[(m, v)]
    one = run_workflow_batch(ENRICH, rows, resolve, VERSIONS, batch_size=1)
    many = run_workflow_batch(ENRICH, rows, resolve, VERSIONS, batch_size=64, batch_sizes={"embedder": 5})
    assert [r.output for r in one.rows] == [r.output for r in many.rows]
    assert ops[("embedder", "1")].batches[-5:] == [5, 5, 5, 5, 3]


def test_for_each_instances_of_all_rows_share_batches_and_return_to_their_row(ops):
    rows = [
        {"query": "q0", "documents": ["a", "b", "c"]},
        {"query": "q1", "documents": ["d"]},
        {"query": "q2", "documents": ["e", "f"], "top_n": 1},
    ]
    result = run_workflow_batch(SEARCH, rows, lambda m, v: ops[(m, v)], VERSIONS, batch_size=64)

    assert [len(r.output["results"]) for r in result.rows] == [3, 1, 1]
    assert {d["document"] for d in result.rows[0].output["results"]} == {"a", "b", "c"}
    # Three query embeddings in one batch, six document embeddings in another.
    assert ops[("embedder", "1")].batches == [3, 6]


def test_a_poison_input_fails_only_its_own_row(ops):
    ops[("classifier", "1")].fail_on = "document number 5 about topic 5"
    result = run_workflow_batch(strict(ENRICH), texts(20), lambda m, v: ops[(m, v)], VERSIONS, batch_size=8)

    statuses = [r.status for r in result.rows]
    assert statuses.count("error") == 1 and statuses[5] == "error"
    assert "step 'classify' failed" in result.rows[5].error
    assert "cannot handle" in result.rows[5].error
    assert result.rows[5].output is None
    assert all(r.output["label"] for i, r in enumerate(result.rows) if i != 5)


def test_invalid_rows_are_reported_not_dropped(ops):
    rows = [*texts(3), {"text": ""}, {"body": "wrong field"}]
    result = run_workflow_batch(ENRICH, rows, lambda m, v: ops[(m, v)], VERSIONS)

    assert len(result.rows) == 5
    assert [r.status for r in result.rows] == ["ok", "ok", "ok", "error", "error"]
    assert result.rows[3].error.startswith("invalid input: text")
    assert "body" in result.rows[4].error


def test_a_failing_optional_step_degrades_rows_instead_of_failing_them(ops):
    spec = parse_workflow({
        "name": "soft", "version": 1, "input": {"text": "str"},
        "steps": [
            {"id": "embed", "model": "embedder", "task": "embed", "inputs": {"text": "$input.text"}},
            {"id": "classify", "model": "classifier", "task": "classify", "inputs": {"text": "$input.text"},
             "optional": True, "retry": {"attempts": 1}},
        ],
        "output": {"embedding": "$embed.embedding", "label": "$classify.label"},
    })
    resolve = lambda m, v: Broken() if m == "classifier" else ops[(m, v)]
    result = run_workflow_batch(spec, texts(4), resolve, VERSIONS)

    assert [r.status for r in result.rows] == ["degraded"] * 4
    assert all(r.output["label"] is None and len(r.output["embedding"]) == 8 for r in result.rows)
    assert result.rows[0].skipped == ("classify",)
    assert result.rows[0].model_versions == {"embed": "embedder@1"}


def test_the_fallback_version_serves_rows_the_primary_failed(ops):
    spec = parse_workflow({
        "name": "fb", "version": 1, "input": {"text": "str"},
        "steps": [{"id": "classify", "model": "classifier", "task": "classify",
                   "inputs": {"text": "$input.text"}, "fallback": {"version": "1"}, "retry": {"attempts": 1}}],
        "output": {"label": "$classify.label"},
    })
    resolve = lambda m, v: Broken() if v == "2" else ops[(m, v)]
    result = run_workflow_batch(spec, texts(3), resolve, {"classifier": "2"})

    assert [r.status for r in result.rows] == ["degraded"] * 3  # a fallback answer is degraded, as online
    assert result.rows[0].model_versions == {"classify": "classifier@1"}
    assert result.rows[0].fallbacks == ("classify",) and result.rows[0].skipped == ()


def test_a_model_that_cannot_load_fails_the_rows_with_the_reason(ops):
    def resolve(m, v):
        if m == "classifier":
            raise FileNotFoundError("artifact gone")
        return ops[(m, v)]

    with pytest.raises(BatchFailedError, match="could not load the model: FileNotFoundError: artifact gone"):
        run_workflow_batch(strict(ENRICH), texts(3), resolve, VERSIONS)


def test_when_every_row_fails_the_batch_raises():
    with pytest.raises(BatchFailedError, match=r"all 5 rows .*model server melted"):
        run_workflow_batch(strict(CLASSIFY), texts(5), lambda m, v: Broken(), {"classifier": "1"})


# --- the shipped workflows with one model failing ----------------------------------------------------


def down(ops, model):
    """A resolver where every call of `model` fails, as if its server were gone."""
    def resolve(m, v):
        if m == model:
            raise ConnectionRefusedError(f"{m} is down")
        return ops[(m, v)]
    return resolve


def test_classify_with_the_classifier_down_answers_the_nearest_label_from_the_embedder(ops):
    result = run_workflow_batch(CLASSIFY, texts(5), down(ops, "classifier"), VERSIONS, batch_size=4)

    labels = set(CLASSIFY.step("classify").fallback.labels)
    assert [r.status for r in result.rows] == ["degraded"] * 5
    for r in result.rows:
        assert r.output["label"] in labels and set(r.output["scores"]) == labels
        assert r.output["score"] == max(r.output["scores"].values())
        assert math.isclose(sum(r.output["scores"].values()), 1.0)
        assert r.fallbacks == ("classify",)
        assert r.model_versions == {"classify": "builtin:nearest_label@embedder@1"}
    # One batch of label prompts and texts together: prompts are embedded once, not per row.
    assert ops[("embedder", "1")].batches == [4, 4, 3]  # 6 prompts + 5 texts in batches of 4


def test_nearest_label_picks_the_label_whose_prompt_embeds_like_the_text(ops):
    # Tiny embeddings are a hash of the text, so a text equal to a label's prompt is nearest to that label.
    spec = parse_workflow({
        "name": "c", "version": 1, "input": {"text": "str"},
        "steps": [{"id": "classify", "model": "classifier", "task": "classify", "inputs": {"text": "$input.text"},
                   "fallback": {"builtin": "nearest_label", "model": "embedder",
                                "labels": {"sports": "the match", "finance": "the market"}}}],
        "output": {"label": "$classify.label", "score": "$classify.score"},
    })
    result = run_workflow_batch(spec, [{"text": "the market"}, {"text": "the match"}], down(ops, "classifier"),
                                VERSIONS)
    assert [r.output["label"] for r in result.rows] == ["finance", "sports"]
    assert all(r.output["score"] > 0.5 for r in result.rows)


def test_classify_with_classifier_and_embedder_down_fails_its_rows_naming_both():
    def resolve(m, v):
        raise ConnectionRefusedError(f"{m} is down")

    both = r"classifier@1: .*classifier is down.*builtin:nearest_label.*embedder"
    with pytest.raises(BatchFailedError, match=both):
        run_workflow_batch(CLASSIFY, texts(2), resolve, VERSIONS)


@pytest.mark.parametrize("model", ["embedder", "classifier"])
def test_enrich_with_one_model_down_degrades_rows_and_keeps_the_other_output(ops, model):
    result = run_workflow_batch(ENRICH, texts(3), down(ops, model), VERSIONS)

    assert [r.status for r in result.rows] == ["degraded"] * 3
    failed = {"embedder": "embed", "classifier": "classify"}[model]
    assert all(r.skipped == (failed,) for r in result.rows)
    out = result.rows[0].output
    if model == "embedder":
        assert out["embedding"] is None and out["label"]
    else:
        assert out["label"] is None and out["scores"] is None and len(out["embedding"]) == 8


def test_enrich_with_both_models_down_fails_every_row():
    def resolve(m, v):
        raise ConnectionRefusedError(f"{m} is down")

    with pytest.raises(BatchFailedError, match="no answer: every step failed"):
        run_workflow_batch(ENRICH, texts(2), resolve, VERSIONS)


def test_search_with_the_embedder_down_still_reranks_embedding_itself(ops):
    rows = [{"query": "q0", "documents": ["a", "b", "c"]}, {"query": "q1", "documents": ["d"], "top_n": 1}]
    healthy = run_workflow_batch(SEARCH, rows, lambda m, v: ops[(m, v)], VERSIONS)
    result = run_workflow_batch(SEARCH, rows, down(ops, "embedder"), VERSIONS)

    assert [r.status for r in result.rows] == ["degraded"] * 2
    assert result.rows[0].skipped == ("embed_query", "embed_documents")
    assert result.rows[0].model_versions == {"rerank": "reranker@1"}
    assert set(result.rows[0].output) == {"results"}  # search returns only its documented results
    # The tiny reranker embeds like the tiny embedder: the order is the healthy one.
    assert result.rows[0].output["results"] == healthy.rows[0].output["results"]


def test_search_with_the_reranker_down_orders_by_cosine_similarity_of_the_embeddings(ops):
    rows = [{"query": "q0", "documents": ["a", "b", "c", "d"]},
            {"query": "q1", "documents": ["e", "f"], "top_n": 1}]
    healthy = run_workflow_batch(SEARCH, rows, lambda m, v: ops[(m, v)], VERSIONS)
    result = run_workflow_batch(SEARCH, rows, down(ops, "reranker"), VERSIONS)

    assert [r.status for r in result.rows] == ["degraded"] * 2
    assert result.rows[0].fallbacks == ("rerank",)
    assert result.rows[0].model_versions["rerank"] == "builtin:cosine_rank"
    # Tiny embeddings are unit vectors, so cosine ranks like the tiny reranker's dot product.
    for got, want in zip(result.rows, healthy.rows):
        assert [d["index"] for d in got.output["results"]] == [d["index"] for d in want.output["results"]]
        assert [d["score"] for d in got.output["results"]] == pytest.approx(
            [d["score"] for d in want.output["results"]])
    assert len(result.rows[1].output["results"]) == 1


def test_cosine_rank_cannot_answer_without_embeddings_and_says_why(ops):
    def resolve(m, v):
        if m in ("embedder", "reranker"):
            raise ConnectionRefusedError(f"{m} is down")
        return ops[(m, v)]

    why = "builtin:cosine_rank: cosine_rank orders by the upstream embeddings"
    with pytest.raises(BatchFailedError, match=why):
        run_workflow_batch(SEARCH, [{"query": "q", "documents": ["a"]}], resolve, VERSIONS)


def test_transient_batch_failures_are_retried(tmp_path):
    flaky = load_op(write_tiny_artifact(tmp_path / "c", "tiny-classify", fail_every=2))
    spec = load_workflow(BUILTIN_WORKFLOWS / "classify.yaml")  # retry: 2 attempts
    result = run_workflow_batch(spec, texts(40), lambda m, v: flaky, {"classifier": "1"}, batch_size=10,
                                sleep=lambda s: None)
    assert [r.status for r in result.rows] == ["ok"] * 40
    assert result.model_calls == math.ceil(40 / 10) * 2 - 1


def test_a_model_without_a_version_is_a_configuration_error(ops):
    with pytest.raises(WorkflowError, match="needs a version for model\\(s\\) classifier"):
        run_workflow_batch(ENRICH, texts(2), lambda m, v: ops[(m, v)], {"embedder": "1"})


def test_no_rows_is_an_empty_result(ops):
    result = run_workflow_batch(ENRICH, [], lambda m, v: ops[(m, v)], VERSIONS)
    assert result.rows == [] and result.model_calls == 0


class Lengths(Counting):
    """Reports each input's padding length as the number of its words, and records the batches' contents."""

    def __init__(self, op):
        super().__init__(op)
        self.contents: list[list[str]] = []

    def input_lengths(self, inputs):
        return [len(x.text.split()) for x in inputs]

    def predict_batch(self, inputs):
        self.contents.append([x.text for x in inputs])
        return super().predict_batch(inputs)


def test_inputs_of_similar_length_share_batches_and_outputs_keep_the_row_order(ops):
    emb = Lengths(ops[("embedder", "1")].op)
    ops[("embedder", "1")] = emb
    rows = [{"text": " ".join(["w"] * (1 + (i * 7) % 12) + [str(i)])} for i in range(48)]
    result = run_workflow_batch(ENRICH, rows, lambda m, v: ops[(m, v)], VERSIONS, batch_size=12)

    spans = [max(len(t.split()) for t in b) - min(len(t.split()) for t in b) for b in emb.contents]
    assert max(spans) <= 3, spans  # in arrival order each batch would span all 12 lengths
    for row, result_row in zip(rows, result.rows):
        assert result_row.output["embedding"] == emb.op.predict_batch([EmbedIn(text=row["text"])])[0].embedding
