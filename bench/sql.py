"""The sql case: a per-tenant, per-day aggregate over the `predictions` Delta table ÷ a plain Parquet copy.

The data set (10M rows by default, 30 daily partitions, 50 tenants, shaped like the gateway's
log) is generated once with numpy/pyarrow and kept in the work folder. The Parquet copy is the
Delta table's own data files copied out (same bytes, same layout), so the ratio measures the
Delta read path (`Lake.sql`: open the table log, register its pyarrow dataset with DuckDB) against
DuckDB's native `read_parquet`, not two different file layouts.
"""

from __future__ import annotations

import shutil
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa

from bench._lab import Lab, alternate
from bench._report import CaseResult, median, new_result, paired_ratio
from lakehouse import Lake

DAYS = 30
TENANTS = 50
FIRST_DAY = date(2026, 1, 1)

AGGREGATE = """
SELECT tenant, day, count(*) AS n, avg(latency_ms) AS mean_ms, quantile_cont(latency_ms, 0.95) AS p95_ms,
       count(*) FILTER (WHERE status <> 'ok') AS errors
FROM predictions GROUP BY tenant, day ORDER BY tenant, day
"""
FILTERED = """
SELECT day, count(*) AS n, avg(latency_ms) AS mean_ms
FROM predictions WHERE tenant = ? AND day BETWEEN ? AND ? GROUP BY day ORDER BY day
"""


def sql(lab: Lab) -> CaseResult:
    res = new_result("sql")
    rows = lab.config.sql_rows
    root = lab.config.work_dir / f"sql-{rows}"
    built = _ensure_dataset(root, rows, fresh=lab.config.fresh, say=lab.say)
    lake = Lake(str(root / "lake"))
    glob = str(root / "parquet" / "**" / "*.parquet")
    params = ["tenant-07", FIRST_DAY + timedelta(days=7), FIRST_DAY + timedelta(days=13)]

    others: list[float] = []

    def timed(fn) -> float:
        _, wall, other = lab.in_process(fn)
        others.append(other)
        return wall

    def on_delta(query: str, args: list | None = None):
        return lambda: timed(lambda: lake.sql(query, args))

    def on_parquet(query: str, args: list | None = None):
        source = f"read_parquet('{glob}', hive_partitioning = true)"

        def run() -> pa.Table:
            with duckdb.connect() as con:
                con.execute("SET TimeZone = 'UTC'")
                return con.sql(query.replace("FROM predictions", f"FROM {source}"), params=args).to_arrow_table()

        return lambda: timed(run)

    def on_delta_files(query: str, args: list | None = None):
        """The alternative read path: the table's current files (from the Delta log) read by DuckDB natively."""

        def run() -> pa.Table:
            from deltalake import DeltaTable

            files = DeltaTable(lake.uri("predictions")).file_uris()
            with duckdb.connect() as con:
                con.execute("SET TimeZone = 'UTC'")
                source = "read_parquet($files, hive_partitioning = true)"
                sql_ = query.replace("FROM predictions", f"FROM {source}")
                named = {"files": files, **({f"p{i}": v for i, v in enumerate(args)} if args else {})}
                if args:
                    sql_ = sql_.replace("tenant = ?", "tenant = $p0").replace("BETWEEN ? AND ?", "BETWEEN $p1 AND $p2")
                return con.execute(sql_, named).to_arrow_table()

        return lambda: timed(run)

    reps = max(lab.config.reps, 3 if lab.config.quick else 5)
    for fn in (on_delta(AGGREGATE), on_parquet(AGGREGATE)):  # warm the page cache for both
        fn()
    d, p, df = alternate(reps, on_delta(AGGREGATE), on_parquet(AGGREGATE), on_delta_files(AGGREGATE))
    fd, fp, fdf = alternate(reps, on_delta(FILTERED, params), on_parquet(FILTERED, params),
                            on_delta_files(FILTERED, params))
    _same_answer(lake, glob, res)
    res.ratio = paired_ratio(d, p)
    res.raw = {"rows": rows, "days": DAYS, "tenants": TENANTS, "dataset_built_s": built,
               "delta_s": d, "parquet_s": p, "filtered_delta_s": fd, "filtered_parquet_s": fp,
               "filtered_ratio": paired_ratio(fd, fp), "delta_files_via_read_parquet_s": df,
               "filtered_delta_files_via_read_parquet_s": fdf, "ratio_if_delta_files_via_read_parquet": paired_ratio(df, p),
               "filtered_ratio_if_delta_files_via_read_parquet": paired_ratio(fdf, fp), "query": AGGREGATE.strip(), "filtered_query": FILTERED.strip(),
               "files": len(list((root / "parquet").rglob("*.parquet"))), "other_cpu_cores_max": max(others)}
    res.summary = (f"{rows / 1e6:g}M rows: {median(d) * 1000:.0f} vs {median(p) * 1000:.0f} ms; one tenant, "
                   f"one week: {median(fd) * 1000:.0f} vs {median(fp) * 1000:.0f} ms ({res.raw['filtered_ratio']:.2f})")
    return res


def _same_answer(lake: Lake, glob: str, res: CaseResult) -> None:
    """Both sides must count the same rows, or the comparison means nothing."""
    a = lake.sql("SELECT count(*) AS n FROM predictions").column("n")[0].as_py()
    with duckdb.connect() as con:
        b = con.execute(f"SELECT count(*) FROM read_parquet('{glob}', hive_partitioning = true)").fetchone()[0]
    if a != b:
        res.notes.append(f"row counts differ: Delta {a}, Parquet {b}")


def _ensure_dataset(root: Path, rows: int, *, fresh: bool, say) -> float | None:
    """Build the Delta table and its Parquet copy under `root` unless a complete one is there."""
    marker = root / ".complete"
    if marker.exists() and not fresh:
        return None
    if root.exists():
        shutil.rmtree(root)
    say(f"  generating {rows:,} prediction rows in Delta and a Parquet copy (once; kept in {root})")
    started = time.perf_counter()
    lake = Lake(str(root / "lake"))
    rng = np.random.default_rng(0)
    per_day = rows // DAYS
    for d in range(DAYS):
        n = per_day + (rows - per_day * DAYS if d == DAYS - 1 else 0)
        lake.append("predictions", _day_rows(rng, FIRST_DAY + timedelta(days=d), n, d * per_day))
    from deltalake import DeltaTable

    table_root = Path(lake.uri("predictions"))
    for uri in DeltaTable(str(table_root)).file_uris():
        src = Path(uri.removeprefix("file://"))
        dest = root / "parquet" / src.relative_to(table_root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dest)
    marker.write_text("ok\n")
    return round(time.perf_counter() - started, 1)


def _day_rows(rng: np.random.Generator, day: date, n: int, offset: int) -> pa.Table:
    """`n` rows of one day's prediction log: skewed tenants, three models, lognormal latencies, 2% errors."""
    tenants = np.array([f"tenant-{i:02d}" for i in range(TENANTS)])
    weights = 1 / np.arange(1, TENANTS + 1)
    models = np.array(["embedder", "classifier", "reranker"])
    steps = np.array(["embed", "classify", "rerank"])
    workflows = np.array(["enrich", "classify", "search"])
    t_idx = rng.choice(TENANTS, size=n, p=weights / weights.sum())
    m_idx = rng.integers(0, 3, size=n)
    failed = rng.random(n) < 0.02
    start = datetime.combine(day, datetime.min.time(), tzinfo=UTC)
    micros = np.sort(rng.integers(0, 86_400_000_000, size=n))
    ids = np.char.add("r", np.arange(offset, offset + n).astype("U12"))
    summaries = np.array(['{"input_chars": 112, "input_words": 18, "label": "sports", "score": 0.91}',
                          '{"dim": 384, "head": [0.01, -0.04, 0.07, 0.02], "mean": 0.0012, "std": 0.051}',
                          '{"n": 5, "top_index": 2, "top_score": 0.73}'])
    return pa.table({
        "request_id": pa.array(ids), "trace_id": pa.nulls(n, pa.string()), "tenant": pa.array(tenants[t_idx]),
        "workflow": pa.array(workflows[m_idx]), "workflow_version": pa.array(np.ones(n, np.int32)),
        "step": pa.array(steps[m_idx]), "model": pa.array(models[m_idx]),
        "version": pa.array(np.where(rng.random(n) < 0.1, "2", "1")),
        "arm": pa.array(np.where(rng.random(n) < 0.1, "canary", "stable")),
        "input_hash": pa.nulls(n, pa.string()), "output_summary": pa.array(summaries[m_idx]),
        "latency_ms": pa.array(rng.lognormal(3.0, 0.5, size=n)),
        "status": pa.array(np.where(failed, "error", "ok")),
        "error": pa.array(np.where(failed, "model timed out", None).tolist(), pa.string()),
        "cached": pa.array(rng.random(n) < 0.05),
        "ts": pa.array(start.timestamp() * 1e6 + micros, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        "day": pa.array([day] * n, pa.date32()),
    })
