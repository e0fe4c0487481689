"""Typed settings for where Tandem keeps its state. Read when asked, never at import time."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class TandemSettings(BaseSettings):
    """Everything Tandem writes lives under `home` unless a setting points elsewhere."""

    model_config = SettingsConfigDict(env_prefix="TANDEM_", extra="ignore")

    home: Path = Field(default=Path(".tandem"), description="Root of Tandem's local state.")
    lake_uri: str | None = Field(default=None, description="Delta lake root: a path or s3:// URI.")
    artifacts_uri: str | None = Field(default=None, description="Artifact store root: a path or fsspec URI.")
    workflows_dir: Path | None = Field(default=None, description="Folder of workflow YAML files.")
    storage_options: dict[str, str] = Field(default_factory=dict, description="Object-store options.")
    onnx_cache: Path | None = Field(default=None, description="Exported .onnx files (default: <home>/cache/onnx).")

    @property
    def lake_root(self) -> str:
        return self.lake_uri or str((self.home / "lake").absolute())

    @property
    def artifacts_root(self) -> str:
        return self.artifacts_uri or str((self.home / "artifacts").absolute())

    @property
    def onnx_cache_dir(self) -> Path:
        return (self.onnx_cache or self.home / "cache" / "onnx").absolute()

    @property
    def dagster_home(self) -> Path:
        return (self.home / "dagster").absolute()

    @property
    def tenants_file(self) -> Path:
        return (self.home / "tenants.yaml").absolute()

    @property
    def workflow_dir(self) -> Path:
        return self.workflows_dir or Path(__file__).parent / "workflows"


@lru_cache
def get_settings() -> TandemSettings:
    return TandemSettings()
