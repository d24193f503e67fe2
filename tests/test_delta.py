"""The Delta layer on real tables: Spark writes the files, delta-rs commits the log."""

from __future__ import annotations

import datetime as dt
import glob
import json
import os

import pytest
from pyspark.testing import assertDataFrameEqual

from pipelines.storage import delta, deltalog
from schemas.tables import Column, TableSpec

EVENTS = TableSpec(
    name="events",
    columns=(
        Column("id", "long", False),
        Column("name", "string"),
        Column("ts", "timestamp"),
        Column("vec", "array<float>"),
        Column("dt", "date", False),
    ),
    partition_by=("dt",),
    key=("id",),
)
D1, D2 = dt.date(2024, 5, 1), dt.date(2024, 5, 2)
TS = dt.datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=dt.UTC)


def rows(spark, data):
    return spark.createDataFrame(
        [(i, n, TS, [float(i)], d) for i, n, d in data], EVENTS.spark_schema())


def current(spark, root, **kw):
    return delta.read(spark, root, EVENTS, **kw)


def test_create_append_and_read_back(spark, lakehouse):
    res = delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    assert (res.version, res.rows, res.files_added) == (1, 2, 2)
    assertDataFrameEqual(current(spark, lakehouse), rows(spark, [(1, "a", D1), (2, "b", D2)]))
    log = delta.open_table(lakehouse, EVENTS)
    assert [f.name for f in log.schema().fields] == EVENTS.column_names
    assert log.metadata().partition_columns == ["dt"]


def test_stats_are_exact_for_the_columns_they_cover(spark, lakehouse):
    delta.write(spark, rows(spark, [(3, "x", D1), (7, None, D1)]).coalesce(1), lakehouse, EVENTS)
    with open(os.path.join(lakehouse, "events/_delta_log/00000000000000000001.json")) as f:
        (add,) = [json.loads(line)["add"] for line in f if '"add"' in line]
    stats = json.loads(add["stats"])
    assert stats["numRecords"] == 2
    assert stats["minValues"]["id"] == 3 and stats["maxValues"]["id"] == 7
    assert stats["nullCount"]["name"] == 1
    # micro-second timestamps widen to whole milliseconds on both sides
    assert stats["minValues"]["ts"] == "2024-05-01T12:00:00.123Z"
    assert stats["maxValues"]["ts"] == "2024-05-01T12:00:00.124Z"
    assert stats["minValues"]["name"] == stats["maxValues"]["name"] == "x"
    assert "vec" not in stats["nullCount"]  # nested: no stats rather than wrong ones
    assert add["partitionValues"] == {"dt": "2024-05-01"}


def test_replace_partition_is_one_commit_and_never_resurrects_files(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    res = delta.write(spark, rows(spark, [(10, "z", D1)]), lakehouse, EVENTS,
                      mode="overwrite", partition={"dt": D1})
    assert res.version == 2
    assertDataFrameEqual(current(spark, lakehouse), rows(spark, [(10, "z", D1), (2, "b", D2)]))
    # The replaced file is still on disk (until vacuum); a folder listing would read it.
    assert len(glob.glob(os.path.join(lakehouse, "events/dt=2024-05-01/*.parquet"))) == 2
    # time travel reads the old snapshot
    assertDataFrameEqual(current(spark, lakehouse, version=1),
                         rows(spark, [(1, "a", D1), (2, "b", D2)]))
    changes = deltalog._log_changes(os.path.join(lakehouse, "events"), 1, 2)
    assert sum("add" in a for a in changes) == 1 and sum("remove" in a for a in changes) == 1


def test_replace_partition_refuses_rows_of_other_partitions(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    with pytest.raises(ValueError, match="outside partition"):
        delta.write(spark, rows(spark, [(5, "x", D2)]), lakehouse, EVENTS,
                    mode="overwrite", partition={"dt": D1})
    assert delta.latest_version(lakehouse, EVENTS) == 1
    assert not glob.glob(os.path.join(lakehouse, "events/dt=2024-05-02/*"))


def test_replace_with_empty_data_empties_the_partition(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, []), lakehouse, EVENTS, mode="overwrite", partition={"dt": D1})
    assertDataFrameEqual(current(spark, lakehouse), rows(spark, [(2, "b", D2)]))


def test_partition_pruned_read(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    assertDataFrameEqual(current(spark, lakehouse, partitions={"dt": [D2]}),
                         rows(spark, [(2, "b", D2)]))


def test_txn_makes_a_rewrite_a_no_op(spark, lakehouse):
    txn = delta.Txn.of_content("test.app", "input-a")
    first = delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS, txn=txn)
    again = delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS, txn=txn)
    assert not first.skipped and again.skipped
    assert delta.latest_version(lakehouse, EVENTS) == 1
    assert delta.open_table(lakehouse, EVENTS).transaction_version("test.app") == txn.version
    other = delta.write(spark, rows(spark, [(2, "b", D1)]), lakehouse, EVENTS,
                        txn=delta.Txn.of_content("test.app", "input-b"))
    assert other.version == 2


def test_replace_rows_upserts_and_rewrites_only_touched_files(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    res = delta.replace_rows(spark, rows(spark, [(2, "B", D2), (3, "c", D2)]), lakehouse,
                             EVENTS, on=["id"])
    assert (res.files_removed, res.rows) == (1, 2)
    assertDataFrameEqual(current(spark, lakehouse),
                         rows(spark, [(1, "a", D1), (2, "B", D2), (3, "c", D2)]))
    again = delta.replace_rows(spark, rows(spark, [(2, "B", D2), (3, "c", D2)]), lakehouse,
                               EVENTS, on=["id"])
    assert again.skipped and again.reason == "no change"
    assert delta.latest_version(lakehouse, EVENTS) == 2


def test_replace_rows_by_group_key_swaps_whole_groups(spark, lakehouse):
    spec = TableSpec("recs", (Column("user", "string"), Column("rank", "int"),
                              Column("item", "string")), key=("user", "rank"))
    schema = spec.spark_schema()
    delta.write(spark, spark.createDataFrame(
        [("u1", 1, "a"), ("u1", 2, "b"), ("u2", 1, "c")], schema), lakehouse, spec)
    delta.replace_rows(spark, spark.createDataFrame([("u1", 1, "z")], schema), lakehouse, spec,
                       on=["user"])
    assertDataFrameEqual(delta.read(spark, lakehouse, spec),
                         spark.createDataFrame([("u1", 1, "z"), ("u2", 1, "c")], schema))


def test_stale_append_is_retried_without_loss(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    snap = delta.open_table(lakehouse, EVENTS)  # writer A reads v1 ...
    staged = delta.stage(spark, rows(spark, [(2, "b", D1)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(3, "c", D1)]), lakehouse, EVENTS)  # ... B commits v2
    res = delta.commit(staged, snapshot=snap, mode="append")  # A's commit lands as v3
    assert res.version == 3
    assert sorted(r.id for r in current(spark, lakehouse).collect()) == [1, 2, 3]


def test_racing_replacements_of_one_partition_conflict(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    snap = delta.open_table(lakehouse, EVENTS)
    staged = delta.stage(spark, rows(spark, [(2, "b", D1)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(3, "c", D1)]), lakehouse, EVENTS, mode="overwrite",
                partition={"dt": D1})
    with pytest.raises(delta.DeltaConflictError, match="changed partition"):
        delta.commit(staged, snapshot=snap, mode="overwrite", partition={"dt": D1})
    # the winner's data stands; the loser's files were cleaned up
    assert [r.id for r in current(spark, lakehouse).collect()] == [3]
    assert not any(os.path.exists(os.path.join(lakehouse, "events", a.path))
                   for a in staged.adds)


def test_replacement_of_another_partition_is_retried(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    snap = delta.open_table(lakehouse, EVENTS)
    staged = delta.stage(spark, rows(spark, [(5, "e", D2)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(4, "d", D1)]), lakehouse, EVENTS, mode="overwrite",
                partition={"dt": D1})
    res = delta.commit(staged, snapshot=snap, mode="overwrite", partition={"dt": D2})
    assert res.version == 3
    assertDataFrameEqual(current(spark, lakehouse), rows(spark, [(4, "d", D1), (5, "e", D2)]))


def test_table_scope_conflicts_on_any_concurrent_change(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    snap = delta.open_table(lakehouse, EVENTS)
    staged = delta.stage(spark, rows(spark, [(2, "b", D2)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(3, "c", D1)]), lakehouse, EVENTS)
    with pytest.raises(delta.DeltaConflictError):
        delta.commit(staged, snapshot=snap, mode="overwrite", partition={"dt": D2},
                     conflict_scope="table")


def test_duckdb_and_polars_read_the_tables(spark, lakehouse):
    import duckdb
    import polars as pl

    delta.write(spark, rows(spark, [(1, "a", D1), (2, "b", D2)]), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(9, "z", D1)]), lakehouse, EVENTS, mode="overwrite",
                partition={"dt": D1})
    con = duckdb.connect()
    con.register("events", delta.arrow_dataset(lakehouse, EVENTS))
    assert con.sql("select id, name, dt from events order by id").fetchall() == [
        (2, "b", D2), (9, "z", D1)]
    con.register("events_v1", delta.arrow_dataset(lakehouse, EVENTS, version=1))
    assert con.execute("select sum(id) from events_v1").fetchone() == (3,)
    path = os.path.join(lakehouse, "events")
    assert sorted(pl.read_delta(path)["id"].to_list()) == [2, 9]
    assert sorted(pl.read_delta(path, version=1)["id"].to_list()) == [1, 2]
    vec = pl.read_delta(path).sort("id")["vec"].to_list()
    assert vec == [[2.0], [9.0]]


def test_filters_never_skip_files_wrongly(spark, lakehouse):
    """Regression: deltalake's own pyarrow dataset pruned files whose stats lacked a column."""
    import duckdb

    long_name = "n" * 80  # too long for string stats
    delta.write(spark, rows(spark, [(1, long_name, D1)]).coalesce(1), lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(2, "b", D1), (3, long_name, D2)]), lakehouse, EVENTS)
    con = duckdb.connect()
    con.register("events", delta.arrow_dataset(lakehouse, EVENTS))
    assert con.execute(f"select count(*) from events where name = '{long_name}'").fetchone() == (2,)
    assert con.execute("select count(*) from events where vec[1] >= 2").fetchone() == (2,)


def test_schema_mismatch_is_refused(spark, lakehouse):
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    other = TableSpec("events", (Column("id", "long"), Column("dt", "date")),
                      partition_by=("dt",))
    with pytest.raises(delta.UnsupportedTableError, match="expects"):
        delta.read(spark, lakehouse, other)


def test_missing_table_and_version(spark, lakehouse):
    with pytest.raises(delta.TableMissingError):
        delta.read(spark, lakehouse, EVENTS)
    delta.write(spark, rows(spark, [(1, "a", D1)]), lakehouse, EVENTS)
    with pytest.raises(delta.TableMissingError, match="no version 7"):
        delta.read(spark, lakehouse, EVENTS, version=7)
