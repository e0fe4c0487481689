"""Workflow specs: loading, load-time validation (every error names the step), DAG layers and
the payload/response helpers both executors share."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
from pydantic import ValidationError

from models.errors import WorkflowError
from models.schemas import EmbedOut, RankedDocument, RerankOut
from models.workflows import (
    BUILTIN_WORKFLOWS,
    RetryPolicy,
    WorkflowSpec,
    assemble_output,
    load_workflow,
    load_workflows,
    parse_workflow,
    step_instances,
)

SEARCH = {
    "name": "search",
    "version": 1,
    "input": {
        "query": "str",
        "documents": {"type": "list[str]", "max_items": 4},
        "top_n": {"type": "int", "required": False},
    },
    "steps": [
        {"id": "embed_query", "model": "embedder", "task": "embed", "inputs": {"text": "$input.query"}},
        {
            "id": "embed_documents",
            "model": "embedder",
            "task": "embed",
            "for_each": "$input.documents",
            "inputs": {"text": "$item"},
        },
        {
            "id": "rerank",
            "model": "reranker",
            "task": "rerank",
            "inputs": {
                "query": "$input.query",
                "documents": "$input.documents",
                "top_n": "$input.top_n",
                "query_embedding": "$embed_query.embedding",
                "document_embeddings": "$embed_documents[*].embedding",
            },
            "fallback": {"model": "cheap_reranker"},
        },
    ],
    "output": {"results": "$rerank.results", "query_embedding": "$embed_query.embedding"},
}


def spec_with(**step_changes) -> dict:
    """SEARCH with `step_changes[step_id]` merged into that step (None deletes a key)."""
    data = copy.deepcopy(SEARCH)
    for step in data["steps"]:
        for key, value in step_changes.get(step["id"], {}).items():
            if value is None:
                step.pop(key, None)
            else:
                step[key] = value
    return data


def refused(data: dict) -> str:
    with pytest.raises(WorkflowError) as info:
        parse_workflow(data)
    return str(info.value)


# --- shipped workflows ------------------------------------------------------------------


def test_builtin_workflows_load_and_use_the_three_reference_models():
    specs = load_workflows(BUILTIN_WORKFLOWS)
    assert set(specs) == {"classify", "enrich", "search"}
    assert set().union(*(s.models() for s in specs.values())) == {"embedder", "classifier", "reranker"}


def test_enrich_runs_embed_and_classify_in_one_parallel_layer():
    enrich = load_workflow(BUILTIN_WORKFLOWS / "enrich.yaml")
    levels = enrich.levels()
    assert len(levels) == 1
    assert sorted(s.id for s in levels[0]) == ["classify", "embed"]
    assert set(enrich.output) == {"embedding", "label", "scores"}


def test_search_reranks_after_both_embeddings():
    search = load_workflow(BUILTIN_WORKFLOWS / "search.yaml")
    assert [[s.id for s in layer] for layer in search.levels()] == [
        ["embed_query", "embed_documents"],
        ["rerank"],
    ]
    assert search.step("rerank").dependencies == {"embed_query", "embed_documents"}
    assert search.step("rerank").retry == RetryPolicy(attempts=3, backoff_ms=25, max_backoff_ms=400)
    assert search.step("rerank").fallback.builtin == "cosine_rank"
    assert search.deadline_ms == 5000


def test_parallel_steps_are_those_that_neither_need_nor_are_needed_by_another_step():
    specs = load_workflows(BUILTIN_WORKFLOWS)
    assert specs["enrich"].parallel_steps() == {"embed", "classify"}
    assert specs["search"].parallel_steps() == {"embed_query", "embed_documents"}  # rerank needs both
    assert specs["classify"].parallel_steps() == frozenset()
    # A step beside a chain runs at the same time as every step of it, even one further down.
    side = {"id": "side", "model": "classifier", "task": "classify", "inputs": {"text": "$input.query"}}
    data = copy.deepcopy(SEARCH)
    data["steps"].append(side)
    assert parse_workflow(data).parallel_steps() == {"embed_query", "embed_documents", "rerank", "side"}


def test_each_shipped_workflow_has_an_answer_for_any_one_server_down():
    specs = load_workflows(BUILTIN_WORKFLOWS)
    classify = specs["classify"].step("classify").fallback
    assert (classify.builtin, classify.model) == ("nearest_label", "embedder")  # not the classifier's server
    assert set(classify.labels) == {"sports", "technology", "finance", "health", "travel", "food"}
    assert all(s.optional for s in specs["enrich"].steps)
    search = specs["search"]
    assert search.step("embed_query").optional and search.step("embed_documents").optional
    assert search.step("rerank").fallback.builtin == "cosine_rank" and not search.step("rerank").optional
    # The outputs of skippable steps are nullable in the response model.
    assert specs["enrich"].output_model()(embedding=None, label="sports", scores={"sports": 1.0})
    assert search.output_model()(results=[], query_embedding=None)


def test_defaults_are_two_attempts_and_a_two_second_timeout():
    step = parse_workflow(SEARCH).step("embed_query")
    assert (step.retry.attempts, step.timeout_ms, step.optional, step.fallback) == (2, 2000, False, None)


def test_models_include_fallback_models():
    assert parse_workflow(SEARCH).models() == {"embedder", "reranker", "cheap_reranker"}


def test_yaml_text_parses_like_a_mapping():
    text = (BUILTIN_WORKFLOWS / "classify.yaml").read_text()
    assert parse_workflow(text) == load_workflow(BUILTIN_WORKFLOWS / "classify.yaml")


def test_unquoted_brackets_in_a_flow_mapping_get_a_hint():
    with pytest.raises(WorkflowError, match="quote values"):
        parse_workflow("name: x\ninput:\n  docs: {type: list[str], max_items: 3}\n")


def test_backoff_doubles_up_to_the_cap():
    policy = RetryPolicy(attempts=5, backoff_ms=100, max_backoff_ms=300)
    assert [policy.backoff_before(n) for n in (2, 3, 4, 5)] == [100, 200, 300, 300]


# --- load-time validation ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "step", "needle"),
    [
        (
            {"rerank": {"inputs": {"query": "$ghost.text", "documents": "$input.documents"}}},
            "rerank",
            "unknown step 'ghost'",
        ),
        (
            {"embed_query": {"inputs": {"text": "$input.missing"}}},
            "embed_query",
            "unknown input field 'missing'",
        ),
        (
            {
                "rerank": {
                    "inputs": {
                        "query": "$input.query",
                        "documents": "$input.documents",
                        "query_embedding": "$embed_query.vector",
                    }
                }
            },
            "rerank",
            "no field 'vector'",
        ),
        ({"rerank": {"inputs": {"query": "$input.query"}}}, "rerank", "missing required input 'documents'"),
        (
            {"embed_query": {"inputs": {"text": "$input.query", "lang": "en"}}},
            "embed_query",
            "unknown input field 'lang'",
        ),
        (
            {"embed_query": {"inputs": {"text": "$item"}}},
            "embed_query",
            "$item is only allowed inside a for_each",
        ),
        ({"embed_documents": {"for_each": "$input.query"}}, "embed_documents", "for_each over a non-list"),
        ({"embed_query": {"task": "translate"}}, "embed_query", "unknown task 'translate'"),
        (
            {
                "rerank": {
                    "inputs": {
                        "query": "$input.query",
                        "documents": "$input.documents",
                        "query_embedding": "$input.query",
                    }
                }
            },
            "rerank",
            "type mismatch for input 'query_embedding'",
        ),
        (
            {
                "rerank": {
                    "inputs": {
                        "query": "$input.query",
                        "documents": "$input.documents",
                        "document_embeddings": "$embed_documents.embedding",
                    }
                }
            },
            "rerank",
            "use $embed_documents[*].embedding",
        ),
        (
            {
                "rerank": {
                    "inputs": {
                        "query": "$input.query",
                        "documents": "$input.documents",
                        "query_embedding": "$embed_query[*].embedding",
                    }
                }
            },
            "rerank",
            "needs 'embed_query' to be a for_each step",
        ),
        (
            {
                "rerank": {
                    "inputs": {"query": "$input.query", "documents": "$input.documents", "top_n": "three"}
                }
            },
            "rerank",
            "literal 'three'",
        ),
        (
            {"rerank": {"inputs": {"query": "$input.top_n", "documents": "$input.documents"}}},
            "rerank",
            "type mismatch for input 'query'",
        ),
        ({"embed_query": {"inputs": {"text": "input.query"}}}, "embed_query", "did you mean $input.query?"),
    ],
)
def test_invalid_steps_are_refused_naming_workflow_and_step(changes, step, needle):
    message = refused(spec_with(**changes))
    assert f"workflow 'search', step '{step}'" in message
    assert needle in message


def test_type_mismatch_names_the_field_and_both_types():
    message = refused(
        spec_with(
            rerank={
                "inputs": {
                    "query": "$input.query",
                    "documents": "$input.documents",
                    "query_embedding": "$input.query",
                }
            }
        )
    )
    assert "expects list[float] | None" in message and "$input.query is str" in message


def test_optional_int_request_field_fits_an_optional_int_task_field():
    assert parse_workflow(SEARCH).step("rerank").inputs["top_n"] == "$input.top_n"


def test_int_request_field_fits_a_float_but_a_float_does_not_fit_an_int():
    data = copy.deepcopy(SEARCH)
    data["input"]["top_n"] = {"type": "float", "required": False}
    assert "type mismatch for input 'top_n'" in refused(data)


def test_optional_request_field_cannot_feed_a_required_task_input():
    data = copy.deepcopy(SEARCH)
    data["input"]["query"] = {"type": "str", "required": False}
    message = refused(data)
    assert "step 'embed_query'" in message and "optional request field" in message


def test_bad_reference_syntax_is_a_structural_error_naming_the_step():
    message = refused(spec_with(embed_query={"inputs": {"text": "$input"}}))
    assert "step 'embed_query'" in message and "bad reference '$input'" in message


def test_duplicate_step_ids_are_refused():
    data = copy.deepcopy(SEARCH)
    data["steps"].append(copy.deepcopy(data["steps"][0]))
    assert "step 'embed_query': duplicate step id" in refused(data)


def test_cycles_are_refused_naming_the_steps_in_the_cycle():
    data = {
        "name": "loop",
        "version": 1,
        "input": {"text": "str"},
        "steps": [
            {"id": "a", "model": "m", "task": "classify", "inputs": {"text": "$c.label"}},
            {"id": "b", "model": "m", "task": "classify", "inputs": {"text": "$a.label"}},
            {"id": "c", "model": "m", "task": "classify", "inputs": {"text": "$b.label"}},
        ],
        "output": {"label": "$c.label"},
    }
    message = refused(data)
    assert "cycle" in message
    assert all(f"{s} ->" in message or f"-> {s}" in message for s in "abc")


def test_a_step_reading_itself_is_a_cycle():
    assert "cycle: embed_query -> embed_query" in refused(
        spec_with(embed_query={"inputs": {"text": "$embed_query.embedding"}})
    )


def test_fallback_needs_a_model_or_a_version():
    message = refused(spec_with(rerank={"fallback": {}}))
    assert "step 'rerank'" in message and "fallback" in message


def test_an_optional_upstream_feeds_an_optional_input_that_is_left_out_when_it_was_skipped():
    data = spec_with(embed_query={"optional": True}, embed_documents={"optional": True})
    spec = parse_workflow(data)
    ctx = {"input": {"query": "q", "documents": ["a", "b"]}, "embed_query": None, "embed_documents": None}
    [payload] = step_instances(spec.step("rerank"), ctx)
    assert payload == {"query": "q", "documents": ["a", "b"]}  # the reranker embeds them itself
    ctx["embed_query"] = {"embedding": [1.0, 0.0]}
    [payload] = step_instances(spec.step("rerank"), ctx)
    assert payload["query_embedding"] == [1.0, 0.0] and "document_embeddings" not in payload
    assert spec.output_model().model_fields["query_embedding"].annotation == list[float] | None
    assert assemble_output(spec, {**ctx, "embed_query": None, "rerank": {"results": []}}) == {
        "results": [], "query_embedding": None}


def test_builtin_fallbacks_parse_and_models_include_the_embed_model_they_call():
    spec = parse_workflow(spec_with(rerank={"fallback": {"builtin": "cosine_rank"}}))
    assert spec.step("rerank").fallback.builtin == "cosine_rank"
    assert spec.models() == {"embedder", "reranker"}
    classify = parse_workflow({
        "name": "c", "version": 1, "input": {"text": "str"},
        "steps": [{"id": "classify", "model": "classifier", "task": "classify", "inputs": {"text": "$input.text"},
                   "fallback": {"builtin": "nearest_label", "model": "embedder",
                                "labels": {"a": "about a", "b": "b"}}}],
        "output": {"label": "$classify.label"},
    })
    assert classify.models() == {"classifier", "embedder"}
    classify.check_models({"classifier": "classify", "embedder": "embed"})
    wrong = "fallback model 'embedder' serves task 'classify', but the step needs 'embed'"
    with pytest.raises(WorkflowError, match=wrong):
        classify.check_models({"classifier": "classify", "embedder": "classify"})


@pytest.mark.parametrize(("fallback", "words"), [
    ({"builtin": "nearest_rank"}, ["fallback.builtin", "cosine_rank", "nearest_label"]),
    ({"builtin": "cosine_rank", "model": "reranker"}, ["cosine_rank takes no model"]),
    ({"builtin": "nearest_label", "model": "embedder", "labels": ["a", "b"]},
     ["answers task 'classify', not 'rerank'"]),
    ({"model": "cheap_reranker", "labels": ["a", "b"]}, ["labels only apply to builtin: nearest_label"]),
])
def test_bad_builtin_fallbacks_are_refused_at_load_time_naming_the_step(fallback, words):
    message = refused(spec_with(rerank={"fallback": fallback}))
    assert "step 'rerank'" in message
    for word in words:
        assert word in message


def test_cosine_rank_needs_the_step_to_have_upstream_embeddings():
    data = spec_with(rerank={"fallback": {"builtin": "cosine_rank"}})
    del data["steps"][2]["inputs"]["document_embeddings"]
    message = refused(data)
    assert "step 'rerank'" in message and "'document_embeddings' input" in message


@pytest.mark.parametrize(("fallback", "words"), [
    ({"builtin": "nearest_label", "labels": ["a", "b"]}, "needs the embed model it calls"),
    ({"builtin": "nearest_label", "model": "embedder"}, "needs labels: at least two"),
    ({"builtin": "nearest_label", "model": "embedder", "labels": ["a", "a"]}, "unique"),
])
def test_nearest_label_needs_an_embed_model_and_two_distinct_labels(fallback, words):
    data = {"name": "c", "version": 1, "input": {"text": "str"},
            "steps": [{"id": "classify", "model": "classifier", "task": "classify",
                       "inputs": {"text": "$input.text"}, "fallback": fallback}],
            "output": {"label": "$classify.label"}}
    message = refused(data)
    assert "step 'classify'" in message and words in message


def test_reserved_step_ids_are_refused():
    data = copy.deepcopy(SEARCH)
    data["steps"][1]["id"] = "item"
    assert "step 'item'" in refused(data)


def test_unknown_output_field_names_the_output():
    data = copy.deepcopy(SEARCH)
    data["output"]["label"] = "$rerank.label"
    message = refused(data)
    assert "output 'label'" in message and "no field 'label'" in message


def test_unknown_top_level_key_is_refused():
    data = copy.deepcopy(SEARCH)
    data["stepz"] = []
    assert "stepz" in refused(data)


def test_duplicate_workflow_names_in_a_directory_are_refused(tmp_path: Path):
    text = (BUILTIN_WORKFLOWS / "classify.yaml").read_text()
    (tmp_path / "a.yaml").write_text(text)
    (tmp_path / "b.yaml").write_text(text)
    with pytest.raises(WorkflowError, match="'classify' is defined twice"):
        load_workflows(tmp_path)


def test_check_models_refuses_a_model_serving_another_task():
    spec = parse_workflow(SEARCH)
    spec.check_models({"embedder": "embed", "reranker": "rerank", "cheap_reranker": "rerank"})
    with pytest.raises(
        WorkflowError, match="step 'rerank': fallback model 'cheap_reranker' serves task 'embed'"
    ):
        spec.check_models({"embedder": "embed", "reranker": "rerank", "cheap_reranker": "embed"})


# --- request and response models --------------------------------------------------------


def test_input_model_forbids_unknown_fields_and_names_them():
    model = parse_workflow(SEARCH).input_model()
    with pytest.raises(ValidationError) as info:
        model(query="q", documents=["a"], colour="red")
    assert [e["loc"] for e in info.value.errors()] == [("colour",)]


def test_input_model_enforces_types_required_fields_and_max_items():
    model = parse_workflow(SEARCH).input_model()
    with pytest.raises(ValidationError) as info:
        model(documents=["a"] * 5, top_n="many")
    assert {e["loc"][0] for e in info.value.errors()} == {"query", "documents", "top_n"}
    assert model(query="q", documents=["a", "b"]).top_n is None


def test_input_model_inherits_the_task_fields_constraints():
    model = parse_workflow(SEARCH).input_model()
    with pytest.raises(ValidationError) as info:
        model(query="", documents=["ok", ""], top_n=0)
    assert {e["loc"] for e in info.value.errors()} == {("query",), ("documents", 1), ("top_n",)}


def test_output_model_is_nullable_where_an_optional_step_may_be_skipped():
    assert parse_workflow(SEARCH).output_model().model_fields["query_embedding"].annotation == list[float]
    fields = parse_workflow(spec_with(embed_query={"optional": True})).output_model().model_fields
    assert fields["query_embedding"].annotation == list[float] | None
    assert fields["results"].annotation == list[RankedDocument]


# --- step payloads and the response -----------------------------------------------------

REQUEST = {"query": "q", "documents": ["a", "b", "c"], "top_n": None}


def test_plain_step_gets_one_payload():
    spec = parse_workflow(SEARCH)
    assert step_instances(spec.step("embed_query"), {"input": REQUEST}) == [{"text": "q"}]


def test_for_each_step_gets_one_payload_per_item():
    spec = parse_workflow(SEARCH)
    assert step_instances(spec.step("embed_documents"), {"input": REQUEST}) == [{"text": d} for d in "abc"]


def test_for_each_over_an_empty_list_gets_no_payloads():
    spec = parse_workflow(SEARCH)
    assert step_instances(spec.step("embed_documents"), {"input": {**REQUEST, "documents": []}}) == []


def test_star_reference_collects_one_value_per_item_and_none_inputs_are_omitted():
    spec = parse_workflow(SEARCH)
    context = {
        "input": REQUEST,
        "embed_query": {"embedding": [1.0]},
        "embed_documents": [{"embedding": [float(i)]} for i in range(3)],
    }
    [payload] = step_instances(spec.step("rerank"), context)
    assert payload == {
        "query": "q",
        "documents": ["a", "b", "c"],
        "query_embedding": [1.0],
        "document_embeddings": [[0.0], [1.0], [2.0]],
    }


def test_outputs_may_be_pydantic_models():
    spec = parse_workflow(SEARCH)
    context = {
        "input": REQUEST,
        "embed_query": EmbedOut(embedding=[1.0]),
        "embed_documents": [EmbedOut(embedding=[2.0])],
    }
    [payload] = step_instances(spec.step("rerank"), context)
    assert payload["query_embedding"] == [1.0] and payload["document_embeddings"] == [[2.0]]


def test_skipped_step_feeding_optional_inputs_is_left_out():
    spec = parse_workflow(SEARCH)
    context = {"input": {**REQUEST, "top_n": 2}, "embed_query": None, "embed_documents": None}
    assert step_instances(spec.step("rerank"), context) == [
        {"query": "q", "documents": ["a", "b", "c"], "top_n": 2}
    ]


def test_skipped_step_feeding_a_required_input_returns_none():
    data = copy.deepcopy(SEARCH)
    data["steps"].append(
        {
            "id": "rank_top",
            "model": "classifier",
            "task": "classify",
            "for_each": "$rerank.results",
            "inputs": {"text": "$item.document"},
        }
    )
    spec = parse_workflow(data)
    assert step_instances(spec.step("rank_top"), {"input": REQUEST, "rerank": None}) is None
    results = RerankOut(results=[RankedDocument(index=0, document="a", score=1.0)])
    assert step_instances(spec.step("rank_top"), {"input": REQUEST, "rerank": results.model_dump()}) == [
        {"text": "a"}
    ]


def test_reading_a_step_that_has_not_run_is_an_error():
    spec = parse_workflow(SEARCH)
    with pytest.raises(WorkflowError, match="'embed_query' has not run"):
        step_instances(spec.step("rerank"), {"input": REQUEST})


def test_assemble_output_maps_skipped_steps_to_none():
    spec = parse_workflow(SEARCH)
    results = [{"index": 0, "document": "a", "score": 0.5}]
    out = assemble_output(
        spec, {"input": REQUEST, "embed_query": None, "embed_documents": None, "rerank": {"results": results}}
    )
    assert out == {"results": results, "query_embedding": None}


def test_spec_is_immutable():
    spec = parse_workflow(SEARCH)
    with pytest.raises(ValidationError):
        spec.name = "other"
    assert isinstance(spec, WorkflowSpec)


def test_structural_errors_name_the_step_and_the_field():
    message = refused(spec_with(rerank={"retry": {"attempts": 0}}))
    assert "workflow 'search', step 'rerank': retry.attempts" in message


def test_specs_pickle_even_after_their_models_were_built():
    spec = parse_workflow(SEARCH)
    spec.input_model()
    copy_ = pickle.loads(pickle.dumps(spec))
    assert copy_ == spec
    assert [[s.id for s in layer] for layer in copy_.levels()] == [
        ["embed_query", "embed_documents"],
        ["rerank"],
    ]
