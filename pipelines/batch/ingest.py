"""Ingest: landing files -> validated, deduplicated ``interactions`` and ``quarantine``.

Pure transforms (:func:`dedupe`, :func:`events_to_tables`) plus :func:`ingest_date` and
:func:`ingest_catalog`, which do the I/O. Idempotency comes from Delta application
transactions keyed by a fingerprint of the input files: re-running a date whose files did
not change commits nothing; if they changed, partition ``dt=D`` of both tables is replaced
(quarantine first, so a crash between the two commits is repaired by the re-run).

Example
-------
>>> ingest_date(spark, "/lh", date(2024, 6, 3), source="/lh/landing/events")  # doctest: +SKIP
IngestReport(date=datetime.date(2024, 6, 3), rows=33912, valid=33801, quarantined=111, ...)
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections import Counter
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.batch import validate
from pipelines.storage import delta, landing
from schemas import EVENT_RULES
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE

log = logging.getLogger(__name__)

# Bump when dedup or catalog semantics change: inputs then count as new and re-ingest. The
# event rules (types, limits) carry their own fingerprint, so a new event type re-validates.
RULES_VERSION = "1"
_EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
                 "source")
_CATALOG_FIELDS = ("item_id", "title", "description", "category", "created_at")


@dataclass(frozen=True)
class IngestReport:
    """What one ingest did."""

    date: _dt.date | None
    ingest_id: str
    rows: int = 0
    valid: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    skipped: bool = False
    versions: dict[str, int | None] = field(default_factory=dict)


def dedupe(valid: DataFrame, existing_ids: DataFrame | None, *, key: str = "event_id",
           order: tuple[str, ...] = ("dt", "ts", "user_id", "item_id", "event_type", "value",
                                     "session_id", "source", "ingest_source", "raw"),
           reasons: tuple[str, str] = ("duplicate_event_id", "duplicate_already_ingested"),
           ) -> tuple[DataFrame, DataFrame]:
    """Keep one row per ``key``; return (kept, rejected duplicates with a ``reason``).

    The first row by ``order`` wins, deterministically whatever the file layout. A copy is
    ``reasons[0]`` (a duplicate within the input) unless the winner arrived in an earlier
    partition (``dt``), when it is ``reasons[1]`` -- as if the dates had been ingested one
    by one -- and so is every row whose key is already in ``existing_ids``.
    """
    w = Window.partitionBy(key).orderBy(*[F.asc_nulls_first(c) for c in order])
    ranked = valid.withColumn("_n", F.row_number().over(w))
    if "dt" in valid.columns:
        ranked = ranked.withColumn("_first_dt", F.first("dt").over(w))
        again = F.col("_first_dt") < F.col("dt")
    else:
        ranked = ranked.withColumn("_first_dt", F.lit(None))
        again = F.lit(False)
    first = ranked.where("_n = 1").drop("_n", "_first_dt")
    dups = ranked.where("_n > 1").withColumn(
        "reason", F.when(again, F.lit(reasons[1])).otherwise(F.lit(reasons[0]))) \
        .drop("_n", "_first_dt")
    if existing_ids is not None:
        known = first.join(existing_ids, key, "left_semi").withColumn("reason",
                                                                      F.lit(reasons[1]))
        first = first.join(existing_ids, key, "left_anti")
        dups = dups.unionByName(known)
    return first, dups


def events_to_tables(checked: DataFrame, existing_ids: DataFrame | None, *, at: _dt.datetime,
                     origin: str = "events") -> tuple[DataFrame, DataFrame]:
    """Checked events (with ``dt`` and ``ingest_id``) -> (``interactions``, ``quarantine`` rows)."""
    valid, rejected = validate.split(checked)
    kept, dups = dedupe(valid, existing_ids)
    when = F.lit(at).cast("timestamp")
    interactions = kept.select(*_EVENT_FIELDS, "ingest_source", "ingest_id",
                               when.alias("ingested_at"), "dt")
    bad = validate.quarantine_rows(rejected.unionByName(dups))
    quarantine = bad.select(
        "raw", "raw_bytes", "raw_size", "reason", "event_id", "ingest_source", "ingest_id",
        when.alias("quarantined_at"), F.lit(origin).alias("origin"), "dt")
    return interactions, quarantine


def _already(lakehouse: str, txn: delta.Txn, *specs) -> bool:
    return all(delta.exists(lakehouse, spec)
               and delta.done(delta.open_table(lakehouse, spec), txn)
               for spec in specs)


@dataclass(frozen=True)
class _Input:
    date: _dt.date
    files: list
    ingest_id: str
    txn: delta.Txn


def _plan(date: _dt.date, source: str) -> _Input:
    files = landing.partition_files(source, date)
    fp = landing.fingerprint(files, RULES_VERSION, EVENT_RULES.fingerprint())
    return _Input(date, files, f"ingest:{date.isoformat()}:{fp[:12]}",
                  delta.Txn(f"lakerec.ingest/dt={date.isoformat()}", int(fp[:15], 16)))


def ingest_dates(spark, lakehouse: str, dates: list[_dt.date], *, source: str,
                 now: _dt.datetime | None = None, attempts: int = 3) -> list[IngestReport]:
    """Ingest the log partitions ``dt=D`` of ``dates`` under ``source``, in one pass.

    Dates whose files are unchanged since their last ingest are skipped. The others are
    validated together and committed together: one commit per table replaces all their
    partitions and records each date's transaction. The result is the same as ingesting
    them one by one, oldest first. Raises :class:`pipelines.runtime.config.UsageError` if a partition
    does not exist.
    """
    plans = [_plan(d, source) for d in dates]
    reports = {p.date: IngestReport(p.date, p.ingest_id, skipped=True) for p in plans
               if _already(lakehouse, p.txn, QUARANTINE, INTERACTIONS)}
    for p in plans:
        if p.date in reports:
            log.info("dt=%s already ingested from these files (%s)", p.date, p.ingest_id)
    pending = [p for p in plans if p.date not in reports]
    now = now or _dt.datetime.now(_dt.UTC)
    for attempt in range(1, attempts + 1):
        if not pending:
            break
        try:
            reports.update(_ingest(spark, lakehouse, pending, now))
            break
        except delta.DeltaConflictError as e:
            if attempt == attempts:
                raise
            log.warning("%s -- recomputing (attempt %d/%d)", e, attempt + 1, attempts)
    return [reports[d] for d in dates]


def ingest_date(spark, lakehouse: str, date: _dt.date, *, source: str,
                now: _dt.datetime | None = None, attempts: int = 3) -> IngestReport:
    """Ingest one log partition (see :func:`ingest_dates`)."""
    return ingest_dates(spark, lakehouse, [date], source=source, now=now,
                        attempts=attempts)[0]


def _ingest(spark, lakehouse: str, pending: list[_Input], now: _dt.datetime
            ) -> dict[_dt.date, IngestReport]:
    dates = [p.date for p in pending]
    snap = delta.ensure_table(lakehouse, INTERACTIONS)
    version = snap.version()
    existing = delta.read(spark, lakehouse, INTERACTIONS, version=version) \
        .where(~F.col("dt").isin(dates)).select("event_id")
    lines = landing.read_raw(spark, [f for p in pending for f in p.files], _EVENT_FIELDS)
    # the log partition each line came from: the last dt=YYYY-MM-DD folder of its path
    day = F.regexp_extract("ingest_source", r"^.*/dt=([0-9]{4}-[0-9]{2}-[0-9]{2})/", 1)
    ids = F.create_map(*[x for p in pending for x in (F.lit(p.date.isoformat()),
                                                     F.lit(p.ingest_id))])
    lines = lines.withColumn("dt", F.to_date(day)).withColumn("ingest_id", F.element_at(ids, day))
    skew = 24 + EVENT_RULES.max_future_skew_hours  # end of the day, plus the allowed skew
    max_ts = F.timestamp_add("HOUR", F.lit(skew), F.col("dt").cast("timestamp"))
    checked = validate.check_events(lines, max_ts=max_ts).persist()
    interactions = quarantine = None
    try:
        interactions, quarantine = events_to_tables(checked, existing, at=now)
        # one file per day for the (small) quarantine rather than one per task and day
        quarantine = quarantine.repartition("dt").persist()
        interactions = interactions.persist()
        meta = {"lakerec.ingest_ids": ",".join(p.ingest_id for p in pending),
                "lakerec.files": sum(len(p.files) for p in pending)}
        txns = [p.txn for p in pending]
        q = delta.write(spark, quarantine, lakehouse, QUARANTINE, mode="overwrite",
                        partition={"origin": "events", "dt": dates}, txn=txns, metadata=meta)
        i = delta.write(spark, interactions, lakehouse, INTERACTIONS, mode="overwrite",
                        partition={"dt": dates}, txn=txns, metadata=meta,
                        read_version=version, conflict_scope="table")
        reasons: dict[_dt.date, Counter] = {d: Counter() for d in dates}
        for r in quarantine.groupBy("dt", "reason").count().collect():
            reasons[r["dt"]][r["reason"]] = r["count"]
        valid = Counter({r["dt"]: r["count"]
                         for r in interactions.groupBy("dt").count().collect()})
    finally:
        for df in (checked, quarantine, interactions):
            if df is not None:
                df.unpersist()
    out = {}
    for p in pending:
        n_bad = sum(reasons[p.date].values())
        out[p.date] = IngestReport(p.date, p.ingest_id, rows=valid[p.date] + n_bad,
                                   valid=valid[p.date], quarantined=n_bad,
                                   reasons=dict(reasons[p.date]),
                                   versions={"quarantine": q.version, "interactions": i.version})
        log.info("dt=%s: %d rows, %d valid, %d quarantined %s", p.date, out[p.date].rows,
                 valid[p.date], n_bad, dict(reasons[p.date]) or "")
    return out


def ingest_catalog(spark, lakehouse: str, *, source: str,
                   now: _dt.datetime | None = None) -> IngestReport:
    """Upsert the catalog files under ``source`` into ``items`` (bad records to quarantine).

    Items are updated when their fields changed and never deleted: catalogs often arrive
    as partial updates.
    """
    files = landing.list_files(source)
    if not files:
        return IngestReport(None, "catalog:none", skipped=True)
    fp = landing.fingerprint(files, RULES_VERSION)
    ingest_id = f"catalog:{fp[:12]}"
    txn = delta.Txn("lakerec.ingest/catalog", int(fp[:15], 16))
    if _already(lakehouse, txn, ITEMS):
        log.info("catalog already ingested from these files (%s)", ingest_id)
        return IngestReport(None, ingest_id, skipped=True)
    now = now or _dt.datetime.now(_dt.UTC)
    today = now.date()
    lines = landing.read_raw(spark, files, _CATALOG_FIELDS)
    checked = validate.check_catalog(lines).persist()
    try:
        valid, rejected = validate.split(checked)
        kept, dups = dedupe(valid, None, key="item_id",
                            order=("created_at", "title", "description", "category",
                                   "ingest_source", "raw"),
                            reasons=("duplicate_item_id", ""))
        bad = validate.quarantine_rows(rejected.unionByName(dups)).select(
            "raw", "raw_bytes", "raw_size", "reason", F.lit(None).cast("string")
            .alias("event_id"), "ingest_source", F.lit(ingest_id).alias("ingest_id"),
            F.lit(now).cast("timestamp").alias("quarantined_at"),
            F.lit("catalog").alias("origin"), F.lit(today).alias("dt")).persist()
        items = kept.select(*_CATALOG_FIELDS, "ingest_source",
                            F.lit(ingest_id).alias("ingest_id"))
        # appended (one day may see several catalog drops), once per input thanks to the txn
        q = delta.write(spark, bad, lakehouse, QUARANTINE, txn=txn,
                        metadata={"lakerec.ingest_id": ingest_id})
        it = delta.replace_rows(spark, items, lakehouse, ITEMS, on=["item_id"], txn=txn,
                                metadata={"lakerec.ingest_id": ingest_id})
        if it.skipped and it.reason == "no change":
            # record that these files are done, so the next run skips the work entirely
            empty = spark.createDataFrame([], ITEMS.spark_schema())
            delta.write(spark, empty, lakehouse, ITEMS, txn=txn,
                        metadata={"lakerec.ingest_id": ingest_id, "lakerec.note": "no change"})
        reasons = Counter({r["reason"]: r["count"] for r in
                           bad.groupBy("reason").count().collect()})
        n_valid = kept.count()
        bad.unpersist()
    finally:
        checked.unpersist()
    n_bad = sum(reasons.values())
    log.info("catalog: %d items valid, %d quarantined %s", n_valid, n_bad, dict(reasons) or "")
    return IngestReport(None, ingest_id, rows=n_valid + n_bad, valid=n_valid, quarantined=n_bad,
                        reasons=dict(reasons),
                        versions={"quarantine": q.version, "items": it.version})
