"""Bi-encoder reranking: cosine similarity of query and documents under the shared MiniLM encoder.

Inputs may carry precomputed `query_embedding` / `document_embeddings` (e.g. from an upstream
embed step); those are used as given and only the missing side is encoded. All texts that need
encoding across a batch go through the encoder in one call.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from models.encoders import load_encoder, write_encoder
from models.errors import ArtifactError, SchemaError
from models.ops import MANIFEST, read_manifest, register_kind
from models.schemas import RankedDocument, RerankIn, RerankOut

__all__ = ["KIND", "MiniLMReranker", "write_reranker_artifact"]

KIND = "minilm-reranker"


@register_kind(KIND)
class MiniLMReranker:
    """Ranks documents by cosine similarity to the query."""

    task = "rerank"

    def load(self, artifact_dir: Path, device: str) -> None:
        m = read_manifest(artifact_dir)
        if m.get("kind") != KIND:
            raise ArtifactError(f"{artifact_dir}: manifest kind {m.get('kind')!r} is not {KIND!r}")
        if "encoder" not in m:
            raise ArtifactError(f"{artifact_dir}: manifest lacks 'encoder'")
        self.max_seq_length = int(m["encoder"].get("max_seq_length", 256))
        self.encoder = load_encoder(m["encoder"], artifact_dir, device)

    def predict_batch(self, inputs: list[RerankIn]) -> list[RerankOut]:
        texts: list[str] = []
        for x in inputs:
            _check_embeddings(x)
            if x.query_embedding is None:
                texts.append(x.query)
            if x.document_embeddings is None:
                texts.extend(x.documents)
        encoded = self.encoder.encode(texts, max_length=self.max_seq_length) if texts else None
        cursor = 0
        out = []
        for x in inputs:
            if x.query_embedding is None:
                q = encoded[cursor]
                cursor += 1
            else:
                q = _unit(np.asarray(x.query_embedding, dtype=np.float32))
            if x.document_embeddings is None:
                docs = encoded[cursor : cursor + len(x.documents)]
                cursor += len(x.documents)
            else:
                docs = _unit(np.asarray(x.document_embeddings, dtype=np.float32))
            if docs.shape[1] != q.shape[0]:
                raise SchemaError(
                    f"query vector has {q.shape[0]} dims but document vectors have {docs.shape[1]}; "
                    f"the {self.encoder.kind} encoder makes {self.encoder.dim}-dim vectors"
                )
            scores = docs @ q
            # Stable sort: equal scores keep document order.
            order = sorted(range(len(x.documents)), key=lambda i: -float(scores[i]))
            if x.top_n:
                order = order[: x.top_n]
            out.append(
                RerankOut(
                    results=[RankedDocument(index=i, document=x.documents[i], score=float(scores[i])) for i in order]
                )
            )
        return out


def _check_embeddings(x: RerankIn) -> None:
    if x.document_embeddings is not None:
        if len(x.document_embeddings) != len(x.documents):
            raise SchemaError(
                f"got {len(x.document_embeddings)} document_embeddings for {len(x.documents)} documents"
            )
        if len({len(v) for v in x.document_embeddings}) > 1:
            raise SchemaError("document_embeddings have differing lengths")
    for vectors in (x.document_embeddings or []), ([x.query_embedding] if x.query_embedding is not None else []):
        if any(len(v) == 0 for v in vectors):
            raise SchemaError("an embedding is empty")


def _unit(v: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.where(norm == 0, 1.0, norm)


def write_reranker_artifact(dest: Path, *, quantize_encoder: bool = False, backend: str | None = None,
                            cache_root: Path | None = None) -> Path:
    """Write a MiniLM reranker artifact (a manifest pinning the encoder) and return it.

    `backend` (see `models.encoders.BACKENDS`) overrides `quantize_encoder`; ONNX backends copy
    their `.onnx` file (built once into `cache_root`) into the artifact.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    backend = backend or ("torch-int8" if quantize_encoder else "torch-fp32")
    manifest = {"kind": KIND, "encoder": write_encoder(dest, backend, cache_root)}
    (dest / MANIFEST).write_text(json.dumps(manifest, sort_keys=True, indent=2))
    return dest
