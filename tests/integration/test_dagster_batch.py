"""Daily documents and batch scoring on a real Dagster instance over real Delta tables."""

from __future__ import annotations

import json
from datetime import date

import dagster as dg
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from assets import batch_predictions, documents
from tests.integration.dagster_support import make_home

pytestmark = pytest.mark.integration

DAY = date(2026, 1, 3)


@pytest.fixture
def home(tmp_path):
    return make_home(tmp_path)


def write_inbox(home, day: date, n_good: int) -> None:
    inbox = home.inbox(day)
    lines = [{"doc_id": f"{day}-{i}", "text": f"the striker scored goal number {i} on {day}", "label": "sports"}
             for i in range(n_good)]
    (inbox / "a.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")


def meta(result, asset) -> dict:
    mat = result.asset_materializations_for_node(asset.op.name)[0]
    return {k: v.value for k, v in mat.metadata.items()}


def test_bad_rows_are_counted_by_reason_and_kept_out_of_the_table(home):
    inbox = home.inbox(DAY)
    (inbox / "a.csv").write_text(
        "doc_id,text,label,lang\n"
        "d1,The chip maker released a faster processor,technology,en\n"
        "d2,,finance,en\n"  # empty text
        "d3,   ,finance,en\n"  # blank text
        "d1,A duplicate id,sports,en\n"
    )
    (inbox / "b.jsonl").write_text(
        '{"doc_id": "d4", "text": "The central bank raised interest rates"}\n'
        "{not json\n"
        '{"doc_id": "d5", "body": "no text field"}\n'
    )
    pq.write_table(pa.table({"doc_id": ["d6", "d7"], "text": ["Investors sold the bond issue", None]}),
                   inbox / "c.parquet")

    with dg.instance_for_test() as instance:
        result = dg.materialize([documents], partition_key=DAY.isoformat(), resources=home.resources,
                                instance=instance)

    m = meta(result, documents)
    assert m["rows"] == 3
    assert m["bad_rows"] == 6
    assert m["bad_rows_by_reason"] == {"empty_text": 2, "duplicate_id": 1, "unparseable": 1, "missing_text": 2}
    assert "a.csv:3: empty_text" in m["bad_row_examples"]
    table = home.lake.read("documents")
    assert sorted(table.column("doc_id").to_pylist()) == ["d1", "d4", "d6"]
    d1 = table.filter(pc.field("doc_id") == "d1").to_pylist()[0]
    assert d1["label"] == "technology" and json.loads(d1["attributes"]) == {"lang": "en"}


def test_a_day_without_files_fails_and_says_where_it_looked(home):
    with dg.instance_for_test() as instance:
        result = dg.materialize([documents], partition_key=DAY.isoformat(), resources=home.resources,
                                instance=instance, raise_on_error=False)
    assert not result.success
    failure = result.get_step_failure_events()[0].event_specific_data.error.message
    assert f"inbox/{DAY.isoformat()}" in failure


def test_a_partition_scored_twice_has_the_same_rows(home):
    write_inbox(home, DAY, 40)
    config = {"ops": {"batch_predictions": {"config": {"workflow": "enrich", "batch_size": 16}}}}
    with dg.instance_for_test() as instance:
        first = dg.materialize([documents, batch_predictions], partition_key=DAY.isoformat(),
                               resources=home.resources, instance=instance, run_config=config)
        before = home.lake.read("batch_predictions")
        again = dg.materialize([batch_predictions], partition_key=DAY.isoformat(), resources=home.resources,
                               instance=instance, run_config=config)

    after = home.lake.read("batch_predictions")
    assert before.num_rows == after.num_rows == 40
    assert sorted(after.column("doc_id").to_pylist()) == sorted(before.column("doc_id").to_pylist())
    assert set(after.column("run_id").to_pylist()) == {again.run_id} != {first.run_id}
    row = after.to_pylist()[0]
    assert row["status"] == "ok" and row["workflow"] == "enrich"
    assert json.loads(row["model_versions"]) == {"embed": "embedder@1", "classify": "classifier@1"}
    assert set(json.loads(row["output"])) == {"embedding", "label", "scores"}
    m = meta(again, batch_predictions)
    assert m["rows"] == 40 and m["errors"] == 0 and m["rows_per_s"] > 0
    assert m["versions"] == {"embed": "embedder@1", "classify": "classifier@1"}


def test_a_three_day_backfill_writes_each_day_once_and_scores_with_the_current_stable(home):
    days = [date(2026, 1, d) for d in (5, 6, 7)]
    for i, day in enumerate(days):
        write_inbox(home, day, 10 + i)
    with dg.instance_for_test() as instance:
        for day in days:
            result = dg.materialize([documents, batch_predictions], partition_key=day.isoformat(),
                                    resources=home.resources, instance=instance)
            assert result.success
        # Re-running a day of the backfill changes nothing but the run id.
        dg.materialize([batch_predictions], partition_key=days[1].isoformat(), resources=home.resources,
                       instance=instance)
        materialized = instance.get_materialized_partitions(batch_predictions.key)

    assert materialized == {d.isoformat() for d in days}
    table = home.lake.read("batch_predictions")
    grouped = table.group_by("day").aggregate([("doc_id", "count")])  # one grouping: its row order is arbitrary
    counts = dict(zip(grouped.column("day").to_pylist(), grouped.column("doc_id_count").to_pylist()))
    assert counts == {days[0]: 10, days[1]: 11, days[2]: 12}
