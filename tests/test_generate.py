"""The synthetic generator: deterministic, and shaped like real behaviour logs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import math
import os
from dataclasses import replace

import pytest
from pyspark.sql import functions as F
from pyspark.testing import assertDataFrameEqual

from pipelines.dev import generate
from pipelines.dev.generate import (
    DYNAMICS_FIELDS,
    GENERATOR_VERSION,
    SyntheticSpec,
    catalog,
    catalog_lines,
    event_lines,
    events,
    user_profiles,
)
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


# ---- time dynamics -------------------------------------------------------------------------

def _digest(df, *cols) -> str:
    rows = sorted("|".join(str(r[c]) for c in cols) for r in df.collect())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


# The output of SPEC as the generator wrote it before the time dynamics existed (version 2).
# A change here is a change of the default data: bump GENERATOR_VERSION with the new digests.
SPEC_EVENT_LINES_SHA256 = "05abeade34213d6acf12ff11d978a3ec9b3ae8a8bb29ea0f213e6d42bcb51608"
SPEC_CATALOG_SHA256 = "0385e0cccb7b2d13854f419d1e3f879bbe00b99b654341c7f57ba8c5a98fda15"
DYN = SyntheticSpec(users=300, items=300, events=15_000, days=30, clusters=5, seed=7,
                    start=dt.date(2024, 3, 1))
START = dt.datetime(2024, 3, 1)


def _span_fraction(ts):
    return (F.unix_seconds(ts) - F.unix_seconds(F.lit(START).cast("timestamp"))) / (
        DYN.days * 86400)


def test_dynamics_off_by_default_keep_the_data_and_its_identity(spark):
    assert (SPEC.drift, SPEC.item_lifetime_days, SPEC.churn) == (0, 0, 0) and not SPEC.dynamic
    assert GENERATOR_VERSION == 2
    assert _digest(event_lines(spark, SPEC), "raw", "dt") == SPEC_EVENT_LINES_SHA256
    assert _digest(catalog_lines(spark, SPEC), "raw") == SPEC_CATALOG_SHA256
    # the landing manifest of a stationary set is what it was; any dynamic changes it
    assert not set(DYNAMICS_FIELDS) & set(SPEC.as_dict())
    manifests = {json.dumps(replace(SPEC, **kw).as_dict(), sort_keys=True)
                 for kw in ({}, {"drift": 0.3}, {"drift": 0.4}, {"item_lifetime_days": 60},
                            {"churn": 0.5}, {"drift": 0.3, "churn": 0.5})}
    assert len(manifests) == 6
    assert replace(SPEC, churn=0.5).as_dict()["churn"] == 0.5


def test_spec_checks_the_dynamics_and_realistic_turns_them_on():
    for bad in ({"drift": 1.5}, {"drift": -0.1}, {"churn": 2}, {"churn": float("nan")},
                {"item_lifetime_days": -1}, {"item_lifetime_days": float("inf")}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            SyntheticSpec(**bad)
    r = SyntheticSpec.realistic()
    assert (r.days, r.drift, r.item_lifetime_days, r.churn) == (180, 0.3, 60, 0.5)
    assert r.dynamic and SyntheticSpec.realistic(churn=0, days=90).days == 90


def test_drift_moves_a_users_taste_at_their_switch(spark):
    spec = replace(DYN, drift=0.5)
    prof = user_profiles(spark, spec)
    ev = events(spark, spec).withColumn(
        "cluster", F.substring("item_id", 6, 6).cast("int") % spec.clusters).join(prof, "user_id")
    after = F.coalesce(F.col("ts") >= F.col("drift_at"), F.lit(False))
    share = {(r.drifted, r.after): r for r in ev.groupBy("drifted", after.alias("after")).agg(
        F.avg((F.col("cluster") == F.col("primary")).cast("int")).alias("old"),
        F.avg((F.col("cluster") == F.col("new_primary")).cast("int")).alias("new")).collect()}
    assert 0.4 < prof.where("drifted").count() / spec.users < 0.6
    assert prof.where("drifted and new_primary = primary").count() == 0
    before, later = share[(True, False)], share[(True, True)]
    assert before.old > 0.6 and before.new < 0.2  # the old taste rules before the switch
    assert later.old < 0.2 and later.new > 0.6    # the new one after it
    assert share[(False, False)].old > 0.6 and (False, True) not in share
    # without drift nobody drifts, and the taste is steady over the span
    steady = events(spark, DYN).withColumn(
        "cluster", F.substring("item_id", 6, 6).cast("int") % DYN.clusters) \
        .join(user_profiles(spark, DYN), "user_id")
    half = (_span_fraction(F.col("ts")) >= 0.5).alias("late")
    for r in steady.groupBy(half).agg(
            F.avg((F.col("cluster") == F.col("primary")).cast("int")).alias("s")).collect():
        assert r.s > 0.6


def _rank_correlation(a: list[float], b: list[float]) -> float:
    def ranks(x):
        order = sorted(range(len(x)), key=x.__getitem__)
        r = [0.0] * len(x)
        i = 0
        while i < len(x):  # ties share their mean rank
            j = i
            while j + 1 < len(x) and x[order[j + 1]] == x[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r
    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb, strict=True))
    return cov / math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))


def _popularity_by_third(spark, spec):
    ev = events(spark, spec)
    third = F.floor(_span_fraction(F.col("ts")) * 3)
    counts = {(r.item_id, r.third): r["count"]
              for r in ev.groupBy("item_id", third.alias("third")).count().collect()}
    items = sorted({i for i, _ in counts})
    return ([counts.get((i, 0), 0) for i in items], [counts.get((i, 2), 0) for i in items])


def test_item_lifecycle_items_arrive_and_fade(spark):
    spec = replace(DYN, item_lifetime_days=5)
    ev, cat = events(spark, spec), catalog(spark, spec)
    start = F.lit(START).cast("timestamp")
    assert ev.join(cat, "item_id").where("ts < created_at").count() == 0
    # some items are there from the start, most arrive during the span, and the new ones --
    # each cluster's latest additions -- come in the last 3 days with no events (cold start)
    assert 0.2 * spec.items < cat.where(F.col("created_at") < start).count() < 0.4 * spec.items
    assert cat.where(F.col("created_at") >= start).count() > 0.6 * spec.items
    latest = []
    for c in range(spec.clusters):
        ids = list(range(c, spec.items, spec.clusters))
        latest += ids[len(ids) - math.floor(len(ids) * spec.new_item_fraction + 0.5):]
    new = cat.where(F.col("item_id").isin([f"item-{i:06d}" for i in latest]))
    assert new.count() == len(latest) > 0 and new.join(ev, "item_id").count() == 0
    assert new.where(F.col("created_at") < F.lit(START + dt.timedelta(days=spec.days - 3))
                     .cast("timestamp")).count() == 0
    # every event is kept (none is dropped for picking a new item): the same count as a
    # stationary set with no new items to drop
    assert ev.count() == events(spark, replace(DYN, new_item_fraction=0.0)).count()
    # the popular items of the first third of the span are not those of the last third
    assert _rank_correlation(*_popularity_by_third(spark, spec)) < 0.2
    assert _rank_correlation(*_popularity_by_third(spark, DYN)) > 0.5
    counts = sorted((r["count"] for r in ev.groupBy("item_id").count().collect()), reverse=True)
    assert sum(counts[: len(counts) // 10]) > 0.3 * sum(counts)  # still heavy-tailed


def _quiet_share(spark, spec) -> tuple[float, float]:
    """Among users with 20+ events: the share with none in the first / last fifth of the span."""
    f = _span_fraction(F.col("ts"))
    per = events(spark, spec).groupBy("user_id").agg(
        F.min(f).alias("lo"), F.max(f).alias("hi"), F.count("*").alias("n")).where("n >= 20")
    r = per.agg(F.avg((F.col("lo") > 0.2).cast("int")).alias("late"),
                F.avg((F.col("hi") < 0.8).cast("int")).alias("early")).first()
    return r.late, r.early


def test_churn_users_join_late_and_leave_early(spark):
    spec = replace(DYN, churn=0.6)
    prof = user_profiles(spark, spec)
    sessions = events(spark, spec).groupBy("session_id", "user_id").agg(
        F.min("ts").alias("t0")).join(prof, "user_id")
    # sessions start inside the user's active interval (the last may run a few minutes over)
    assert sessions.where("t0 < active_from or t0 > active_until + interval 10 minutes") \
        .count() == 0
    short = prof.where(f"active_from > timestamp'{START}' or active_until < "
                       f"timestamp'{START + dt.timedelta(days=spec.days)}'").count()
    assert 0.5 < short / spec.users < 0.7
    late, early = _quiet_share(spark, spec)
    late0, early0 = _quiet_share(spark, DYN)
    assert late > late0 + 0.15 and early > early0 + 0.15  # (0.46 / 0.48 against 0.2 / 0.2)


def test_dynamics_are_deterministic_whatever_the_partitioning(spark, monkeypatch):
    spec = SyntheticSpec.realistic(users=200, items=150, events=6_000, days=40, clusters=4,
                                   seed=5, item_lifetime_days=8, dirty_fraction=0.05)
    ev, lines, cat = events(spark, spec), event_lines(spark, spec), catalog(spark, spec)
    monkeypatch.setattr(generate, "_partitions", lambda spark, n, per: 7)
    assert events(spark, spec).rdd.getNumPartitions() == 7
    assertDataFrameEqual(events(spark, spec), ev)
    assertDataFrameEqual(event_lines(spark, spec), lines)
    assertDataFrameEqual(catalog(spark, spec), cat)
    other = events(spark, replace(spec, drift=0.6))
    assert other.exceptAll(ev).count() > 0


def _parse(tmp_path, *argv):
    from jobs.generate import parse

    return parse(["--lakehouse", str(tmp_path), *argv]).spec


def test_generate_flags_env_and_toml_set_the_dynamics(tmp_path, monkeypatch, capsys):
    from jobs.generate import main

    assert not _parse(tmp_path).dynamic
    assert _parse(tmp_path, "--dynamics") == SyntheticSpec.realistic()
    s = _parse(tmp_path, "--dynamics", "--days", "90", "--churn", "0", "--drift", "0.1")
    assert (s.days, s.drift, s.item_lifetime_days, s.churn) == (90, 0.1, 60, 0)
    s = _parse(tmp_path, "--item-lifetime-days", "14")
    assert (s.days, s.drift, s.item_lifetime_days, s.churn) == (30, 0, 14, 0)
    toml = tmp_path / "lakerec.toml"
    toml.write_text("[generate]\ndynamics = true\nchurn = 0.2\nitem_lifetime_days = 30\n")
    monkeypatch.setenv("LAKEREC_CONFIG", str(toml))
    monkeypatch.setenv("LAKEREC_DRIFT", "0.05")
    s = _parse(tmp_path, "--churn", "0.25")  # flags > env > toml > defaults
    assert (s.days, s.drift, s.item_lifetime_days, s.churn) == (180, 0.05, 30, 0.25)
    monkeypatch.setenv("LAKEREC_CONFIG", os.devnull)
    for argv, why in ((["--drift", "2"], "bad value for drift"),
                      (["--churn", "-0.5"], "bad value for churn"),
                      (["--item-lifetime-days", "-1"], "bad value for item_lifetime_days")):
        assert main(["--lakehouse", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert why in err and "\n" not in err
    monkeypatch.setenv("LAKEREC_DYNAMICS", "maybe")
    assert main(["--lakehouse", str(tmp_path)]) == 2
    assert "bad value for dynamics" in capsys.readouterr().err
