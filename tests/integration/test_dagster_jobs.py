"""Async jobs end to end: submit_job -> sensor -> run (tagged by tenant) -> job_results + jobs status."""

from __future__ import annotations

import dagster as dg
import pytest

from assets import ASYNC_JOBS, async_job_results
from models.jobs import get_job, job_results_page, submit_job
from orchestration.definitions import async_job
from orchestration.sensors import make_async_jobs_sensor, make_job_failure_sensor
from tests.integration.dagster_support import make_home

pytestmark = pytest.mark.integration


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path)


def tick(sensor, instance, home, cursor=None) -> dg.SensorResult:
    with dg.build_sensor_context(instance=instance, cursor=cursor, resources=home.resources) as ctx:
        return sensor(ctx)


def launch(home, instance, request: dg.RunRequest, result: dg.SensorResult):
    """What the daemon does with a sensor result: add the partitions, then run the request."""
    for add in result.dynamic_partitions_requests:
        instance.add_dynamic_partitions(add.partitions_def_name, list(add.partition_keys))
    return dg.materialize([async_job_results], partition_key=request.partition_key, resources=home.resources,
                          instance=instance, tags=request.tags, raise_on_error=False)


def test_a_submitted_job_is_run_by_the_sensor_and_its_results_are_readable(home):
    job = submit_job(home.lake, "acme", "enrich", [{"text": f"shares of the chip maker rose {i}%"} for i in range(7)])
    sensor = make_async_jobs_sensor(async_job)
    with dg.instance_for_test() as instance:
        first = tick(sensor, instance, home)
        (request,) = first.run_requests
        assert request.partition_key == job["job_id"] and request.tags["tenant"] == "acme"
        assert request.run_key == f"{job['job_id']}:0"
        assert list(first.dynamic_partitions_requests[0].partition_keys) == [job["job_id"]]
        # While the run waits in the queue, the job stays queued: no second run is requested.
        assert not tick(sensor, instance, home, first.cursor).run_requests

        run = launch(home, instance, request, first)
        assert run.success
        assert instance.get_dynamic_partitions(ASYNC_JOBS.name) == [job["job_id"]]
        assert instance.get_run_by_id(run.run_id).tags["tenant"] == "acme"
        assert tick(sensor, instance, home, first.cursor).skip_reason is not None

    done = get_job(home.lake, job["job_id"])
    assert (done["status"], done["n_done"], done["attempts"], done["run_id"]) == ("succeeded", 7, 1, run.run_id)
    assert done["error"] is None
    results = job_results_page(home.lake, job["job_id"], offset=0, limit=100)
    assert [r["idx"] for r in results] == list(range(7))
    assert all(r["status"] == "ok" and set(r["output"]) == {"embedding", "label", "scores"} for r in results)
    assert results[0]["model_versions"] == {"embed": "embedder@1", "classify": "classifier@1"}


def test_a_failing_job_is_retried_then_marked_failed_with_the_reason(home):
    job = submit_job(home.lake, "acme", "no-such-workflow", [{"text": "hello"}])
    jobs_sensor = make_async_jobs_sensor(async_job)
    failures = make_job_failure_sensor(async_job, max_attempts=2)
    cursor = None
    with dg.instance_for_test() as instance:
        for attempt in (1, 2):
            result = tick(jobs_sensor, instance, home, cursor)
            cursor = result.cursor
            (request,) = result.run_requests
            assert request.run_key == f"{job['job_id']}:{attempt - 1}"
            run = launch(home, instance, request, result)
            assert not run.success
            with dg.build_run_status_sensor_context(
                sensor_name=failures.name, dagster_instance=instance, dagster_run=run.dagster_run,
                dagster_event=run.get_run_failure_event(), resources=home.resources,
            ) as ctx:
                failures(ctx.for_run_failure())
            status = get_job(home.lake, job["job_id"])
            assert status["attempts"] == attempt
            assert status["status"] == ("queued" if attempt == 1 else "failed")
        assert not tick(jobs_sensor, instance, home, cursor).run_requests

    assert "failed after 2 attempts" in status["error"] and "no workflow named 'no-such-workflow'" in status["error"]
