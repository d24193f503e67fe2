"""Ingest on real files and real Delta tables: validation, dedup, quarantine, idempotency."""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pyspark.sql import functions as F

from pipelines.batch.ingest import ingest_catalog, ingest_date, ingest_dates
from pipelines.dev.generate import SyntheticSpec, catalog_lines, event_lines
from pipelines.runtime.config import UsageError
from pipelines.storage import delta, landing
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE

SPEC = SyntheticSpec(users=200, items=50, events=4_000, days=3, clusters=4, seed=5,
                     start=dt.date(2024, 4, 1))
DIRTY = SyntheticSpec(**{**SPEC.__dict__, "dirty_fraction": 0.05})
EXPECTED_REASONS = {"malformed_json", "missing_field:user_id", "unknown_event_type",
                    "bad_timestamp", "duplicate_event_id", "wrong_type:user_id",
                    "value_out_of_range"}


def land(spark, spec, lakehouse):
    out = os.path.join(lakehouse, "landing")
    landing.write_landing(event_lines(spark, spec), catalog_lines(spark, spec), out, {})
    return out


def ingest_all(spark, lakehouse, out):
    reports = [ingest_date(spark, lakehouse, d, source=os.path.join(out, "events"))
               for d in landing.list_dates(os.path.join(out, "events"))]
    return reports


def table(spark, lakehouse, spec, **kw):
    return delta.read(spark, lakehouse, spec, **kw)


@pytest.fixture(scope="module")
def dirty_and_clean(spark, tmp_path_factory):
    lh_dirty = str(tmp_path_factory.mktemp("dirty"))
    lh_clean = str(tmp_path_factory.mktemp("clean"))
    out = land(spark, DIRTY, lh_dirty)
    reports = ingest_all(spark, lh_dirty, out)
    ingest_all(spark, lh_clean, land(spark, SPEC, lh_clean))
    return lh_dirty, lh_clean, out, reports


def test_every_dirty_row_lands_in_quarantine(spark, dirty_and_clean):
    lh_dirty, lh_clean, out, reports = dirty_and_clean
    lines = spark.read.text(os.path.join(out, "events")).count()
    inter = table(spark, lh_dirty, INTERACTIONS)
    quar = table(spark, lh_dirty, QUARANTINE)
    n_inter, n_quar = inter.count(), quar.count()
    assert n_inter + n_quar == lines  # nothing dropped, nothing invented
    assert sum(r.rows for r in reports) == lines
    reasons = {r.reason for r in quar.select("reason").distinct().collect()}
    assert reasons == EXPECTED_REASONS
    # the valid rows are exactly the clean data minus the corrupted events
    clean_ids = table(spark, lh_clean, INTERACTIONS).select("event_id")
    assert inter.select("event_id").subtract(clean_ids).count() == 0
    corrupted = clean_ids.subtract(inter.select("event_id")).count()
    assert corrupted == n_quar - quar.where("reason = 'duplicate_event_id'").count()
    assert inter.select("event_id").distinct().count() == n_inter
    assert quar.where("raw is null or ingest_source is null or ingest_id is null").count() == 0
    assert quar.where("origin != 'events'").count() == 0


def test_valid_rows_are_typed_with_lineage(spark, dirty_and_clean):
    lh_dirty, _, _, reports = dirty_and_clean
    row = table(spark, lh_dirty, INTERACTIONS).where("dt = '2024-04-02'").first()
    assert row.ingest_source.startswith("file:") and "dt=2024-04-02" in row.ingest_source
    assert row.ingest_id == next(r.ingest_id for r in reports if r.date == row.dt)
    assert row.ts is not None and row.ingested_at is not None


def test_rerun_commits_nothing(spark, dirty_and_clean):
    lh_dirty, _, out, _ = dirty_and_clean
    before = {t.name: delta.latest_version(lh_dirty, t) for t in (INTERACTIONS, QUARANTINE)}
    again = ingest_all(spark, lh_dirty, out)
    assert all(r.skipped for r in again)
    assert before == {t.name: delta.latest_version(lh_dirty, t)
                      for t in (INTERACTIONS, QUARANTINE)}


def test_one_pass_over_many_dates_equals_date_by_date(spark, dirty_and_clean, tmp_path):
    lh_dirty, _, out, _ = dirty_and_clean
    other = str(tmp_path / "lh")
    shutil.copytree(out, os.path.join(other, "landing"))
    src = os.path.join(other, "landing", "events")
    reports = ingest_dates(spark, other, landing.list_dates(src), source=src)
    assert len({r.versions["interactions"] for r in reports}) == 1  # one commit
    cols = ["event_id", "user_id", "item_id", "event_type", "value", "ts", "ingest_id", "dt"]
    for spec, c in ((INTERACTIONS, cols), (QUARANTINE, ["raw", "reason", "ingest_id", "dt"])):
        assert sorted(table(spark, other, spec).select(*c).collect()) == \
            sorted(table(spark, lh_dirty, spec).select(*c).collect())
    assert all(r.skipped for r in ingest_dates(spark, other, landing.list_dates(src),
                                                source=src))


def test_changed_input_replaces_the_partition_with_the_same_content(spark, lakehouse):
    out = land(spark, DIRTY, lakehouse)
    ingest_all(spark, lakehouse, out)
    cols = ["event_id", "user_id", "item_id", "event_type", "value", "ts", "dt"]
    before = table(spark, lakehouse, INTERACTIONS).select(*cols).collect()
    q_before = table(spark, lakehouse, QUARANTINE).select("raw", "reason").collect()
    folder = landing.partition_path(os.path.join(out, "events"), dt.date(2024, 4, 2))
    f = os.path.join(folder, sorted(os.listdir(folder))[0])
    with open(f, "a") as fh:  # one more blank line: new bytes, the same events
        fh.write("\n")
    r = ingest_date(spark, lakehouse, dt.date(2024, 4, 2), source=os.path.join(out, "events"))
    assert not r.skipped
    assert sorted(table(spark, lakehouse, INTERACTIONS).select(*cols).collect()) == sorted(before)
    assert sorted(table(spark, lakehouse, QUARANTINE).select("raw", "reason").collect()) == \
        sorted(q_before)


def write_lines(folder, name, lines):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "w") as f:
        f.write("\n".join(lines) + "\n")


def ev(eid, user="u1", item="i1", ts="2024-05-01T10:00:00Z", **kw):
    return json.dumps({"event_id": eid, "user_id": user, "item_id": item,
                       "event_type": kw.pop("event_type", "view"), "ts": ts, **kw})


def test_duplicates_against_the_table_and_blank_lines(spark, lakehouse):
    src = os.path.join(lakehouse, "landing", "events")
    write_lines(os.path.join(src, "dt=2024-05-01"), "a.jsonl", [ev("e1"), "", ev("e2"), "  "])
    write_lines(os.path.join(src, "dt=2024-05-02"), "a.jsonl",
                [ev("e2", ts="2024-05-02T00:00:01Z"), ev("e3", ts="2024-05-02T01:00:00Z")])
    r1 = ingest_date(spark, lakehouse, dt.date(2024, 5, 1), source=src)
    r2 = ingest_date(spark, lakehouse, dt.date(2024, 5, 2), source=src)
    assert (r1.valid, r1.quarantined) == (2, 0)  # blank lines are not records
    assert (r2.valid, r2.quarantined) == (1, 1)
    assert r2.reasons == {"duplicate_already_ingested": 1}
    # in one pass over both days, the later copy is labelled the same way
    other = os.path.join(lakehouse, "other")
    both = ingest_dates(spark, other, [dt.date(2024, 5, 1), dt.date(2024, 5, 2)], source=src)
    assert [r.reasons for r in both] == [{}, {"duplicate_already_ingested": 1}]
    # re-running day 1 still keeps e2 there: a date never dedups against itself
    with open(os.path.join(src, "dt=2024-05-01", "a.jsonl"), "a") as fh:  # new bytes
        fh.write("\n")
    ingest_date(spark, lakehouse, dt.date(2024, 5, 1), source=src)
    ids = sorted(r.event_id for r in table(spark, lakehouse, INTERACTIONS).collect())
    assert ids == ["e1", "e2", "e3"]


def test_duplicates_are_looked_up_within_the_horizon_in_batch_and_stream_alike(spark,
                                                                              lakehouse):
    from pipelines.streaming.microbatch import _known_ids

    src = os.path.join(lakehouse, "landing", "events")
    day = dt.date(2024, 5, 10)
    # e1 arrived 9 days before `day`, e2 5 days before, e3 3 days after (a backfill)
    for d, eid in ((dt.date(2024, 5, 1), "e1"), (dt.date(2024, 5, 5), "e2"),
                   (dt.date(2024, 5, 13), "e3")):
        write_lines(os.path.join(src, f"dt={d}"), "a.jsonl", [ev(eid, ts=f"{d}T09:00:00Z")])
        ingest_date(spark, lakehouse, d, source=src)
    write_lines(os.path.join(src, f"dt={day}"), "a.jsonl",
                [ev(e, ts="2024-05-10T10:00:00Z") for e in ("e1", "e2", "e3", "e4")])
    # the stream's lookup for records arriving on `day`, with the same rule
    assert set(_known_ids(lakehouse, ["e1", "e2", "e3", "e4"], day, 7)) == {"e2", "e3"}
    assert set(_known_ids(lakehouse, ["e1", "e2", "e3", "e4"], day, 9)) == {"e1", "e2", "e3"}
    r = ingest_date(spark, lakehouse, day, source=src, dedup_horizon_days=7)
    assert (r.valid, r.reasons) == (2, {"duplicate_already_ingested": 2})
    q = table(spark, lakehouse, QUARANTINE).where(F.col("dt") == day).collect()
    assert sorted(x.event_id for x in q) == ["e2", "e3"]  # e1: beyond the horizon, kept
    # the changed file re-ingests the date; with a wider horizon e1 is a duplicate too
    with open(os.path.join(src, f"dt={day}", "a.jsonl"), "a") as fh:  # new bytes
        fh.write("\n")
    r = ingest_date(spark, lakehouse, day, source=src, dedup_horizon_days=9)
    assert (r.valid, r.reasons) == (1, {"duplicate_already_ingested": 3})


def test_a_backlog_is_ingested_in_passes_of_bounded_input():
    from types import SimpleNamespace

    from pipelines.batch.ingest import passes

    def day(*sizes):
        return SimpleNamespace(files=[SimpleNamespace(size=n) for n in sizes])

    days = [day(40, 50), day(10), day(200), day(5), day(5), day(0)]
    pos = {id(p): i for i, p in enumerate(days)}
    got = passes(days, 100)
    assert [[pos[id(p)] for p in chunk] for chunk in got] == [[0, 1], [2], [3, 4, 5]]
    assert passes([], 100) == []
    # every date once, in order, whatever the budget
    for budget in (0, 1, 60, 10**9):
        assert [pos[id(p)] for chunk in passes(days, budget) for p in chunk] == list(range(6))


def test_csv_and_parquet_inputs(spark, lakehouse):
    src = os.path.join(lakehouse, "landing", "events")
    folder = os.path.join(src, "dt=2024-05-01")
    os.makedirs(folder)
    with open(os.path.join(folder, "part.csv"), "w") as f:
        f.write("event_id,user_id,item_id,event_type,value,ts,session_id,source\n"
                "c1,u1,i1,rating,4.5,1714557600000,,\n"
                'c2,u2,"i,2",view,,2024-05-01T09:00:00+02:00,s1,web\n'
                "c3,u3,i3,rating,lots,2024-05-01T09:00:00Z,,\n")
    pq.write_table(pa.table({"event_id": ["p1", "p2"], "user_id": ["u1", None],
                             "item_id": ["i9", "i9"], "event_type": ["purchase", "view"],
                             "value": [12.5, None],
                             "ts": ["2024-05-01T11:00:00Z", "2024-05-01T11:00:00Z"]}),
                   os.path.join(folder, "part.parquet"))
    r = ingest_date(spark, lakehouse, dt.date(2024, 5, 1), source=src)
    assert r.reasons == {"wrong_type:value": 1, "missing_field:user_id": 1}
    got = {x.event_id: x for x in table(spark, lakehouse, INTERACTIONS).collect()}
    assert set(got) == {"c1", "c2", "p1"}
    assert got["c1"].value == 4.5 and got["c1"].ts == dt.datetime(2024, 5, 1, 10, 0)
    assert got["c2"].item_id == "i,2" and got["c2"].ts == dt.datetime(2024, 5, 1, 7, 0)
    assert got["p1"].value == 12.5


def test_missing_partition_is_a_usage_error(spark, lakehouse):
    with pytest.raises(UsageError, match="no input partition"):
        ingest_date(spark, lakehouse, dt.date(2024, 1, 1), source=lakehouse)
    assert not delta.exists(lakehouse, INTERACTIONS)


def test_catalog_upsert(spark, lakehouse):
    src = os.path.join(lakehouse, "landing", "items")
    good = [json.dumps({"item_id": f"i{j}", "title": f"Item {j}", "category": "c"})
            for j in range(5)]
    write_lines(src, "a.jsonl", good + ['{"item_id": "bad"}', "nope"])
    r = ingest_catalog(spark, lakehouse, source=src)
    assert (r.valid, r.quarantined) == (5, 2)
    v = delta.latest_version(lakehouse, ITEMS)
    assert ingest_catalog(spark, lakehouse, source=src).skipped
    assert delta.latest_version(lakehouse, ITEMS) == v
    # a changed title is an update of that item only; the old items stay
    write_lines(src, "a.jsonl", [json.dumps({"item_id": "i3", "title": "Renamed"})])
    r = ingest_catalog(spark, lakehouse, source=src)
    items = {x.item_id: x.title for x in table(spark, lakehouse, ITEMS).collect()}
    assert items == {"i0": "Item 0", "i1": "Item 1", "i2": "Item 2", "i3": "Renamed",
                     "i4": "Item 4"}
    q = table(spark, lakehouse, QUARANTINE).where(F.col("origin") == "catalog")
    assert sorted(x.reason for x in q.collect()) == ["malformed_json", "missing_field:title"]
