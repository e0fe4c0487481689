"""TANDEM_HOMEs for the bench: tiny deterministic models (seconds) or the real reference models.

The real home (`tandem init` with a small demo corpus: MiniLM embedder, trained classifier,
reranker) takes a minute or two to build, so it is kept in the work directory and reused by
later runs; `--fresh` rebuilds it.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from models.settings import TandemSettings

BENCH_TENANT = "bench"
TINY_DIM = 384  # the tiny embedder answers with MiniLM-sized vectors, so payloads are realistic
_READY = ".bench-ready"


@dataclass(frozen=True)
class Home:
    """A TANDEM_HOME with embedder and classifier stable and a bench tenant without limits."""

    path: Path
    key: str
    real: bool

    @property
    def settings(self) -> TandemSettings:
        return TandemSettings(home=self.path)

    def artifact(self, model: str, version: str = "1") -> Path:
        """The verified local artifact directory of `model` `version`."""
        from orchestration.bootstrap import Platform

        platform = Platform.open(self.settings)
        mv = platform.registry.get(model, version)
        return Path(platform.store.fetch(mv.artifact_uri, mv.sha256))

    def default_version(self, model: str) -> str:
        """The version `model`'s stable alias names: what the gateway serves unless told otherwise."""
        from orchestration.bootstrap import Platform

        return Platform.open(self.settings).registry.resolve(model, "stable").version

    def torch_fp32_version(self, model: str = "embedder") -> str:
        """The oldest version of `model` that is MiniLM in torch fp32 (artifact kind `minilm`): the
        baselines' model. Tiny homes have none: their version "1" stands in (figures not meaningful)."""
        from models.ops import read_manifest
        from orchestration.bootstrap import Platform

        platform = Platform.open(self.settings)
        for mv in platform.registry.versions(model):  # in registration order
            if read_manifest(Path(platform.store.fetch(mv.artifact_uri, mv.sha256))).get("kind") == "minilm":
                return mv.version
        return "1"


def tiny_home(path: Path, *, delay_ms: float = 0.0) -> Home:
    """A fresh home with tiny models (`delay_ms` of sleep per batch to mimic a model's cost)."""
    from models.testing import write_tiny_artifact
    from orchestration.bootstrap import Platform

    if path.exists():
        shutil.rmtree(path)
    settings = TandemSettings(home=path)
    reg = Platform.open(settings).registry
    src = path / "src"
    knobs = {"delay_ms": delay_ms} if delay_ms else {}
    reg.register("embedder", "embed", write_tiny_artifact(src / "e1", "tiny-embed", dim=TINY_DIM, **knobs),
                 version="1", actor="bench")
    reg.register("classifier", "classify",
                 write_tiny_artifact(src / "c1", "tiny-classify", labels=["a", "b", "c"], **knobs),
                 version="1", actor="bench")
    for name in ("embedder", "classifier"):
        reg.promote(name, "1", actor="bench")
    return Home(path, _bench_key(settings), real=False)


def real_home(path: Path, *, fresh: bool = False, say=print) -> Home:
    """The reference models' home under `path`, built by `tandem init` unless a previous run left one."""
    from orchestration.bootstrap import init_home

    if fresh or not (path / _READY).exists():
        if path.exists():
            shutil.rmtree(path)
        say(f"building the reference models' home in {path} (tandem init, once)")
        # Stable left as init made it: the gateway serves the fastest version that passed its offline
        # evaluation (the default a user gets); baselines name torch fp32 (version 1) explicitly.
        init_home(TandemSettings(home=path), corpus_size=600, say=lambda m: say(f"  {m}"))
        (path / _READY).write_text("ok\n")
    else:
        # Every run starts with an empty prediction log, as on a fresh clone: a log grown over earlier
        # runs (thousands of files, never compacted) would make this run's commits slower than the last.
        shutil.rmtree(path / "lake" / "predictions", ignore_errors=True)
    return Home(path, _bench_key(TandemSettings(home=path)), real=True)


def tenant_key(home: Home, tenant_id: str, *, rate_per_s: float, burst: int) -> str:
    """A fresh key of `tenant_id` with these limits (created, or updated on a reused home)."""
    from online.gateway.tenants import TenantStore

    store = TenantStore(home.settings.tenants_file)
    if any(t.id == tenant_id for t in store.list()):
        store.update(tenant_id, rate_per_s=rate_per_s, burst=burst, daily_quota=None)
        return store.rotate_key(tenant_id)
    _, key = store.create(tenant_id, scopes={"predict"}, rate_per_s=rate_per_s, burst=burst)
    return key


def _bench_key(settings: TandemSettings) -> str:
    """A key of the `bench` tenant, created without rate limit or quota (a new key on reused homes)."""
    from online.gateway.tenants import TenantStore

    store = TenantStore(settings.tenants_file)
    if any(t.id == BENCH_TENANT for t in store.list()):
        return store.rotate_key(BENCH_TENANT)
    _, key = store.create(BENCH_TENANT, scopes={"predict"}, rate_per_s=1e9, burst=1_000_000_000)
    return key
