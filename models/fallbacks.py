"""Built-in fallbacks: answers a step can still give when its model server is down.

A step names one with `fallback: {builtin: NAME, ...}`; both executors (the online engine and
the batch executor) call these same functions, so a degraded answer is the same online and in
batch. Each built-in answers exactly one task, in that task's output schema:

    cosine_rank    rerank    orders the documents by cosine similarity of the step's own
                             `query_embedding` / `document_embeddings` inputs (from upstream
                             embed steps); no model call at all
    nearest_label  classify  embeds the text and one prompt per label with an embed model
                             (`model: embedder`, a different server than the classifier's) and
                             picks the label whose prompt is nearest: zero-shot classification

Running one is two-phase so that the executor does the model calls its own way (HTTP or
in-process): `texts_to_embed` says what to embed (nothing for cosine_rank), then `answer`
computes the output from those vectors. A call that cannot be answered raises `SchemaError`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from models.errors import SchemaError

__all__ = [
    "BUILTINS",
    "EMBED_MODEL_TASK",
    "answer",
    "cosine_rank",
    "label_prompts",
    "nearest_label",
    "texts_to_embed",
]

BUILTINS: dict[str, str] = {"cosine_rank": "rerank", "nearest_label": "classify"}
"""Each built-in fallback and the task it answers."""

EMBED_MODEL_TASK: dict[str, str] = {"nearest_label": "embed"}
"""The task of the model a built-in calls (`fallback.model`); built-ins not listed call none."""

# Softmax temperature over cosine similarities: MiniLM's similarities of a text to different topic
# prompts differ by ~0.05-0.2, so 0.05 gives a clear but not one-hot distribution.
_TEMPERATURE = 0.05


def label_prompts(labels: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """label -> the text embedded for it (the label itself when `labels` is a list)."""
    return dict(labels) if isinstance(labels, Mapping) else {label: label for label in labels}


def texts_to_embed(builtin: str, instance: Mapping[str, Any]) -> list[str]:
    """The texts of one step instance that `builtin` needs embedded (label prompts come on top)."""
    if builtin == "nearest_label":
        return [instance["text"]]
    return []


def answer(
    builtin: str,
    instance: Mapping[str, Any],
    vectors: Sequence[Sequence[float]] = (),
    prompts: Mapping[str, Sequence[float]] | None = None,
) -> dict[str, Any]:
    """The output of `builtin` for one step instance, given the embeddings of its `texts_to_embed`
    (`vectors`) and of the label prompts (`prompts`, label -> vector)."""
    if builtin == "cosine_rank":
        return cosine_rank(instance)
    if builtin == "nearest_label":
        if len(vectors) != 1 or not prompts:
            raise SchemaError("nearest_label needs the text's embedding and one embedding per label")
        return nearest_label(vectors[0], prompts)
    raise SchemaError(f"unknown builtin fallback {builtin!r}; known: {', '.join(BUILTINS)}")


def cosine_rank(instance: Mapping[str, Any]) -> dict[str, Any]:
    """A rerank answer from a rerank input's precomputed embeddings (no model involved)."""
    documents = instance["documents"]
    q, docs = instance.get("query_embedding"), instance.get("document_embeddings")
    if q is None or docs is None:
        pairs = (("query_embedding", q), ("document_embeddings", docs))
        missing = " and ".join(k for k, v in pairs if v is None)
        raise SchemaError(f"cosine_rank orders by the upstream embeddings, but {missing} is missing "
                          "(the step that computes it was skipped)")
    if len(docs) != len(documents):
        raise SchemaError(f"got {len(docs)} document_embeddings for {len(documents)} documents")
    qv = _unit(np.asarray(q, dtype=np.float64))
    dv = _unit(np.asarray(docs, dtype=np.float64))
    if dv.ndim != 2 or dv.shape[1] != qv.shape[0]:
        raise SchemaError(f"query and document embeddings differ in size ({qv.shape[0]} vs {dv.shape[-1]})")
    scores = dv @ qv
    order = sorted(range(len(documents)), key=lambda i: -float(scores[i]))  # stable: ties keep document order
    if instance.get("top_n"):
        order = order[: instance["top_n"]]
    return {"results": [{"index": i, "document": documents[i], "score": float(scores[i])} for i in order]}


def nearest_label(vector: Sequence[float], prompts: Mapping[str, Sequence[float]]) -> dict[str, Any]:
    """A classify answer: the label whose prompt embedding is nearest to the text's.

    `scores` is a softmax over the cosine similarities (temperature 0.05): it ranks the labels
    like a classifier's probabilities but is not calibrated like them.
    """
    labels = list(prompts)
    mat = _unit(np.asarray([prompts[label] for label in labels], dtype=np.float64))
    v = _unit(np.asarray(vector, dtype=np.float64))
    if mat.shape[1] != v.shape[0]:
        raise SchemaError(f"text and label embeddings differ in size ({v.shape[0]} vs {mat.shape[1]})")
    sims = mat @ v / _TEMPERATURE
    probs = np.exp(sims - sims.max())
    probs /= probs.sum()
    best = int(probs.argmax())
    return {"label": labels[best], "score": float(probs[best]),
            "scores": {label: float(p) for label, p in zip(labels, probs)}}


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm == 0, 1.0, norm)
