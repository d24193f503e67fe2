"""Merge-on-read tables: one query gives the current rows in every engine; compaction folds
the superseded rows away without changing them, and keeps what is appended meanwhile; the
append-only tables' small files are packed, rows untouched."""

from __future__ import annotations

import datetime as dt
import os

import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobs import sql as sql_job
from pipelines.batch.compact import MIN_SMALL_FILES, compact_table, pack_table
from pipelines.storage import delta
from pipelines.storage.sql import query
from pipelines.streaming.state import KeyedState
from schemas.tables import INTERACTIONS, RECOMMENDATIONS, TABLES, USER_FACTORS, USER_INDEX

T0 = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def lists(rows):
    """[(user, generated_at offset in s, [items])] -> recommendations rows (ranks 1..n)."""
    out = {c: [] for c in RECOMMENDATIONS.column_names}
    for user, at, items in rows:
        for rank, item in enumerate(items, 1):
            for c, v in zip(RECOMMENDATIONS.column_names,
                            (user, rank, item, 1.0 / rank, "fold_in", 3,
                             T0 + dt.timedelta(seconds=at)), strict=True):
                out[c].append(v)
    return pa.table(out, RECOMMENDATIONS.arrow_schema())


def brute_force(writes) -> set[tuple]:
    """Each user's rows of their latest write (the definition, by hand)."""
    latest: dict[str, tuple] = {}
    for batch in writes:
        for user, at, items in batch:
            if user not in latest or at > latest[user][0]:
                latest[user] = (at, items)
    return {(u, r, i) for u, (_, items) in latest.items() for r, i in enumerate(items, 1)}


def triples(table) -> set[tuple]:
    d = table.to_pydict() if hasattr(table, "to_pydict") else table
    return set(zip(d["user_id"], d["rank"], d["item_id"], strict=True))


WRITES = [  # a snapshot (score), then two stream batches refreshing a and c
    [("a", 0, ["x", "y", "z"]), ("b", 0, ["x", "w", "v"]), ("c", 0, ["v", "w", "x"])],
    [("a", 5, ["w", "q"])],
    [("c", 9, ["q", "x", "y"]), ("d", 9, ["x"])],
]


def test_the_query_is_derived_from_the_spec():
    assert [t.name for t in TABLES.values() if t.merge_on_read] == \
        ["user_factors", "recommendations"]
    q = RECOMMENDATIONS.current_sql()
    assert "PARTITION BY user_id" in q and "max(generated_at)" in q
    assert "PARTITION BY model_version, user_id" in USER_FACTORS.current_sql()
    with pytest.raises(ValueError, match="not merge-on-read"):
        TABLES["interactions"].current_sql()


def test_one_query_gives_the_current_lists_in_every_engine(spark, lakehouse, capsys):
    import duckdb
    import polars as pl

    for batch in WRITES:
        delta.append_arrow(lakehouse, RECOMMENDATIONS, lists(batch))
    want = brute_force(WRITES)
    q = RECOMMENDATIONS.current_sql()
    path = delta.table_path(lakehouse, RECOMMENDATIONS)

    # lakerec sql: the documented query, and the view that runs it
    assert {r[:3] for r in query(lakehouse, q)[1]} == want
    cols, rows = query(lakehouse, "SELECT user_id, rank, item_id FROM current_recommendations")
    assert set(rows) == want
    assert sql_job.main(["--lakehouse", lakehouse, "--format", "csv",
                         "SELECT count(*) FROM current_recommendations"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == str(len(want))
    # Spark SQL on the table read by Spark
    delta.read(spark, lakehouse, RECOMMENDATIONS).createOrReplaceTempView("recommendations")
    assert triples(spark.sql(q).toPandas().to_dict("list")) == want
    assert triples(delta.read(spark, lakehouse, RECOMMENDATIONS, current=True)
                   .toPandas().to_dict("list")) == want
    # DuckDB on the Arrow dataset, Polars on its own Delta reader
    recommendations = delta.arrow_dataset(lakehouse, RECOMMENDATIONS)  # noqa: F841
    assert triples(duckdb.sql(q).df().to_dict("list")) == want
    got = pl.SQLContext(recommendations=pl.scan_delta(path)).execute(q).collect()
    assert triples(got.to_dict(as_series=False)) == want
    assert triples(delta.current_table(lakehouse, RECOMMENDATIONS)) == want


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.tuples(st.sampled_from("abcd"), st.integers(0, 20),
                                   st.lists(st.sampled_from("pqrstuvw"), min_size=1,
                                            max_size=4, unique=True)),
                         min_size=1, max_size=4), min_size=1, max_size=4))
def test_current_rows_match_the_brute_force(writes):
    import duckdb

    # a user's lists never share a generated_at (each write stamps its own time): drop ties
    seen, clean = set(), []
    for b in writes:
        clean.append([])
        for u, at, items in b:
            if (u, at) not in seen:
                seen.add((u, at))
                clean[-1].append((u, at, items))
    recommendations = pa.concat_tables([lists(b) for b in clean])  # noqa: F841
    assert triples(duckdb.sql(RECOMMENDATIONS.current_sql()).df().to_dict("list")) == brute_force(clean)


def test_compaction_folds_superseded_rows_and_keeps_concurrent_appends(spark, lakehouse):
    for batch in WRITES[:2]:
        delta.append_arrow(lakehouse, RECOMMENDATIONS, lists(batch))
    snap = delta.open_table(lakehouse, RECOMMENDATIONS)
    before = triples(delta.current_table(lakehouse, RECOMMENDATIONS))
    # the stream appends while compaction runs: compaction rewrites the snapshot it read
    delta.append_arrow(lakehouse, RECOMMENDATIONS, lists(WRITES[2]))
    cur = delta.read(spark, lakehouse, RECOMMENDATIONS, version=snap.version(), current=True)
    assert triples(cur.toPandas().to_dict("list")) == before
    res = delta.replace_snapshot(spark, cur, lakehouse, RECOMMENDATIONS, snapshot=snap)
    assert res.files_removed == 2
    assert triples(delta.current_table(lakehouse, RECOMMENDATIONS)) == brute_force(WRITES)
    # a snapshot whose files another rewrite removed meanwhile is a conflict, not a loss
    with pytest.raises(delta.DeltaConflictError, match="removed files"):
        delta.replace_snapshot(spark, cur, lakehouse, RECOMMENDATIONS, snapshot=snap)

    r = compact_table(spark, lakehouse, RECOMMENDATIONS)
    raw = delta.arrow_dataset(lakehouse, RECOMMENDATIONS).to_table()
    assert not r.skipped and r.files_after == 1 and r.rows_after == len(brute_force(WRITES))
    assert triples(raw) == brute_force(WRITES) and raw.num_rows == r.rows_after
    version = delta.latest_version(lakehouse, RECOMMENDATIONS)
    again = compact_table(spark, lakehouse, RECOMMENDATIONS)
    assert again.skipped == "nothing to fold"
    assert delta.latest_version(lakehouse, RECOMMENDATIONS) == version
    staging = os.path.join(lakehouse, "recommendations", "_staging")
    assert not os.path.isdir(staging) or not os.listdir(staging)


def test_user_factors_current_per_model_version(spark, lakehouse):
    def rows(user, version, at, x):
        return pa.table({"user_id": [user], "user_idx": pa.array([0], pa.int32()),
                         "factors": pa.array([[x, x]], pa.list_(pa.float32())),
                         "source": ["fold_in"],
                         "updated_at": pa.array([T0 + dt.timedelta(seconds=at)],
                                                pa.timestamp("us", "UTC")),
                         "model_version": pa.array([version], pa.int64())})

    for args in [("u", 1, 0, 1.0), ("u", 2, 0, 2.0), ("u", 1, 5, 3.0), ("v", 2, 1, 4.0)]:
        delta.append_arrow(lakehouse, USER_FACTORS, rows(*args))
    want = {("u", 1, 3.0), ("u", 2, 2.0), ("v", 2, 4.0)}
    sql_rows = query(lakehouse, "SELECT user_id, model_version, factors[1] FROM "
                                "current_user_factors")[1]
    assert set(sql_rows) == want
    spark_rows = delta.read(spark, lakehouse, USER_FACTORS, current=True).toPandas()
    assert {(u, v, f[0]) for u, v, f in zip(spark_rows["user_id"], spark_rows["model_version"],
                                            spark_rows["factors"], strict=True)} == want
    r = compact_table(spark, lakehouse, USER_FACTORS)
    assert (r.rows_before, r.rows_after) == (4, 3)
    pdf = delta.arrow_dataset(lakehouse, USER_FACTORS).to_table().to_pandas()
    assert len(pdf) == 3 and isinstance(pdf, pd.DataFrame)


def test_packing_moves_the_small_files_not_the_rows(spark, lakehouse, tmp_path):
    def events(tag, day, n=2):
        at = dt.datetime.combine(day, dt.time(), dt.UTC)
        return pa.Table.from_pylist([
            {"event_id": f"{tag}-{j}", "user_id": f"u{j}", "item_id": f"i{j}",
             "event_type": "view", "value": None, "ts": at, "session_id": None,
             "source": "test", "ingest_source": "test://", "ingest_id": tag,
             "ingested_at": at, "dt": day} for j in range(n)], schema=INTERACTIONS.arrow_schema())

    busy, quiet = dt.date(2024, 6, 1), dt.date(2024, 6, 2)
    for b in range(MIN_SMALL_FILES + 5):  # a stream's day: one small file per batch
        delta.append_arrow(lakehouse, INTERACTIONS, events(f"b{b}", busy))
    for b in range(3):
        delta.append_arrow(lakehouse, INTERACTIONS, events(f"q{b}", quiet))
    state = KeyedState.open(str(tmp_path / "state"), id_days=3)
    state.sync(lakehouse, [INTERACTIONS], today=quiet)
    before = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table().sort_by("event_id")
    old = delta.open_table(lakehouse, INTERACTIONS)

    r = pack_table(lakehouse, INTERACTIONS)
    assert (r.operation, r.skipped, r.files_before, r.files_after) == \
        ("pack", "", MIN_SMALL_FILES + 8, 1 + 3)  # the quiet day's 3 files left alone
    after = delta.arrow_dataset(lakehouse, INTERACTIONS).to_table().sort_by("event_id")
    assert after.equals(before)  # same rows, same types
    spark_rows = delta.read(spark, lakehouse, INTERACTIONS).select("event_id", "dt").collect()
    assert sorted((x.event_id, x.dt) for x in spark_rows) == sorted(zip(
        before["event_id"].to_pylist(), before["dt"].to_pylist(), strict=True))
    # rows moved, not changed: the stream's state reads nothing and does not rebuild
    assert state.sync(lakehouse, [INTERACTIONS], today=quiet)["interactions"].endswith(
        ": 0 files, 0 rows")
    assert pack_table(lakehouse, INTERACTIONS).skipped == "no partition with many small files"
    # a micro-batch planned on the snapshot before the pack still commits (no conflict)
    late = delta.append_arrow(lakehouse, INTERACTIONS, events("late", busy), snapshot=old,
                              txn=delta.Txn.batch("lakerec.stream/test", 1))
    assert not late.skipped
    assert delta.arrow_dataset(lakehouse, INTERACTIONS).count_rows() == before.num_rows + 2

    # a copy-on-write planned on the files before a pack conflicts: retried on top of the
    # pack, it would keep the packed copy of the rows it replaces as well (duplicates)
    for b in range(MIN_SMALL_FILES):
        delta.append_arrow(lakehouse, INTERACTIONS, events(f"c{b}", quiet))
    planned = delta.open_table(lakehouse, INTERACTIONS)
    assert not pack_table(lakehouse, INTERACTIONS).skipped
    q0 = events("q0", quiet)
    fixed = q0.set_column(q0.schema.get_field_index("item_id"), "item_id", pa.array(["fixed"] * 2))
    with pytest.raises(delta.DeltaConflictError, match="removed files"):
        delta.replace_rows_arrow(lakehouse, INTERACTIONS, fixed, on=["event_id"],
                                 snapshot=planned)
    assert delta.arrow_dataset(lakehouse, INTERACTIONS).count_rows() == \
        before.num_rows + 2 + 2 * MIN_SMALL_FILES

    # user_index is append-only (delta.appendOnly): packing moves its rows all the same
    for b in range(MIN_SMALL_FILES):
        delta.append_arrow(lakehouse, USER_INDEX, pa.table({
            "user_id": [f"u{b}"], "user_idx": pa.array([b], pa.int32()),
            "assigned_at": pa.array([T0], pa.timestamp("us", "UTC"))}))
    rows = delta.arrow_dataset(lakehouse, USER_INDEX).to_table().sort_by("user_idx")
    r = pack_table(lakehouse, USER_INDEX)
    assert (r.skipped, r.files_after) == ("", 1)
    assert delta.arrow_dataset(lakehouse, USER_INDEX).to_table().sort_by("user_idx") \
        .equals(rows)
