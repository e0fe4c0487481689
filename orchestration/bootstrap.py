"""`tandem init`: create TANDEM_HOME and register the reference models, idempotently."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lakehouse import CATALOG, Lake
from models.artifacts import ArtifactStore
from models.registry import Registry
from models.settings import TandemSettings

DEMO_TENANT = "demo"
DEMO_KEY_FILE = "demo_api_key"


@dataclass
class Platform:
    """The lake, artifact store and registry of one TANDEM_HOME."""

    settings: TandemSettings
    lake: Lake
    store: ArtifactStore
    registry: Registry

    @classmethod
    def open(cls, settings: TandemSettings) -> Platform:
        opts = settings.storage_options or None
        lake = Lake(settings.lake_root, opts)
        store = ArtifactStore(settings.artifacts_root, opts)
        return cls(settings, lake, store, Registry(lake, store))


def init_home(settings: TandemSettings, *, corpus_size: int = 4000, say: Callable[[str], None] = print) -> Platform:
    """Create every table, register the reference models (torch and ONNX Runtime variants, evaluated), pick
    each model's stable version, make a demo tenant."""
    settings.home.mkdir(parents=True, exist_ok=True)
    platform = Platform.open(settings)
    steps = 7
    say(f"[1/{steps}] creating {len(CATALOG)} Delta tables under {settings.lake_root}")
    for name in CATALOG:
        platform.lake.ensure(name)
    reg = platform.registry
    from models.corpus import generate_demo_corpus
    from orchestration.model_variants import (
        EvalSet,
        choose_stable,
        register_classifier_variants,
        register_embedders,
        register_rerankers,
    )

    rows = generate_demo_corpus(corpus_size, seed=0)
    evals = EvalSet.make({r["text"] for r in rows})
    onnx_cache = settings.onnx_cache_dir
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        say(f"[2/{steps}] embedder: v1 torch fp32 (the reference), v2 torch int8, v3/v4 ONNX Runtime fp32/int8 "
            f"(exported once, cached in {onnx_cache}), v5 torch fp16 (for GPUs); evaluated on {len(evals.rows)} "
            "held-out sentences")
        register_embedders(reg, tmp_path, onnx_cache, evals, say)
        _promote_if_unset(reg, "embedder", "1")

        say(f"[3/{steps}] classifier: training on the synthetic demo corpus ({corpus_size} sentences)")
        if not _has_versions(reg, "classifier"):
            from models.classifier import train_classifier
            from models.corpus import write_corpus
            from models.evaluation import labelled_evaluation

            data_dir = settings.home / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            write_corpus(data_dir / "demo_corpus.parquet", rows)
            result = train_classifier(rows, tmp_path / "clf", progress=lambda m: say(f"      {m}"))
            cv = reg.register("classifier", "classify", result.artifact_dir,
                              metrics={**result.metrics, "evaluation": labelled_evaluation(result.metrics)},
                              training_data_hash=result.training_data_hash,
                              lineage={"encoder": "embedder@1", "corpus": "demo (synthetic)"},
                              description="MLP head over MiniLM embeddings, demo corpus", actor="tandem init")
            say(f"      accuracy={result.metrics['accuracy']:.3f} macro_f1={result.metrics['macro_f1']:.3f}")
            _promote_if_unset(reg, "classifier", cv.version)
        else:
            say("      already registered, skipping training")
        clf_ref = next((mv.version for mv in reg.versions("classifier") if "backend" not in mv.lineage), None)

        say(f"[4/{steps}] classifier: the trained head over the ONNX Runtime encoders")
        if clf_ref is not None:
            register_classifier_variants(reg, platform.store, tmp_path, onnx_cache, evals, clf_ref, say)

        say(f"[5/{steps}] reranker: v1 torch fp32 (the reference), v2/v3 ONNX Runtime fp32/int8")
        register_rerankers(reg, tmp_path, onnx_cache, evals, say)
        _promote_if_unset(reg, "reranker", "1")

    say(f"[6/{steps}] stable versions: the fastest version that passes its offline evaluation")
    for name, reference in (("embedder", "1"), ("classifier", clf_ref), ("reranker", "1")):
        if reference is not None:
            choose_stable(reg, platform.store, name, reference, evals, say)

    say(f"[{steps}/{steps}] demo tenant")
    key = ensure_demo_tenant(settings)
    say(f"      API key in {settings.home / DEMO_KEY_FILE}" if key else "      already present")
    return platform


def ensure_demo_tenant(settings: TandemSettings) -> str | None:
    """Create the `demo` tenant (all scopes) if missing; its key is kept in TANDEM_HOME for local use."""
    from models.tenancy import TenantStore

    store = TenantStore(settings.tenants_file)
    key_file = settings.home / DEMO_KEY_FILE
    if any(t.id == DEMO_TENANT for t in store.list()) and key_file.exists():
        return None
    if any(t.id == DEMO_TENANT for t in store.list()):
        key = store.rotate_key(DEMO_TENANT)
    else:
        _, key = store.create(DEMO_TENANT, scopes={"predict", "jobs", "admin"}, workflows=["*"],
                              rate_per_s=200.0, burst=400, daily_quota=1_000_000, model_pins={})
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return key


def demo_key(settings: TandemSettings) -> str | None:
    path = settings.home / DEMO_KEY_FILE
    return path.read_text().strip() if path.exists() else None


def _has_versions(reg: Registry, name: str) -> bool:
    return any(m.name == name for m in reg.list_models())


def _promote_if_unset(reg: Registry, name: str, version: str) -> None:
    if reg.state(name).stable is None:
        reg.promote(name, version, actor="tandem init", reason="initial stable version")
