"""The encoder backend choice for ops built over MiniLM (classifier, reranker).

An artifact's manifest holds an encoder spec (`"encoder": {...}`) whose `kind` names the backend:
`minilm` / `minilm-int8` / `minilm-fp16` (torch, weights from the installed package) or `minilm-onnx` /
`minilm-onnx-int8` (ONNX Runtime, the `.onnx` file stored inside the artifact). `write_encoder`
writes that spec (copying the `.onnx` file into the artifact for ONNX backends) and `load_encoder`
returns the process's shared encoder for it, after verifying weights and file digests.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from models.embedder import PRECISIONS, encoder_spec, get_encoder, verify_encoder_spec
from models.errors import ArtifactError

__all__ = ["BACKENDS", "default_onnx_cache", "load_encoder", "write_encoder"]

BACKENDS = ("torch-fp32", "torch-int8", "torch-fp16", "onnx-fp32", "onnx-int8")
ONNX_CACHE_ENV = "TANDEM_ONNX_CACHE"


def default_onnx_cache() -> Path:
    """Where exported `.onnx` files are cached when no caller names a place (`tandem init` uses TANDEM_HOME's)."""
    return Path(os.environ.get(ONNX_CACHE_ENV) or Path(tempfile.gettempdir()) / "tandem-onnx-cache")


def write_encoder(dest: Path, backend: str, cache_root: Path | None = None) -> dict:
    """The encoder spec of `backend` for an artifact in `dest` (ONNX backends copy their file there)."""
    if backend not in BACKENDS:
        raise ValueError(f"encoder backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    engine, variant = backend.split("-")
    if engine == "torch":
        return encoder_spec(variant)
    from models.onnx_encoder import write_onnx_encoder

    return write_onnx_encoder(dest, variant, cache_root or default_onnx_cache())


def load_encoder(spec: dict, artifact_dir: Path, device: str):
    """The shared encoder (torch or ONNX Runtime) that `spec` names, verified against the installation."""
    kind = spec.get("kind")
    if kind in PRECISIONS.values():
        return get_encoder(verify_encoder_spec(spec, artifact_dir), device)
    if isinstance(kind, str) and kind.startswith("minilm-onnx"):
        from models.onnx_encoder import load_onnx_encoder

        return load_onnx_encoder(spec, artifact_dir, device)
    raise ArtifactError(f"{artifact_dir}: encoder kind {kind!r} is unknown; known backends: {', '.join(BACKENDS)}")
