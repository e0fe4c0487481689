from __future__ import annotations

import json
from collections import Counter

import pytest

from models.corpus import TOPICS, generate_demo_corpus, load_labelled, write_corpus
from models.errors import SchemaError


def test_demo_corpus_is_deterministic_by_seed():
    assert generate_demo_corpus(500, seed=3) == generate_demo_corpus(500, seed=3)
    assert generate_demo_corpus(500, seed=3) != generate_demo_corpus(500, seed=4)


def test_demo_corpus_is_balanced_over_at_least_five_topics_with_unique_texts():
    rows = generate_demo_corpus(4000)
    counts = Counter(r["label"] for r in rows)
    assert len(TOPICS) >= 5 and set(counts) == set(TOPICS)
    assert max(counts.values()) - min(counts.values()) <= 1
    assert len({r["text"] for r in rows}) == 4000
    assert all(set(r) == {"text", "label"} for r in rows)


def test_demo_corpus_sentences_are_8_to_30_words_and_varied_in_length():
    lengths = [len(r["text"].split()) for r in generate_demo_corpus(2000)]
    assert min(lengths) >= 8 and max(lengths) <= 30
    assert len(set(lengths)) >= 10


def test_demo_corpus_contains_cross_topic_ambiguity():
    # Sports sentences sometimes carry health vocabulary (neighbouring-topic objects).
    rows = generate_demo_corpus(3000)
    sports = [r["text"] for r in rows if r["label"] == "sports"]
    assert any("vaccine" in t or "patients" in t or "flu" in t for t in sports)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_write_then_load_round_trips(tmp_path, suffix):
    rows = generate_demo_corpus(50, seed=1)
    path = write_corpus(tmp_path / f"corpus{suffix}", rows)
    assert load_labelled(path) == rows


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_load_labelled_renames_custom_columns(tmp_path, suffix):
    rows = [{"body": "the striker scored twice", "topic": "sports", "id": 1}]
    path = write_corpus(tmp_path / f"c{suffix}", rows)
    assert load_labelled(path, text_col="body", label_col="topic") == [
        {"text": "the striker scored twice", "label": "sports"}
    ]


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".parquet"])
def test_load_labelled_names_the_missing_columns(tmp_path, suffix):
    path = write_corpus(tmp_path / f"c{suffix}", [{"body": "x y z", "label": "a"}])
    with pytest.raises(SchemaError, match=r"'text'.*columns are") as err:
        load_labelled(path)
    assert "'label'" not in str(err.value).split(";")[0]


def test_load_labelled_rejects_empty_text(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text(json.dumps({"text": "ok", "label": "a"}) + "\n" + json.dumps({"text": " ", "label": "a"}) + "\n")
    with pytest.raises(SchemaError, match="row 1"):
        load_labelled(path)


def test_unsupported_suffix_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.csv, \.jsonl or \.parquet"):
        load_labelled(tmp_path / "c.xlsx")
    with pytest.raises(ValueError):
        write_corpus(tmp_path / "c.txt", [{"text": "a", "label": "b"}])
