"""The synthetic generator: deterministic, and shaped like real behaviour logs."""

from __future__ import annotations

import datetime as dt

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.dev.generate import SyntheticSpec, catalog, event_lines, events
from pipelines.dev.vocab import FILLER_WORDS

SPEC = SyntheticSpec(users=400, items=200, events=20_000, days=6, clusters=5, seed=11,
                     start=dt.date(2024, 3, 1))


@pytest.fixture(scope="module")
def ev(spark):
    return events(spark, SPEC).persist()


def test_same_seed_same_data_other_seed_other_data(spark, ev):
    assertDataFrameEqual(events(spark, SPEC), ev)
    other = events(spark, SyntheticSpec(**{**SPEC.__dict__, "seed": 12}))
    assert other.select("event_id").intersect(ev.select("event_id")).count() == 0


def test_size_and_shape(ev):
    n = ev.count()
    assert 0.9 * SPEC.events < n < 1.1 * SPEC.events
    assert ev.select("user_id").distinct().count() > 0.9 * SPEC.users
    assert ev.select("event_id").distinct().count() == n
    days = {r.dt for r in ev.select("dt").distinct().collect()}
    assert min(days) == SPEC.start and max(days) <= SPEC.start + dt.timedelta(days=SPEC.days)


def test_popularity_is_heavy_tailed(ev):
    counts = sorted((r["count"] for r in ev.groupBy("item_id").count().collect()), reverse=True)
    top_decile = sum(counts[: len(counts) // 10])
    assert top_decile > 0.35 * sum(counts)  # far above the 10% of a uniform catalog


def test_conversions_are_rarer_than_views(ev):
    by_type = {r.event_type: r["count"] for r in ev.groupBy("event_type").count().collect()}
    assert by_type["view"] > by_type["click"] > by_type["add_to_cart"] > by_type["purchase"]
    assert set(by_type) == {"view", "click", "add_to_cart", "purchase", "rating"}
    assert ev.where("event_type = 'rating' and (value < 1 or value > 5)").count() == 0


def test_users_have_a_taste_cluster(ev):
    # cluster of an item = its index mod C; a user's most frequent cluster dominates
    cl = ev.withColumn("cluster", F.substring("item_id", 6, 6).cast("int") % SPEC.clusters)
    per = cl.groupBy("user_id", "cluster").count()
    share = per.groupBy("user_id").agg((F.max("count") / F.sum("count")).alias("s"),
                                       F.sum("count").alias("n")).where("n >= 20")
    assert share.agg(F.avg("s")).first()[0] > 0.5  # uniform would be 1/5


def test_sessions_revisit_items(ev):
    pairs = ev.groupBy("session_id", "item_id").count()
    assert pairs.where("count > 1").count() > 0.1 * pairs.count()


def test_catalog_text_follows_clusters(spark):
    items = catalog(spark, SPEC).collect()
    assert len(items) == SPEC.items
    by_cat = {}
    for r in items:
        by_cat.setdefault(r.category, set()).update(r.description.lower().strip(".").split())
    assert len(by_cat) == SPEC.clusters
    # apart from filler words, two clusters' descriptions share no vocabulary
    music, outdoors = by_cat["music"] - set(FILLER_WORDS), by_cat["outdoors"] - set(FILLER_WORDS)
    assert len(music) > 15 and len(outdoors) > 15
    assert not music & outdoors
    assert all(r.title and r.item_id.startswith("item-") for r in items)


def test_dirty_rows_are_injected(spark):
    dirty = SyntheticSpec(**{**SPEC.__dict__, "dirty_fraction": 0.1})
    clean_n = event_lines(spark, SPEC).count()
    lines = event_lines(spark, dirty)
    assert lines.count() > clean_n  # duplicates add lines
    assert lines.where(~F.col("raw").endswith("}")).count() > 0  # truncated JSON
    assert lines.where(F.col("raw").contains('"event_type":"hover"')).count() > 0
