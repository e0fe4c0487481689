"""The lakehouse against real Delta tables in a temporary directory."""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from lakehouse import (
    CATALOG,
    Lake,
    QueryError,
    SchemaMismatchError,
    TableNotFoundError,
    compact,
    delete_older_than,
    get_table,
    sql_literal,
    vacuum,
)

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 4)
T0 = datetime(2026, 1, 4, 12, tzinfo=UTC)


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(str(tmp_path / "lake"))


def predictions(n: int, day: date = DAY, tenant: str = "acme", prefix: str = "r") -> list[dict]:
    ts = datetime.combine(day, datetime.min.time(), tzinfo=UTC) + timedelta(hours=1)
    return [
        {
            "request_id": f"{prefix}{i}",
            "tenant": tenant,
            "model": "m",
            "status": "ok",
            "ts": ts,
            "day": day,
            "latency_ms": float(i),
        }
        for i in range(n)
    ]


def job_inputs(job_id: str, n: int) -> list[dict]:
    return [{"job_id": job_id, "idx": i, "input": f'{{"text": "{job_id}-{i}"}}'} for i in range(n)]


def test_append_then_read_round_trips_with_the_catalog_schema(lake: Lake):
    assert lake.version("predictions") is None
    assert lake.read("predictions").schema == get_table("predictions").schema
    assert lake.read("predictions").num_rows == 0

    v1 = lake.append("predictions", predictions(3))
    v2 = lake.append("predictions", predictions(2, prefix="s"))
    assert v2 == v1 + 1 == lake.version("predictions")
    table = lake.read("predictions")
    assert table.schema == get_table("predictions").schema
    assert sorted(table.column("request_id").to_pylist()) == ["r0", "r1", "r2", "s0", "s1"]
    assert table.column("ts").to_pylist()[0] == datetime(2026, 1, 4, 1, tzinfo=UTC)
    only = lake.read(
        "predictions", filter=pc.field("request_id") == "s1", columns=["request_id", "latency_ms"]
    )
    assert only.to_pylist() == [{"request_id": "s1", "latency_ms": 1.0}]
    assert lake.history("predictions", limit=1)[0]["version"] == v2
    assert lake.versions()["predictions"] == v2 and lake.versions()["jobs"] is None


def test_table_is_created_with_catalog_partitioning(lake: Lake):
    lake.ensure("predictions")
    lake.ensure("predictions")
    assert lake.version("predictions") == 0
    lake.append("predictions", predictions(2) + predictions(1, day=date(2026, 1, 5)))
    root = Path(lake.uri("predictions"))
    assert {p.name for p in root.glob("day=*")} == {"day=2026-01-04", "day=2026-01-05"}


def test_unknown_table_is_refused_with_the_known_names(lake: Lake):
    with pytest.raises(TableNotFoundError, match="known tables: .*predictions"):
        lake.append("prediction", predictions(1))


@pytest.mark.parametrize(
    ("mutate", "column"),
    [
        (lambda t: t.drop_columns(["tenant"]), "tenant"),
        (lambda t: t.append_column("tennant", pa.array(["x"] * t.num_rows)), "tennant"),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("latency_ms"), "latency_ms", pa.array(["slow"] * t.num_rows)
            ),
            "latency_ms",
        ),
        (
            lambda t: t.set_column(
                t.schema.get_field_index("status"), "status", pa.array([None] * t.num_rows, pa.string())
            ),
            "status",
        ),
    ],
    ids=["missing", "extra", "wrong-type", "null-in-non-null"],
)
def test_schema_errors_name_the_column_and_write_nothing(lake: Lake, mutate, column):
    good = pa.Table.from_pylist(predictions(2), schema=get_table("predictions").schema)
    with pytest.raises(SchemaMismatchError, match=f"'predictions'.*'{column}'"):
        lake.append("predictions", mutate(good))
    assert lake.read("predictions").num_rows == 0


def test_overwriting_a_partition_twice_is_idempotent_and_leaves_other_days_alone(lake: Lake):
    days = [date(2026, 1, d) for d in (3, 4, 5)]
    for day in days:
        lake.append("predictions", predictions(4, day=day))
    before = lake.read("predictions", filter=pc.field("day") != DAY)

    for _ in range(2):
        lake.overwrite_partition("predictions", predictions(7, day=DAY, prefix="new"), {"day": DAY})
        counts = lake.sql("SELECT day, count(*) AS n FROM predictions GROUP BY day ORDER BY day").to_pylist()
        assert counts == [{"day": days[0], "n": 4}, {"day": DAY, "n": 7}, {"day": days[2], "n": 4}]
    after = lake.read("predictions", filter=pc.field("day") != DAY)
    assert after.sort_by("request_id").equals(before.sort_by("request_id"))

    with pytest.raises(SchemaMismatchError, match="column 'day': 1 of 2 row"):
        lake.overwrite_partition("predictions", predictions(1) + predictions(1, day=days[0]), {"day": DAY})
    lake.overwrite_partition("predictions", [], {"day": DAY})
    assert lake.read("predictions", filter=pc.field("day") == DAY).num_rows == 0
    assert lake.read("predictions").num_rows == 8


def test_replace_where_replaces_one_job_and_refuses_rows_outside_the_predicate(lake: Lake):
    lake.append("job_inputs", job_inputs("a", 3) + job_inputs("o'b", 2))
    predicate = "job_id = " + sql_literal("o'b")
    for _ in range(2):
        lake.replace_where("job_inputs", job_inputs("o'b", 5), predicate)
    counts = lake.sql("SELECT job_id, count(*) AS n FROM job_inputs GROUP BY ALL ORDER BY ALL").to_pylist()
    assert counts == [{"job_id": "a", "n": 3}, {"job_id": "o'b", "n": 5}]
    with pytest.raises(SchemaMismatchError, match="do not satisfy the predicate"):
        lake.replace_where("job_inputs", job_inputs("a", 1), "job_id = 'zzz'")


def test_merge_upserts_and_insert_if_absent_counts_only_new_rows(lake: Lake):
    def job(job_id: str, status: str) -> dict:
        return {
            "job_id": job_id,
            "tenant": "acme",
            "workflow": "w",
            "status": status,
            "n_inputs": 1,
            "n_done": 0,
            "attempts": 1,
            "submitted_at": T0,
            "updated_at": T0,
        }

    lake.merge("jobs", [job("a", "queued"), job("b", "queued")])
    lake.merge("jobs", [job("b", "running"), job("c", "queued"), job("c", "succeeded")])
    statuses = lake.sql("SELECT job_id, status FROM jobs ORDER BY job_id").to_pylist()
    assert [(r["job_id"], r["status"]) for r in statuses] == [
        ("a", "queued"),
        ("b", "running"),
        ("c", "succeeded"),
    ]

    results = [{"job_id": "a", "idx": i, "status": "ok", "finished_at": T0} for i in range(3)]
    assert lake.insert_if_absent("job_results", results) == 3
    retry = results[1:] + [{"job_id": "a", "idx": 3, "status": "ok", "finished_at": T0}] * 2
    assert lake.insert_if_absent("job_results", retry) == 1
    assert lake.insert_if_absent("job_results", retry) == 0
    assert lake.read("job_results").num_rows == 4


def test_delete_returns_rows_deleted_and_bad_predicates_raise_query_error(lake: Lake):
    lake.append("predictions", predictions(3) + predictions(2, tenant="globex"))
    assert lake.delete("predictions", f"tenant = {sql_literal('globex')}") == 2
    assert lake.delete("jobs", "job_id = 'x'") == 0
    with pytest.raises(QueryError, match="no_such_column"):
        lake.delete("predictions", "no_such_column = 1")


def test_eight_threads_appending_lose_no_rows_and_get_distinct_versions(lake: Lake):
    writers, commits, rows = 8, 4, 10
    start = threading.Barrier(writers)

    def write(w: int) -> list[int]:
        start.wait()  # all race to create the table too
        return [lake.append("job_inputs", job_inputs(f"w{w}-c{c}", rows)) for c in range(commits)]

    with ThreadPoolExecutor(writers) as pool:
        versions = [v for result in pool.map(write, range(writers)) for v in result]

    table = lake.read("job_inputs")
    assert table.num_rows == writers * commits * rows
    assert (
        len(set(zip(table.column("job_id").to_pylist(), table.column("idx").to_pylist()))) == table.num_rows
    )
    assert len(set(versions)) == writers * commits


def _append_in_process(root: str, worker: int, commits: int, rows: int) -> None:
    lake = Lake(root)
    for c in range(commits):
        lake.append("job_inputs", job_inputs(f"p{worker}-c{c}", rows))


def test_four_spawned_processes_appending_lose_no_rows(lake: Lake):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_append_in_process, args=(lake.root, w, 3, 10)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0] * 4
    table = lake.read("job_inputs")
    assert table.num_rows == 4 * 3 * 10
    assert len(set(zip(table.column("job_id").to_pylist(), table.column("idx").to_pylist()))) == 120


def test_duckdb_partition_filter_reads_only_that_partitions_files(lake: Lake):
    days = [date(2026, 1, d) for d in range(1, 6)]
    for i, day in enumerate(days):
        lake.append("predictions", predictions(10 + i, day=day))
    # Make every other day's files unreadable: the filtered query can only succeed if DuckDB pushes the
    # filter into the Delta dataset and those files are never opened.
    corrupted = [
        p for p in Path(lake.uri("predictions")).glob("day=*/*.parquet") if "2026-01-03" not in str(p)
    ]
    assert len(corrupted) == 4
    for path in corrupted:
        path.write_bytes(b"not parquet")

    result = lake.sql(
        "SELECT count(*) AS n, min(tenant) AS t FROM predictions WHERE day = ? AND tenant = ?",
        [date(2026, 1, 3), "acme"],
    )
    assert result.to_pylist() == [{"n": 12, "t": "acme"}]
    named = lake.sql("SELECT count(*) AS n FROM predictions WHERE day = $day", {"day": date(2026, 1, 3)})
    assert named.column("n").to_pylist() == [12]
    with pytest.raises(QueryError, match="not parquet|Parquet|magic"):
        lake.sql("SELECT count(*) FROM predictions")


def test_sql_errors_are_query_errors_that_list_existing_tables(lake: Lake):
    lake.append("job_inputs", job_inputs("a", 1))
    with pytest.raises(
        QueryError, match="(?s)name jobs does not exist.*Tables in the lake at .*: job_inputs;"
    ):
        lake.sql("SELECT * FROM jobs")
    with pytest.raises(QueryError, match="(?i)syntax"):
        lake.sql("SELEKT 1")
    con = lake.connect()
    assert con.execute("SELECT count(*) FROM job_inputs").fetchone() == (1,)
    assert {
        r[0] for r in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()
    } <= set(CATALOG)


def test_compact_then_vacuum_shrinks_files_and_keeps_rows(lake: Lake):
    for i in range(5):
        lake.append("predictions", predictions(5, prefix=f"b{i}-"))
    files_before = list(Path(lake.uri("predictions")).rglob("*.parquet"))
    assert len(lake.dataset("predictions").files) == 5

    metrics = compact(lake, "predictions")
    assert metrics["numFilesRemoved"] == 5 and metrics["numFilesAdded"] == 1
    assert len(lake.dataset("predictions").files) == 1
    assert all(p.exists() for p in files_before)  # still referenced by older versions

    removed = vacuum(lake, "predictions", retention_hours=0, enforce_retention=False)
    assert len(removed) == 5
    assert not any(p.exists() for p in files_before)
    assert lake.read("predictions").num_rows == 25


def test_delete_older_than_with_a_tenant_filter_spares_other_tenants_and_new_rows(lake: Lake):
    old, new = date(2026, 1, 1), date(2026, 1, 10)
    for day in (old, new):
        lake.append(
            "predictions", predictions(3, day=day, tenant="acme") + predictions(2, day=day, tenant="glob")
        )
    cutoff = datetime(2026, 1, 5, tzinfo=UTC)

    deleted = delete_older_than(lake, "predictions", "ts", cutoff, where=f"tenant = {sql_literal('acme')}")
    assert deleted == 3
    left = lake.sql(
        "SELECT tenant, day, count(*) AS n FROM predictions GROUP BY ALL ORDER BY ALL"
    ).to_pylist()
    assert left == [
        {"tenant": "acme", "day": new, "n": 3},
        {"tenant": "glob", "day": old, "n": 2},
        {"tenant": "glob", "day": new, "n": 2},
    ]
    assert delete_older_than(lake, "predictions", "day", cutoff) == 2


def test_an_appender_keeps_its_handle_and_loses_nothing_beside_other_writers(tmp_path):
    import threading
    from datetime import UTC, date, datetime

    from lakehouse import Lake

    lake = Lake(str(tmp_path / "lake"))

    def rows(prefix: str, n: int) -> list[dict]:
        now = datetime.now(UTC)
        return [{"request_id": f"{prefix}{i}", "tenant": "t", "model": "m", "status": "ok", "ts": now,
                 "day": date(2026, 1, 1)} for i in range(n)]

    appender = lake.appender("predictions")
    versions = [appender.append(rows("a", 5))]

    def other() -> None:
        for k in range(5):
            Lake(lake.root).append("predictions", rows(f"o{k}-", 3))

    t = threading.Thread(target=other)
    t.start()
    for k in range(5):
        versions.append(appender.append(rows(f"b{k}-", 4)))
    t.join()
    assert versions == sorted(versions) and len(set(versions)) == len(versions)
    assert lake.read("predictions").num_rows == 5 + 5 * 4 + 5 * 3


def test_sql_reads_the_live_delta_files_natively_and_answers_like_the_pyarrow_dataset(lake: Lake):
    import duckdb

    for d in range(1, 4):
        lake.append("predictions", predictions(20, day=date(2026, 1, d), tenant=f"t{d % 2}"))
    lake.append("predictions", predictions(5, day=date(2026, 1, 2), tenant="t9", prefix="x"))
    lake.delete("predictions", "tenant = 't9'")  # rewrites day 2: its old files stay on disk, removed in the log
    lake.overwrite_partition("predictions", predictions(7, day=date(2026, 1, 3), tenant="t3"),
                             {"day": date(2026, 1, 3)})
    table = lake._open("predictions")
    snapshot = lake._snapshot("predictions", table)
    assert snapshot is not None and snapshot.partition_types == {"day": "DATE"}
    on_disk = list(Path(lake.uri("predictions")).glob("day=*/*.parquet"))
    assert len(on_disk) > len(snapshot.files)  # so reading every file on disk would count removed rows

    query = ("SELECT tenant, day, count(*) AS n, sum(latency_ms) AS s, min(ts) AS first FROM predictions "
             "GROUP BY ALL ORDER BY tenant, day")
    native = lake.sql(query)
    with duckdb.connect() as con:
        con.execute("SET TimeZone = 'UTC'")
        con.register("predictions", table.to_pyarrow_dataset())
        via_dataset = con.sql(query).to_arrow_table()
    assert native.equals(via_dataset)
    assert native.to_pylist()[-1] == {"tenant": "t3", "day": date(2026, 1, 3), "n": 7, "s": 21.0,
                                      "first": datetime(2026, 1, 3, 1, tzinfo=UTC)}
    assert lake.sql("SELECT count(*) AS n FROM predictions WHERE tenant = 't9'").column("n")[0].as_py() == 0
    got = lake.sql("SELECT * FROM predictions LIMIT 0").schema
    assert [(f.name, f.type) for f in got] == [(f.name, f.type) for f in get_table("predictions").schema]


def test_sql_falls_back_to_the_pyarrow_dataset_where_files_alone_are_not_the_table(lake: Lake):
    lake.append("predictions", predictions(3))
    remote = Lake("s3://bucket/lake")
    assert remote._snapshot("predictions", lake._open("predictions")) is None


def test_an_appender_that_compacts_keeps_the_live_file_count_bounded_and_every_row(lake: Lake):
    appender = lake.appender("predictions", compact_every=5)
    for k in range(12):
        appender.append(predictions(3, prefix=f"a{k}-") + predictions(2, day=DAY + timedelta(days=1), prefix=f"b{k}-"))
    table = lake._open("predictions")
    # 24 one-append files without compaction; with it: at most the files of the last 2 appends + 1 per day
    assert len(table.file_uris()) <= 2 * 2 + 2 * 2
    assert lake.sql("SELECT count(*) AS n, count(DISTINCT request_id) AS d FROM predictions").to_pylist() == [
        {"n": 60, "d": 60}]


def test_compaction_leaves_a_file_alone_once_it_holds_settled_rows_even_when_it_compresses_small(lake: Lake):
    # Prediction rows that differ only by request id compress to ~3 bytes a row once merged: a day's
    # compacted file stays far below the 16-MB target, and sizes alone have every compaction rewrite it.
    def rewritten_per_compaction(settled_rows: int) -> list[int]:
        appender = lake.appender("predictions", compact_every=3, settled_rows=settled_rows, min_target_size=1)
        rewritten, live = [], {}
        for k in range(10):
            for j in range(3):
                appender.append(predictions(4000, prefix=f"s{settled_rows}-{k}-{j}-"))
            files = pa.table(appender._table.get_add_actions(flatten=True)).select(["path", "num_records"]).to_pylist()
            now = {f["path"]: f["num_records"] for f in files}
            rewritten.append(sum(n for path, n in live.items() if path not in now))  # earlier rows rewritten
            live = now
        return rewritten

    bounded = rewritten_per_compaction(20_000)
    assert max(bounded) <= 2.5 * 20_000, bounded  # measured: at most 36,000
    assert lake.sql("SELECT count(DISTINCT request_id) AS d FROM predictions").to_pylist() == [{"d": 120_000}]
    by_size_alone = rewritten_per_compaction(10**9)  # the target stays 16 MB: the whole day, every time
    assert by_size_alone[-1] >= 200_000, by_size_alone
    assert lake.sql("SELECT count(*) AS n FROM predictions").to_pylist() == [{"n": 240_000}]
