"""Retention over every table with tenant data (the Dagster asset) and `tandem tenants purge`, on real Delta."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import dagster as dg
import pyarrow.compute as pc
from dagster import DagsterInstance

from assets import tenant_retention
from assets.partitions import ASYNC_JOBS
from lakehouse.retention import JOB_TABLES, TENANT_TABLES, tenant_files
from models.jobs import submit_job, update_job
from models.tenancy import TenantStore
from orchestration.bootstrap import Platform
from orchestration.cli_replay import _resolver
from orchestration.dagster_home import prepare_dagster_home
from tests.integration.conftest import ROOT, base_env
from tests.integration.dagster_support import make_home, prediction_rows
from tests.integration.requests_support import request_rows


def _job(lake, tenant: str, submitted: datetime, status: str = "succeeded") -> str:
    job = submit_job(lake, tenant, "classify", [{"text": "a"}, {"text": "b"}], clock=lambda: submitted)
    lake.append("job_results", [{"job_id": job["job_id"], "idx": i, "output": "{}", "model_versions": "{}",
                                 "status": "ok", "error": None, "finished_at": submitted} for i in range(2)])
    if status != "queued":
        update_job(lake, job["job_id"], status=status)
    return job["job_id"]


def _tenant_data(h, tenant: str, day: date, seed: int = 0) -> str:
    """One day of a tenant's records in every table; returns its job id."""
    resolve = _resolver(Platform.open(h.settings))
    h.lake.append("requests", request_rows(resolve, model="classifier", task="classify", version="1", tenant=tenant,
                                           texts=[f"{tenant} text {i}" for i in range(3)], day=day))
    h.lake.append("predictions", prediction_rows(model="classifier", version="1", arm="stable", day=day, n=3,
                                                 tenant=tenant, seed=seed))
    return _job(h.lake, tenant, datetime.combine(day, datetime.min.time(), tzinfo=UTC))


def test_retention_trims_every_tenant_table_and_the_expired_jobs_partitions(tmp_path):
    h = make_home(tmp_path)
    TenantStore(h.settings.tenants_file).create("acme", retention_days=7)
    today = datetime.now(UTC).date()
    old = _tenant_data(h, "acme", today - timedelta(days=10))
    new = _tenant_data(h, "acme", today - timedelta(days=1), seed=1)
    other = _tenant_data(h, "ghost", today - timedelta(days=10), seed=2)  # default retention: 30 days
    live = _job(h.lake, "acme", datetime.now(UTC) - timedelta(days=20), status="queued")

    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(ASYNC_JOBS.name, [old, new, other, live])
        result = dg.materialize([tenant_retention], resources=h.resources, instance=instance)
        assert sorted(instance.get_dynamic_partitions(ASYNC_JOBS.name)) == sorted([new, other, live])

    meta = result.asset_materializations_for_node("tenant_retention")[0].metadata
    assert meta["deleted_by_table"].value == {"requests": 3, "predictions": 3, "jobs": 1, "job_inputs": 2,
                                              "job_results": 2}
    assert meta["job_partitions_removed"].value == 1
    assert sorted(h.lake.read("jobs").column("job_id").to_pylist()) == sorted([new, other, live])
    assert set(h.lake.read("job_inputs").column("job_id").to_pylist()) == {new, other, live}
    left = h.lake.read("requests", filter=pc.field("tenant") == "acme").column("day").to_pylist()
    assert set(left) == {today - timedelta(days=1)}


def test_purge_deletes_a_tenants_records_everywhere_and_proves_it(tmp_path):
    h = make_home(tmp_path)
    today = datetime.now(UTC).date()
    gone = [_tenant_data(h, "gone", today - timedelta(days=d), seed=d) for d in (1, 2)]
    kept = _tenant_data(h, "kept", today, seed=9)
    h.lake.append("replay_evaluations", [{
        "replay_id": "r1", "model": "classifier", "task": "classify", "candidate_version": "1", "tenant": "gone",
        "n_replayed": 3, "n_skipped": 0, "passed": False, "evaluated_at": datetime.now(UTC)}])
    assert tenant_files(h.lake, "requests", "tenant", ["gone"]) > 0
    assert tenant_files(h.lake, "job_inputs", "job_id", gone) > 0
    prepare_dagster_home(h.settings)
    with DagsterInstance.from_config(str(h.settings.dagster_home)) as instance:
        instance.add_dynamic_partitions(ASYNC_JOBS.name, [*gone, kept])
    env = base_env(Path(h.settings.home))

    def tandem(*args, stdin=None):
        return subprocess.run([sys.executable, "-m", "orchestration.cli", "tenants", "purge", *args], cwd=ROOT,
                              env=env, input=stdin, capture_output=True, text=True, timeout=300)

    declined = tandem("gone", stdin="n\n")
    assert declined.returncode == 1 and h.lake.read("jobs", filter=pc.field("tenant") == "gone").num_rows == 2
    done = tandem("gone", "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "purged:" in done.stdout and "every table counts 0 rows" in done.stdout
    assert "removed 2 async-job partition(s) from Dagster; 0 left" in done.stdout
    print(done.stdout)

    for name in TENANT_TABLES:
        n = h.lake.sql(f"SELECT count(*) AS n FROM {name} WHERE tenant = ?", ["gone"]).column("n")[0].as_py()
        assert n == 0, name
        assert tenant_files(h.lake, name, "tenant", ["gone"]) == 0, name
    for name in JOB_TABLES:
        assert h.lake.read(name, filter=pc.field("job_id").isin(gone)).num_rows == 0
        assert tenant_files(h.lake, name, "job_id", gone) == 0
        assert set(h.lake.read(name).column("job_id").to_pylist()) == {kept}
    assert h.lake.read("requests").num_rows == 3 and h.lake.read("predictions").num_rows == 3  # kept's
    again = tandem("gone", "--yes")
    assert again.returncode == 0 and "purged:" in again.stdout
    with DagsterInstance.from_config(str(h.settings.dagster_home)) as instance:
        assert instance.get_dynamic_partitions(ASYNC_JOBS.name) == [kept]
