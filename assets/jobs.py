"""The `async_job_results` asset: one dynamic partition per async job submitted through the gateway.

A run reads the job's inputs (sealed, see `models.jobs`), runs its workflow in-process with the
registry's stable versions, replaces the job's results and its items' `requests` rows (stored as the
tenant's PII policy allows), marks the job `succeeded` and deletes its sealed inputs. If the run
fails, the job-failure sensor re-queues it (or marks it `failed` after the last attempt).
"""

import dagster as dg

from assets.partitions import ASYNC_JOBS
from assets.resources import LakeResource, ModelLoader, RegistryResource, TandemConfig
from assets.scoring import run_metadata, stable_versions
from lakehouse.sql import sql_literal
from models.executor import run_workflow_batch
from models.jobs import forget_job_inputs, get_job, load_job_inputs, update_job, write_job_results
from models.pii import Privacy
from models.record import job_item_rows
from models.tenancy import load_tenants


class JobRunConfig(dg.Config):
    """How many instances go into one model call."""

    batch_size: int = 64


@dg.asset(partitions_def=ASYNC_JOBS, group_name="jobs", kinds={"delta", "pytorch"})
def async_job_results(
    context: dg.AssetExecutionContext,
    config: JobRunConfig,
    tandem: TandemConfig,
    lake: LakeResource,
    registry: RegistryResource,
    models: ModelLoader,
) -> dg.MaterializeResult:
    """The results of one async job (partition = job id), written to `job_results`."""
    job_id, the_lake = context.partition_key, lake.lake()
    job = get_job(the_lake, job_id)
    if job is None:
        raise dg.Failure(f"no job {job_id!r} in the `jobs` table")
    attempt = job["attempts"] + 1
    update_job(the_lake, job_id, status="running", attempts=attempt, run_id=context.run.run_id, error=None)
    spec = tandem.workflow(job["workflow"])
    reg = registry.registry()
    settings = tandem.settings()
    privacy = Privacy.for_home(settings.home)
    policy = _pii_policy(settings.tenants_file, job["tenant"])
    inputs = load_job_inputs(the_lake, job_id, privacy)
    result = run_workflow_batch(spec, inputs, models.resolver(registry), stable_versions(reg, spec),
                                batch_size=config.batch_size)
    written = write_job_results(the_lake, job_id, result, inputs=inputs, policy=policy, privacy=privacy)
    the_lake.replace_where(
        "requests", job_item_rows(job, inputs, result, policy, privacy),
        f"tenant = {sql_literal(job['tenant'])} AND kind = 'job_item' AND job_id = {sql_literal(job_id)}")
    failed = result.count("error")
    update_job(the_lake, job_id, status="succeeded", n_done=written,
               error=f"{failed} of {written} inputs failed; see their results" if failed else None)
    forget_job_inputs(the_lake, job_id)
    return dg.MaterializeResult(metadata={
        **run_metadata(result, result.versions), "job_id": job_id, "tenant": job["tenant"],
        "workflow": spec.name, "attempt": attempt, "pii_policy": policy,
    })


def _pii_policy(tenants_file, tenant: str) -> str:
    """The tenant's PII policy; `drop` (store no input) for a tenant no longer in the file."""
    try:
        return load_tenants(tenants_file)[tenant].pii if tenants_file.exists() else "redact"
    except KeyError:
        return "drop"
