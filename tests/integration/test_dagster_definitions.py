"""The code location loads; the embedded Dagster home is valid; maintenance and training assets run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import dagster as dg
import pyarrow.compute as pc
import pytest

from assets import classifier_training, lake_compaction, tenant_retention
from models.settings import TandemSettings
from online.gateway.tenants import TenantStore
from orchestration.dagster_home import dagster_commands, prepare_dagster_home
from orchestration.definitions import defs
from tests.integration.dagster_support import make_home, prediction_rows

pytestmark = pytest.mark.integration


def test_the_definitions_load_with_every_job_sensor_and_schedule():
    dg.Definitions.validate_loadable(defs)
    repo = defs.get_repository_def()
    assert {"daily_batch", "daily_drift", "canary_evaluation_job", "classifier_training_job", "async_job",
            "maintenance"} <= set(repo.job_names)
    assert {s.name for s in repo.sensor_defs} == {"canary_guard", "drift_alerts", "async_jobs", "async_job_failures"}
    assert {"canary_evaluation_schedule", "maintenance_schedule"} <= {s.name for s in repo.schedule_defs}


def test_the_prepared_dagster_home_queues_runs_with_a_limit_per_tenant(tmp_path, monkeypatch):
    settings = TandemSettings(home=tmp_path / "home")
    home = prepare_dagster_home(settings, runs_per_tenant=3)
    monkeypatch.setenv("DAGSTER_HOME", str(home))

    with dg.DagsterInstance.get() as instance:
        config = instance.run_coordinator.get_run_queue_config()
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        assert config.tag_concurrency_limits == [
            {"key": "tenant", "value": {"applyLimitPerUniqueValue": True}, "limit": 3}]
        assert str(home / "storage") in str(instance.run_storage._conn_string)  # SQLite under TANDEM_HOME
    assert prepare_dagster_home(settings) == home  # idempotent
    commands = dagster_commands(settings, port=3123)
    assert commands["dagster-webserver"][-2:] == ["-p", "3123"]
    assert str(home / "workspace.yaml") in commands["dagster-daemon"]


def test_retention_keeps_each_tenants_days_and_maintenance_compacts(tmp_path):
    home = make_home(tmp_path)
    tenants = TenantStore(home.settings.tenants_file)  # the gateway's own file format
    tenants.create("acme", retention_days=7)
    tenants.create("globex", retention_days=60)
    today = datetime.now(UTC).date()
    for tenant in ("acme", "globex", "ghost"):  # ghost: not in the file -> the default (30 days)
        for age in (1, 20, 45):
            home.lake.append("predictions", prediction_rows(model="classifier", version="1", arm="stable",
                                                            day=today - timedelta(days=age), n=3, tenant=tenant,
                                                            seed=age))

    with dg.instance_for_test() as instance:
        result = dg.materialize([tenant_retention, lake_compaction], resources=home.resources,
                                instance=instance)

    left = home.lake.read("predictions")
    ages = {t: sorted({(today - d).days for d in left.filter(pc.field("tenant") == t).column("day").to_pylist()})
            for t in ("acme", "globex", "ghost")}
    assert ages == {"acme": [1], "globex": [1, 20, 45], "ghost": [1, 20]}
    mat = result.asset_materializations_for_node("lake_compaction")[0]
    report = mat.metadata["tables"].value
    assert report["predictions"]["files_removed_by_compaction"] > 1


def test_classifier_training_registers_a_new_version_without_promoting_it(tmp_path):
    home = make_home(tmp_path)
    config = {"ops": {"classifier_training": {"config": {"demo_corpus_size": 80, "epochs": 3, "min_rows": 50}}}}
    with dg.instance_for_test() as instance:
        result = dg.materialize([classifier_training], resources=home.resources, instance=instance,
                                run_config=config)

    meta = result.asset_materializations_for_node("classifier_training")[0].metadata
    assert meta["version"].value == "2" and meta["training_source"].value == "demo corpus"
    assert 0.0 <= meta["accuracy"].value <= 1.0
    mv = home.registry.get("classifier", "2")
    assert mv.metrics["n_train"] + mv.metrics["n_test"] == 80
    assert mv.lineage["dagster_run_id"] == result.run_id
    assert home.registry.state("classifier").stable == "1"


def test_the_k8s_executor_is_chosen_by_environment(monkeypatch):
    import importlib

    import orchestration.definitions as module

    monkeypatch.setenv("TANDEM_DAGSTER_EXECUTOR", "k8s")
    try:
        repo = importlib.reload(module).defs.get_repository_def()
        assert repo.get_job("daily_batch").executor_def.name == "k8s"
        assert repo.get_job("async_job").executor_def.name == "in_process"  # one step: no pod per step
    finally:
        monkeypatch.delenv("TANDEM_DAGSTER_EXECUTOR")
        importlib.reload(module)
