"""Dagster resources: where Tandem's state lives, the lake, the registry and a per-process model loader.

The same resources run embedded (`tandem up`, SQLite Dagster storage, local Delta) and on
Kubernetes (Delta on S3): every unset field falls back to the `TANDEM_*` environment of the
process running the step, read when the step runs, never at import time.

    TandemConfig ──▶ LakeResource      (lakehouse.Lake)
                 ├─▶ RegistryResource  (models.registry.Registry + ArtifactStore)
                 └─▶ ModelLoader       (load_op per (model, version), cached per process)
"""

import threading
from pathlib import Path

import dagster as dg

from lakehouse import Lake
from models.artifacts import ArtifactStore
from models.executor import OpResolver
from models.ops import ModelOp, load_op
from models.registry import Registry
from models.settings import TandemSettings
from models.tenancy import load_tenants
from models.workflows import WorkflowSpec, load_workflows

__all__ = ["LakeResource", "ModelLoader", "RegistryResource", "TandemConfig", "build_resources"]


class TandemConfig(dg.ConfigurableResource):
    """Where Tandem keeps its state; unset fields come from TANDEM_* env vars when a step runs."""

    home: str | None = None
    lake_uri: str | None = None
    artifacts_uri: str | None = None
    workflows_dir: str | None = None

    def settings(self) -> TandemSettings:
        given = {
            "home": self.home, "lake_uri": self.lake_uri, "artifacts_uri": self.artifacts_uri,
            "workflows_dir": self.workflows_dir,
        }
        return TandemSettings(**{k: v for k, v in given.items() if v is not None})

    def workflows(self) -> dict[str, WorkflowSpec]:
        return load_workflows(self.settings().workflow_dir)

    def workflow(self, name: str) -> WorkflowSpec:
        specs = self.workflows()
        if name not in specs:
            raise dg.Failure(
                f"no workflow named {name!r} in {self.settings().workflow_dir}; known: {', '.join(sorted(specs))}"
            )
        return specs[name]

    def tenant_retention(self) -> dict[str, int]:
        """`{tenant id: retention_days}` from TANDEM_HOME/tenants.yaml ({} when the file is absent)."""
        return read_tenant_retention(self.settings().tenants_file)


def read_tenant_retention(path: Path) -> dict[str, int]:
    """`{tenant id: retention_days}` through the one tenant parser (`models.tenancy`); a broken file
    raises `TenancyError` naming the tenant and field rather than silently keeping records longer."""
    return {tid: t.retention_days for tid, t in load_tenants(Path(path)).items()}


class LakeResource(dg.ConfigurableResource):
    """The Delta lake (`lakehouse.Lake`) at the configured root."""

    config: TandemConfig

    def lake(self) -> Lake:
        s = self.config.settings()
        return Lake(s.lake_root, s.storage_options or None)


class RegistryResource(dg.ConfigurableResource):
    """The model registry and its content-addressed artifact store."""

    config: TandemConfig

    def store(self) -> ArtifactStore:
        s = self.config.settings()
        return ArtifactStore(s.artifacts_root, s.storage_options or None)

    def registry(self) -> Registry:
        s = self.config.settings()
        return Registry(Lake(s.lake_root, s.storage_options or None), self.store())


_OPS: dict[tuple[str, str, str, str], ModelOp] = {}
_OPS_LOCK = threading.Lock()


class ModelLoader(dg.ConfigurableResource):
    """Loads model ops from the artifact store (verified by digest), once per (model, version) per process."""

    config: TandemConfig
    device: str = "cpu"

    def op(self, registry: Registry, store: ArtifactStore, model: str, version: str) -> ModelOp:
        mv = registry.get(model, version)
        key = (model, mv.version, mv.sha256, self.device)
        with _OPS_LOCK:
            if key not in _OPS:
                _OPS[key] = load_op(store.fetch(mv.artifact_uri, mv.sha256), self.device)
            return _OPS[key]

    def resolver(self, registry_resource: RegistryResource) -> OpResolver:
        registry, store = registry_resource.registry(), registry_resource.store()
        return lambda model, version: self.op(registry, store, model, version)


def build_resources(**config: str | None) -> dict[str, dg.ConfigurableResource]:
    """Every resource the assets and sensors need, sharing one `TandemConfig(**config)`."""
    tandem = TandemConfig(**config)
    return {
        "tandem": tandem,
        "lake": LakeResource(config=tandem),
        "registry": RegistryResource(config=tandem),
        "models": ModelLoader(config=tandem),
    }
