"""The embedded Dagster instance of `tandem up`: a DAGSTER_HOME under TANDEM_HOME and the commands that use it.

`prepare_dagster_home(settings)` writes (idempotently) `TANDEM_HOME/dagster/dagster.yaml` (SQLite
storage, QueuedRunCoordinator with a per-tenant run limit) and a `workspace.yaml` that loads
`orchestration.definitions`. `migrate_instance(settings)` then creates and migrates the instance's
storage once, in a process of its own, *before* the webserver and daemon start: started together on
a fresh home, both ran the schema migrations and about one start in four left two
`alembic_version` rows, after which no Dagster process could load the home again. A home already
broken that way is repaired first (`repair_alembic_heads`). `dagster_commands(...)` gives the
webserver and daemon command lines, `dagster_env(settings)` the environment to run them with.
Kubernetes uses `deploy/dagster.yaml`.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from models.settings import TandemSettings

__all__ = [
    "DagsterHomeError",
    "dagster_commands",
    "dagster_env",
    "instance_config",
    "migrate_instance",
    "prepare_dagster_home",
    "repair_alembic_heads",
]


class DagsterHomeError(RuntimeError):
    """Dagster's instance under TANDEM_HOME could not be created, migrated or repaired."""

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


def repair_alembic_heads(storage_dir: Path, head: str | None = None) -> list[str]:
    """Reduce every SQLite database under `storage_dir` with several `alembic_version` rows to one.

    Two processes that migrate a fresh database at once each stamp it, leaving two rows that
    Alembic reads as two heads ("Version table 'alembic_version' has more than one head present").
    Both ran the same create-and-stamp of a fresh schema, so the schema is at `head` (Dagster's
    current revision): keep that one row. Returns a line per repaired file; raises
    DagsterHomeError when the rows do not include `head` (a schema this code cannot vouch for).
    """
    repaired = []
    for db in sorted(Path(storage_dir).rglob("*.db")):
        with sqlite3.connect(db) as conn:
            try:
                rows = [r[0] for r in conn.execute("SELECT version_num FROM alembic_version")]
            except sqlite3.DatabaseError:  # no version table (yet): nothing to repair
                continue
            if len(rows) <= 1:
                continue
            head = head or _alembic_head()
            if head not in rows:
                raise DagsterHomeError(
                    f"{db} has {len(rows)} Alembic heads ({', '.join(rows)}) and none is Dagster's current "
                    f"revision {head}; stop Tandem and delete {Path(storage_dir).parent} to start Dagster's "
                    "storage afresh (run history and sensor cursors are lost; the lake is not touched)")
            conn.execute("DELETE FROM alembic_version")
            conn.execute("INSERT INTO alembic_version (version_num) VALUES (?)", (head,))
            repaired.append(f"{db.relative_to(storage_dir)}: {len(rows)} Alembic heads -> {head}")
    return repaired


def migrate_instance(settings: TandemSettings, say: Callable[[str], None] = print, timeout_s: float = 300) -> None:
    """Repair, create and migrate the instance's storage once; returns when it is ready to share.

    Runs in a child process (importing Dagster costs the launcher ~1 s and 150 MB it would keep).
    """
    home = prepare_dagster_home(settings)
    proc = subprocess.run([sys.executable, "-m", "orchestration.dagster_home"], env=dagster_env(settings),
                          cwd=home, capture_output=True, text=True, timeout=timeout_s)
    for line in proc.stdout.splitlines():
        if line.startswith("repaired "):
            say(f"  Dagster storage {line}")
    if proc.returncode != 0:
        detail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise DagsterHomeError(f"could not prepare Dagster's storage in {home}: {detail}")


def _alembic_head() -> str:
    from alembic.script import ScriptDirectory
    from dagster._core.storage.schedules.sqlite import sqlite_schedule_storage
    from dagster._core.storage.sql import get_alembic_config

    return ScriptDirectory.from_config(get_alembic_config(sqlite_schedule_storage.__file__)).get_current_head()


def _migrate_here() -> None:
    """The child of `migrate_instance`: repair duplicate heads, then create/upgrade every storage."""
    from dagster import DagsterInstance

    home = Path(os.environ["DAGSTER_HOME"])
    for line in repair_alembic_heads(home / "storage"):
        print(f"repaired {line}", flush=True)
    with DagsterInstance.get() as instance:
        instance.upgrade(print_fn=lambda *_: None)


def _write(path: Path, doc: dict[str, Any]) -> None:
    text = "# Written by orchestration.dagster_home.prepare_dagster_home; changes are overwritten.\n"
    text += yaml.safe_dump(doc, sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


if __name__ == "__main__":
    try:
        _migrate_here()
    except DagsterHomeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
