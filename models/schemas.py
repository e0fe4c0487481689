"""Per-task input/output schemas and their stable hashes.

A task's contract is the pair (input model, output model). Its schema hash is the sha256
of both JSON schemas serialised with sorted keys, so it changes exactly when the contract does.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache

from pydantic import BaseModel, ConfigDict, Field

from models.errors import UnknownTaskError

MAX_TEXT_CHARS = 8192


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmbedIn(_Strict):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["Tandem serves models."])


class EmbedOut(_Strict):
    embedding: list[float]


class ClassifyIn(_Strict):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS, examples=["The striker scored twice."])


class ClassifyOut(_Strict):
    label: str
    score: float
    scores: dict[str, float]


class RerankIn(_Strict):
    query: str = Field(min_length=1, max_length=MAX_TEXT_CHARS)
    documents: list[str] = Field(min_length=1, max_length=256)
    top_n: int | None = Field(default=None, ge=1)
    # Optional precomputed vectors (e.g. from an upstream embed step) skip re-encoding.
    query_embedding: list[float] | None = None
    document_embeddings: list[list[float]] | None = None


class RankedDocument(_Strict):
    index: int
    document: str
    score: float


class RerankOut(_Strict):
    results: list[RankedDocument]


@dataclass(frozen=True)
class Task:
    """A task's contract: its name and its input and output models."""

    name: str
    input: type[BaseModel]
    output: type[BaseModel]

    @property
    def schema_hash(self) -> str:
        return task_schema_hash(self.name)


TASKS: dict[str, Task] = {
    "embed": Task("embed", EmbedIn, EmbedOut),
    "classify": Task("classify", ClassifyIn, ClassifyOut),
    "rerank": Task("rerank", RerankIn, RerankOut),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None


@cache
def task_schema_hash(name: str) -> str:
    task = get_task(name)
    doc = {"input": task.input.model_json_schema(), "output": task.output.model_json_schema()}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()
