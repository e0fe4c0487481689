"""The model-op contract shared by the online servers and the batch assets.

A model op is loaded once from an artifact directory and then predicts over lists:
`predict_batch(inputs)` returns exactly one output per input, in the same order.
Which class loads an artifact is named by the `kind` in its `manifest.json`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from pydantic import BaseModel

from models.errors import ArtifactError, SchemaError

MANIFEST = "manifest.json"


@runtime_checkable
class ModelOp(Protocol):
    """A model version behind one call. Optionally also `input_lengths(inputs) -> list[int]`: the
    size each input is padded by (e.g. its token count), which batch scoring uses to put inputs of
    similar lengths in the same batch (`models.executor`)."""

    task: str

    def load(self, artifact_dir: Path, device: str) -> None: ...

    def predict_batch(self, inputs: list[BaseModel]) -> list[BaseModel]: ...


_KINDS: dict[str, Callable[[], ModelOp]] = {}


def register_kind(kind: str) -> Callable[[type], type]:
    """Class decorator: artifacts whose manifest says `kind` are loaded by this class."""

    def deco(cls: type) -> type:
        _KINDS[kind] = cls
        return cls

    return deco


def read_manifest(artifact_dir: Path) -> dict:
    path = Path(artifact_dir) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {MANIFEST}; is it a Tandem model artifact?")
    return json.loads(path.read_text())


def load_op(artifact_dir: Path, device: str = "cpu") -> ModelOp:
    """Instantiate and load the op an artifact's manifest names."""
    manifest = read_manifest(artifact_dir)
    kind = manifest.get("kind")
    _import_module_of(kind)
    if kind not in _KINDS:
        raise ArtifactError(f"artifact kind {kind!r} is unknown; known kinds: {', '.join(sorted(_KINDS))}")
    op = _KINDS[kind]()
    op.load(Path(artifact_dir), device)
    return op


def check_outputs(op: ModelOp, inputs: list, outputs: list) -> list:
    """Enforce the contract: one output per input."""
    if len(outputs) != len(inputs):
        raise SchemaError(f"{type(op).__name__} returned {len(outputs)} outputs for {len(inputs)} inputs")
    return outputs


# Where the reference kinds live: importing a module registers its kinds. Only the module an
# artifact needs is imported, so a tiny test model never pays for torch and transformers.
_KIND_MODULES = {
    "minilm": "models.embedder",
    "minilm-int8": "models.embedder",
    "minilm-fp16": "models.embedder",
    "minilm-onnx": "models.onnx_encoder",
    "minilm-onnx-int8": "models.onnx_encoder",
    "classifier-head": "models.classifier",
    "minilm-reranker": "models.reranker",
    "tiny-embed": "models.testing",
    "tiny-classify": "models.testing",
    "tiny-rerank": "models.testing",
}


def _import_module_of(kind: object) -> None:
    import importlib

    if kind in _KINDS:
        return
    modules = [_KIND_MODULES[kind]] if kind in _KIND_MODULES else sorted(set(_KIND_MODULES.values()))
    for module in modules:
        importlib.import_module(module)
