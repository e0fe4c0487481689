"""The embedded Dagster instance of `tandem up`: a DAGSTER_HOME under TANDEM_HOME and the commands that use it.

`prepare_dagster_home(settings)` writes (idempotently) `TANDEM_HOME/dagster/dagster.yaml` (SQLite
storage, QueuedRunCoordinator with a per-tenant run limit) and a `workspace.yaml` that loads
`orchestration.definitions`. `dagster_commands(...)` gives the webserver and daemon command lines,
`dagster_env(settings)` the environment to run them with. Kubernetes uses `deploy/dagster.yaml`.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import yaml

from models.settings import TandemSettings

__all__ = ["dagster_commands", "dagster_env", "instance_config", "prepare_dagster_home"]

_PROJECT_ROOT = Path(__file__).resolve().parents[1]


def instance_config(dagster_home: Path, *, max_concurrent_runs: int = 4, runs_per_tenant: int = 2) -> dict[str, Any]:
    """The embedded instance's dagster.yaml as a dict."""
    home = Path(dagster_home).absolute()
    return {
        "storage": {"sqlite": {"base_dir": str(home / "storage")}},
        "local_artifact_storage": {
            "module": "dagster._core.storage.root", "class": "LocalArtifactStorage",
            "config": {"base_dir": str(home)},
        },
        "run_coordinator": {
            "module": "dagster._core.run_coordinator", "class": "QueuedRunCoordinator",
            "config": {
                "max_concurrent_runs": max_concurrent_runs,
                # Every async-job run is tagged `tenant`: at most `runs_per_tenant` run at once per
                # tenant, so one tenant's burst of jobs cannot take every slot.
                "tag_concurrency_limits": [
                    {"key": "tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": runs_per_tenant},
                ],
            },
        },
        "run_launcher": {"module": "dagster._core.launcher", "class": "DefaultRunLauncher"},
        "run_monitoring": {"enabled": True, "max_resume_run_attempts": 0},
        "sensors": {"use_threads": True, "num_workers": 2},
        "schedules": {"use_threads": True, "num_workers": 2},
        "telemetry": {"enabled": False},
    }


def prepare_dagster_home(settings: TandemSettings, **limits: int) -> Path:
    """Create `settings.dagster_home` with dagster.yaml and workspace.yaml; returns the directory.

    `limits` are `max_concurrent_runs` and `runs_per_tenant` (see `instance_config`).
    """
    home = settings.dagster_home
    (home / "storage").mkdir(parents=True, exist_ok=True)
    _write(home / "dagster.yaml", instance_config(home, **limits))
    _write(home / "workspace.yaml", {"load_from": [{"python_module": {
        "module_name": "orchestration.definitions", "working_directory": str(_PROJECT_ROOT),
    }}]})
    return home


def dagster_env(settings: TandemSettings) -> dict[str, str]:
    """The environment for the webserver and daemon: DAGSTER_HOME and TANDEM_HOME set, offline models."""
    return {
        **os.environ,
        "DAGSTER_HOME": str(settings.dagster_home),
        "TANDEM_HOME": str(settings.home.absolute()),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def dagster_commands(settings: TandemSettings, *, host: str = "127.0.0.1", port: int = 3000) -> dict[str, list[str]]:
    """Command lines of `dagster-webserver` and `dagster-daemon` for the prepared home."""
    workspace = str(settings.dagster_home / "workspace.yaml")
    return {
        "dagster-webserver": [sys.executable, "-m", "dagster_webserver", "-w", workspace,
                              "-h", host, "-p", str(port)],
        "dagster-daemon": [sys.executable, "-m", "dagster._daemon", "run", "-w", workspace],
    }


def _write(path: Path, doc: dict[str, Any]) -> None:
    text = "# Written by orchestration.dagster_home.prepare_dagster_home; changes are overwritten.\n"
    text += yaml.safe_dump(doc, sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
