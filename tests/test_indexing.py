"""Stable int ids: append-only, deterministic, and safe when two writers race."""

from __future__ import annotations

import datetime as dt

from pipelines.batch import indexing
from pipelines.storage import delta
from schemas.tables import USER_INDEX

NOW = dt.datetime(2024, 6, 1, tzinfo=dt.UTC)


def ids(spark, *names):
    return spark.createDataFrame([(n,) for n in names], "user_id string")


def index(spark, lakehouse):
    return {r.user_id: r.user_idx for r in delta.read(spark, lakehouse, USER_INDEX).collect()}


def test_new_ids_follow_existing_ones_in_sorted_order(spark, lakehouse):
    got = indexing.update_index(spark, lakehouse, USER_INDEX, ids(spark, "b", "a", "a"), now=NOW)
    assert {r.user_id: r.user_idx for r in got.collect()} == {"a": 0, "b": 1}
    got = indexing.update_index(spark, lakehouse, USER_INDEX, ids(spark, "d", "a", "c"), now=NOW)
    assert {r.user_id: r.user_idx for r in got.collect()} == {"a": 0, "c": 2, "d": 3}
    assert index(spark, lakehouse) == {"a": 0, "b": 1, "c": 2, "d": 3}
    v = delta.latest_version(lakehouse, USER_INDEX)
    indexing.update_index(spark, lakehouse, USER_INDEX, ids(spark, "a", "d"), now=NOW)
    assert delta.latest_version(lakehouse, USER_INDEX) == v  # nothing new, nothing written


def test_a_writer_that_loses_the_race_reassigns(spark, lakehouse, monkeypatch):
    indexing.update_index(spark, lakehouse, USER_INDEX, ids(spark, "a"), now=NOW)
    real_write = delta.write
    raced = []

    def write_after_a_rival(*args, **kwargs):
        if not raced:  # another job appends "z" as id 1 between our read and our commit
            raced.append(True)
            rival = spark.createDataFrame([("z", 1, NOW)], USER_INDEX.spark_schema())
            real_write(spark, rival, lakehouse, USER_INDEX, mode="append")
        return real_write(*args, **kwargs)

    monkeypatch.setattr(delta, "write", write_after_a_rival)
    got = indexing.update_index(spark, lakehouse, USER_INDEX, ids(spark, "b", "c"), now=NOW)
    assert raced
    assert {r.user_id: r.user_idx for r in got.collect()} == {"b": 2, "c": 3}
    table = index(spark, lakehouse)
    assert table == {"a": 0, "z": 1, "b": 2, "c": 3}
    assert len(set(table.values())) == len(table)
