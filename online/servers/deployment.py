"""What one model server serves: a model, one or more of its versions, and how to batch them.

A `DeploymentSpec` is plain data (pydantic, picklable, JSON round-trip) so it can be built from
the registry, written to a file (`python -m online.servers --spec spec.json`) and shipped to
LitServe's spawned inference workers unchanged.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from models.errors import RegistryError
from models.schemas import TASKS

__all__ = ["DeploymentSpec", "VersionSpec", "deployment_from_registry", "load_spec"]

DEFAULT_BATCH_TIMEOUT = 0.005
"""Seconds a batch stays open after its first request.

Measured with MiniLM fp32 on 2 shared cores (wrk, one 15-25-word text per request, trials kept only
when other jobs used at most 7% CPU): at 32 clients 0 / 0.002 / 0.005 / 0.01 s gave 113 / 115 / 117 / 108
req/s; at 1 client 50 / 40 / 38 / 29 req/s (every lone request pays the window).
"""

_ALIAS_ORDER = ("stable", "canary", "shadow")


class VersionSpec(BaseModel):
    """One served version: where its artifact lives and the digest it must hash to."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    artifact_uri: str = Field(min_length=1)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class DeploymentSpec(BaseModel):
    """A model server's deployment: `versions[0]` is the default for requests naming none."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(min_length=1)
    task: str
    versions: tuple[VersionSpec, ...] = Field(min_length=1)
    artifacts_root: str = Field(description="Artifact store root (path or fsspec URI) to fetch from.")
    storage_options: dict[str, str] = Field(default_factory=dict)
    max_batch_size: int = Field(default=32, ge=1)
    batch_timeout: float = Field(
        default=DEFAULT_BATCH_TIMEOUT,
        ge=0,
        le=10,
        description="Seconds a batch stays open after its first request; 0: only what is already queued.",
    )
    workers: int = Field(default=1, ge=1)
    torch_threads: int | None = Field(default=None, ge=1, description="None: usable cores // workers.")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    registry_root: str | None = Field(
        default=None,
        description="Lake root of the registry to watch: versions that gain an alias are loaded while serving.",
    )
    registry_poll_s: float = Field(default=2.0, gt=0, le=300)
    release_grace_s: float = Field(
        default=60.0, ge=0, description="Seconds a version that lost every alias stays loaded before release."
    )

    @field_validator("task")
    @classmethod
    def _known_task(cls, task: str) -> str:
        if task not in TASKS:
            raise ValueError(f"unknown task {task!r}; known tasks: {', '.join(sorted(TASKS))}")
        return task

    @model_validator(mode="after")
    def _check(self) -> DeploymentSpec:
        names = [v.version for v in self.versions]
        if len(set(names)) != len(names):
            raise ValueError(f"versions must be distinct, got {names}")
        return self

    @property
    def default_version(self) -> str:
        return self.versions[0].version

    @property
    def version_names(self) -> list[str]:
        return [v.version for v in self.versions]

    def resolved_torch_threads(self) -> int:
        """Threads per inference worker: the explicit setting, else usable cores // workers (>= 1)."""
        if self.torch_threads is not None:
            return self.torch_threads
        return max(1, _usable_cores() // self.workers)

    def describe(self) -> dict[str, Any]:
        """The JSON served at `GET /info` under "model"."""
        return {
            "name": self.model,
            "task": self.task,
            "default_version": self.default_version,
            "versions": [v.model_dump() for v in self.versions],
            "max_batch_size": self.max_batch_size,
            "batch_timeout": self.batch_timeout,
            "workers": self.workers,
            "torch_threads": self.resolved_torch_threads(),
            "watches_registry": self.registry_root is not None,
        }


class _VersionSource(Protocol):
    """The part of `models.registry.Registry` a deployment is resolved from."""

    def resolve(self, name: str, ref: str = "stable") -> Any: ...

    def state(self, name: str) -> Any: ...


def deployment_from_registry(
    registry: _VersionSource, name: str, versions: list[str] | None = None, **overrides: Any
) -> DeploymentSpec:
    """Resolve `versions` (versions or aliases) of `name` into a spec.

    `versions=None` takes every version an alias points at now, stable first, then canary and
    shadow, so one server serves the model's whole traffic split. `overrides` set any other
    `DeploymentSpec` field (artifacts_root is required).
    """
    if versions is None:
        state = registry.state(name)
        refs = [getattr(state, alias) for alias in _ALIAS_ORDER if getattr(state, alias, None)]
        if not refs:
            raise RegistryError(
                f"model {name!r} has no stable, canary or shadow version to serve; promote one with "
                f"`tandem models promote {name} VERSION` or pass the versions explicitly"
            )
    else:
        refs = list(versions)
    resolved = []
    for ref in refs:
        mv = registry.resolve(name, str(ref))
        if mv.version not in [r.version for r in resolved]:
            resolved.append(mv)
    tasks = {mv.task for mv in resolved}
    if len(tasks) != 1:
        raise RegistryError(f"versions of {name!r} disagree on the task: {sorted(tasks)}")
    return DeploymentSpec(
        model=name,
        task=tasks.pop(),
        versions=tuple(
            VersionSpec(version=mv.version, artifact_uri=mv.artifact_uri, sha256=mv.sha256) for mv in resolved
        ),
        **overrides,
    )


def load_spec(path: Path | str) -> DeploymentSpec:
    """Read a `DeploymentSpec` from a JSON file."""
    return DeploymentSpec.model_validate_json(Path(path).read_text())


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
