"""`compaction_target`: the size delta-rs compacts a partition to, chosen so that a file holding
`settled_rows` rows is left alone however well its rows compress, and no fresh write is left out."""

from __future__ import annotations

from lakehouse.lake import compaction_target

MB = 1 << 20
KW = {"settled_rows": 500_000, "append_rows": 2_000, "target_size": 16 * MB, "min_target_size": 1 * MB}


def test_until_a_merged_file_exists_the_target_is_the_full_size():
    assert compaction_target([(2_000, 78_000)] * 60, **KW) == 16 * MB
    assert compaction_target([], **KW) == 16 * MB
    assert compaction_target([(None, 5 * MB)], **KW) == 16 * MB  # no row counts: sizes alone


def test_well_compressing_rows_settle_at_settled_rows_not_at_16_mb():
    # a record of cache hits: a merged file holds 600,000 rows in 1.4 MB, each new write 2,000 in 78 KB
    files = [(600_000, 1_400_000), *[(2_000, 78_000)] * 60]
    target = compaction_target(files, **KW)
    assert target <= 1_400_000 < 16 * MB  # the settled file is not rewritten again
    assert target >= 2 * 78_000  # the new writes still merge


def test_a_fresh_write_is_never_too_large_to_merge():
    # incompressible writes (distinct embeddings, 3 MB each) beside a dense settled file
    files = [(600_000, 1_400_000), *[(2_000, 3 * MB)] * 5]
    assert compaction_target(files, **KW) >= 6 * MB


def test_rows_that_do_not_compress_keep_the_full_target():
    # 1.5 KB a row: 500,000 rows would take far more than 16 MB
    assert compaction_target([(10_000, 15 * MB), (2_000, 3 * MB)], **KW) == 16 * MB


def test_the_target_never_drops_below_the_floor():
    assert compaction_target([(600_000, 60_000), (2_000, 10_000)], **KW) == 1 * MB
