"""The request record through the real gateway: a row per request, readable by id before and after the
flush, tenant-scoped, and free of the PII a tenant's policy forbids (every file and every string column)."""

from __future__ import annotations

import httpx
import pytest

from lakehouse import Lake
from models.settings import TandemSettings
from online.gateway.tenants import TenantStore
from tests.integration.conftest import Cluster, base_env, gateway, tiny_platform_home

pytestmark = pytest.mark.integration

POLICIES = ("keep", "redact", "hash", "drop")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    home = tiny_platform_home(tmp_path_factory.mktemp("home"))
    tenants = TenantStore(TandemSettings(home=home).tenants_file)
    keys = {}
    for policy in POLICIES:
        _, keys[policy] = tenants.create(f"t-{policy}", scopes={"predict", "jobs"}, rate_per_s=1000, burst=1000,
                                         pii=policy)
    _, keys["other"] = tenants.create("t-other", scopes={"predict"}, rate_per_s=1000, burst=1000)
    _, keys["slow"] = tenants.create("t-slow", scopes={"predict"}, rate_per_s=1000, burst=1000,
                                     daily_quota=1)
    # A long flush interval: records stay in the gateway's buffer until it stops (which writes them).
    env = base_env(home, TANDEM_GATEWAY_LOG_FLUSH_S="600")
    c = Cluster(home, env)
    try:
        c.url = c.start_servers_and_gateway({"embedder": "1", "classifier": "1", "reranker": "1"}, home)
        c.keys = keys
        yield c
    finally:
        c.stop_all()


def post(c, path, body, tenant):
    return httpx.post(c.url + path, json=body, headers={"Authorization": f"Bearer {c.keys[tenant]}"}, timeout=30)


def record(c, request_id, tenant):
    return httpx.get(f"{c.url}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {c.keys[tenant]}"},
                     timeout=30)


def restart_gateway(c) -> None:
    """Stop the gateway (it writes what it buffered) and start a fresh one on the same home."""
    c.procs["gateway"].stop()
    gw = c.add(gateway(c.env, c.home)).start(c.home)
    gw.wait_healthy()
    c.url = gw.health.removesuffix("/healthz")


def send_every_route(c, tenant: str, text: str) -> dict[str, httpx.Response]:
    return {
        "predict": post(c, "/v1/models/classifier/predict", {"instances": [{"text": text}]}, tenant),
        "embeddings": post(c, "/v1/embeddings", {"model": "embedder", "input": [text, "plain words"]}, tenant),
        "rerank": post(c, "/v1/rerank", {"model": "reranker", "query": text, "documents": [text, "other words"],
                                         "return_documents": True}, tenant),
        "workflow": post(c, "/v1/workflows/classify/run", {"input": {"text": text}}, tenant),
    }


def test_every_route_leaves_a_record_readable_by_id_before_and_after_the_flush(cluster):
    answers = send_every_route(cluster, "keep", "a text about sports and teams")
    assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 200)
    bad = post(cluster, "/v1/models/classifier/predict", {"instances": [{"txt": "x"}]}, "keep")
    missing = post(cluster, "/v1/models/nope/predict", {"instances": [{"text": "x"}]}, "keep")
    unauth = httpx.post(cluster.url + "/v1/embeddings", json={"model": "embedder", "input": "x"}, timeout=30)
    assert (bad.status_code, missing.status_code, unauth.status_code) == (422, 404, 401)
    post(cluster, "/v1/embeddings", {"model": "embedder", "input": "x"}, "slow")
    limited = post(cluster, "/v1/embeddings", {"model": "embedder", "input": "x"}, "slow")
    assert limited.status_code == 429

    def check(stage: str):
        got = {k: record(cluster, r.headers["x-request-id"], "keep") for k, r in answers.items()}
        assert {k: r.status_code for k, r in got.items()} == dict.fromkeys(got, 200), (stage, got)
        recs = {k: r.json() for k, r in got.items()}
        assert recs["embeddings"]["output"]["data"][0]["embedding"] == pytest.approx(
            answers["embeddings"].json()["data"][0]["embedding"], rel=1e-6)
        assert recs["predict"]["output"]["predictions"] == answers["predict"].json()["predictions"]
        assert [(x["index"], x["relevance_score"]) for x in recs["rerank"]["output"]["results"]] == [
            (x["index"], x["relevance_score"]) for x in answers["rerank"].json()["results"]]
        assert recs["workflow"]["output"]["output"] == answers["workflow"].json()["output"]
        assert recs["workflow"]["workflow"] == "classify" and recs["workflow"]["steps"][0]["model"] == "classifier"
        assert all(r["status"] == "ok" and r["http_status"] == 200 and r["kind"] == "sync" for r in recs.values())
        assert recs["predict"]["input"] == {"name": "classifier", "instances": [{"text": "a text about sports and teams"}]}
        for resp, status, slug in ((bad, 422, "invalid-input"), (missing, 404, "not-found")):
            rec = record(cluster, resp.headers["x-request-id"], "keep").json()
            assert (rec["status"], rec["http_status"], rec["problem_type"]) == (
                "error", status, "urn:tandem:problem:" + slug), (stage, rec)
        rec = record(cluster, limited.headers["x-request-id"], "slow").json()
        assert (rec["status"], rec["http_status"], rec["problem_type"]) == (
            "error", 429, "urn:tandem:problem:quota-exceeded")
        assert record(cluster, unauth.headers["x-request-id"], "keep").status_code == 404
        # another tenant's id answers exactly like a missing one
        theirs = record(cluster, answers["predict"].headers["x-request-id"], "other")
        nobody = record(cluster, "no-such-request", "other")
        assert theirs.status_code == nobody.status_code == 404
        assert theirs.headers["content-type"] == "application/problem+json"
        assert theirs.json()["detail"].replace(answers["predict"].headers["x-request-id"], "ID") == \
            nobody.json()["detail"].replace("no-such-request", "ID")

    lake = Lake(TandemSettings(home=cluster.home).lake_root)
    assert lake.version("requests") is None  # nothing flushed yet: answered from the buffer
    check("buffered")
    restart_gateway(cluster)
    assert lake.read("requests").num_rows >= 8
    check("lake")


def _luhn_card(prefix: str) -> str:
    """`prefix` (15 digits) completed with its Luhn check digit."""
    from models.pii import luhn_ok

    return next(prefix + d for d in "0123456789" if luhn_ok(prefix + d))


def _iban(bank_and_account: str, country: str = "GB") -> str:
    """A valid IBAN: the check digits computed by mod 97."""
    moved = bank_and_account + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bank_and_account}"


def pii_of(n: int, policy: str) -> dict[str, str]:
    """Distinct PII per tenant, differing mid-value (a parquet max statistic is truncated and its last
    character incremented: values differing only at the end could be mistaken for one another)."""
    return {"email": f"{policy}.jane@example.com", "phone": f"+1 4{n}5 555 0123",
            "card": _luhn_card(f"4000{n}0123400001"), "iban": _iban(f"WEST{n}2345698000001"),
            "ip": f"10.{n}7.0.201"}


def pii_text(p: dict[str, str]) -> str:
    return f"write to {p['email']} or call {p['phone']}, card {p['card']}, iban {p['iban']}, from {p['ip']}"


def run_job(cluster, tenant: str, text: str, instance) -> str:
    """Submit a job through the gateway and run it as the sensor's run would (a real Dagster instance)."""
    import dagster as dg

    from assets import ASYNC_JOBS, async_job_results
    from assets.resources import build_resources

    r = post(cluster, "/v1/jobs", {"workflow": "classify", "inputs": [{"text": text}, {"text": "plain"}]}, tenant)
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    instance.add_dynamic_partitions(ASYNC_JOBS.name, [job_id])
    run = dg.materialize([async_job_results], partition_key=job_id, instance=instance,
                         resources=build_resources(home=str(cluster.home)))
    assert run.success
    return job_id


def test_no_pii_reaches_the_lake_or_the_logs_unless_the_tenant_keeps_it(cluster, tmp_path):
    import dagster as dg

    secrets = {policy: pii_of(n, policy) for n, policy in enumerate(POLICIES, start=1)}
    request_ids, job_ids = {}, {}
    dagster_dir = tmp_path / "dagster"
    dagster_dir.mkdir()
    with dg.instance_for_test(temp_dir=str(dagster_dir)) as instance:
        for policy, p in secrets.items():
            text = pii_text(p)
            answers = send_every_route(cluster, policy, text)
            assert {k: r.status_code for k, r in answers.items()} == dict.fromkeys(answers, 200), policy
            bad = post(cluster, "/v1/models/nope/predict", {"instances": [{"text": text}]}, policy)
            assert bad.status_code == 404
            request_ids[policy] = {k: r.headers["x-request-id"] for k, r in {**answers, "error": bad}.items()}
            job_ids[policy] = run_job(cluster, policy, text, instance)

        # Before the flush the redact tenant's record already shows placeholders, never the PII.
        rec = record(cluster, request_ids["redact"]["rerank"], "redact").json()
        assert rec["input"]["query"].count("<") == 5 and "<EMAIL>" in rec["input"]["query"], rec["input"]
        assert rec["output"]["results"][0].get("document", {}).get("text") in (None, rec["input"]["query"],
                                                                               "other words")
        restart_gateway(cluster)  # writes everything buffered

    lake = Lake(TandemSettings(home=cluster.home).lake_root)
    # Every table's string columns, by SQL.
    found_sql: dict[str, set[str]] = {policy: set() for policy in POLICIES}
    tables = [t for t in _catalog() if lake.version(t) is not None]
    assert {"requests", "predictions", "jobs", "job_results", "job_inputs"} <= set(tables)
    for table in tables:
        schema = lake.dataset(table).schema
        columns = [f.name for f in schema if str(f.type) in ("string", "large_string")]
        for col in columns:
            for policy, p in secrets.items():
                for kind, value in p.items():
                    n = lake.sql(f'SELECT count(*) AS n FROM {table} WHERE contains("{col}", ?)', [value])
                    if n.column("n")[0].as_py():
                        found_sql[policy].add(f"{table}.{col}:{kind}")
    assert any(x.startswith("requests.input:") for x in found_sql["keep"]), found_sql["keep"]  # the scan can find
    assert {x.split(":")[1] for x in found_sql["keep"]} == set(secrets["keep"])
    for policy in ("redact", "hash", "drop"):
        assert not found_sql[policy], (policy, found_sql[policy])

    # Every byte under the lake, the logs and the Dagster instance (parquet pages may be compressed:
    # the SQL scan above is the one that reads them; this one catches plain text anywhere).
    files = [f for root in (cluster.home, dagster_dir) for f in root.rglob("*") if f.is_file()]
    assert any(f.suffix == ".parquet" for f in files) and any(f.name == "gateway.log" for f in files)
    for f in files:
        data = f.read_bytes()
        # logs echo no input at all, whatever the policy
        checked = POLICIES if f.suffix == ".log" or dagster_dir in f.parents else ("redact", "hash", "drop")
        for policy in checked:
            for kind, value in secrets[policy].items():
                assert value.encode() not in data, (str(f), policy, kind)

    # The records say how each was stored, and the hash tenant's equal inputs join.
    rows = lake.sql("SELECT tenant, kind, pii_policy, input, input_hash, status FROM requests "
                    "WHERE tenant LIKE 't-%' AND tenant <> 't-other' AND tenant <> 't-slow'").to_pylist()
    by = {(r["tenant"], r["kind"]) for r in rows}
    assert {(f"t-{p}", k) for p in POLICIES for k in ("sync", "job_item")} <= by
    assert all(r["pii_policy"] == r["tenant"][2:] for r in rows)
    assert all(r["input"] is None for r in rows if r["pii_policy"] == "drop")
    redacted = [r["input"] for r in rows if r["pii_policy"] == "redact" and r["input"] and "write to" in r["input"]]
    assert redacted and all(all(f"<{k}>" in x for k in ("EMAIL", "PHONE", "CARD", "IBAN", "IP")) for x in redacted)
    hashed = lake.sql("SELECT input FROM requests WHERE tenant = 't-hash' AND kind = 'job_item'").column(
        "input").to_pylist()
    assert any("hmac:" in x for x in hashed)
    # a job item is read back by `<job_id>:<item>`, by its own tenant only
    item = record(cluster, f"{job_ids['redact']}:0", "redact").json()
    assert (item["kind"], item["job_id"], item["item"], item["status"]) == ("job_item", job_ids["redact"], 0, "ok")
    assert "<CARD>" in item["input"]["text"] and item["output"]["label"]
    assert record(cluster, f"{job_ids['redact']}:0", "keep").status_code == 404
    # the job's sealed inputs are gone once it succeeded
    assert lake.sql("SELECT count(*) AS n FROM job_inputs").column("n")[0].as_py() == 0


def _catalog():
    from lakehouse.catalog import CATALOG

    return list(CATALOG)
