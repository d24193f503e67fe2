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

from pipelines import delta, landing, validate
from schemas import EVENT_RULES
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE

log = logging.getLogger(__name__)

# Bump when validation or dedup semantics change: inputs then count as new and re-ingest.
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
           order: tuple[str, ...] = ("ts", "user_id", "item_id", "event_type", "value",
                                     "session_id", "source", "ingest_source", "raw"),
           reasons: tuple[str, str] = ("duplicate_event_id", "duplicate_already_ingested"),
           ) -> tuple[DataFrame, DataFrame]:
    """Keep one row per ``key``; return (kept, rejected duplicates with a ``reason``).

    Within the input the first row by ``order`` wins (deterministic whatever the file
    layout); rows whose key is already in ``existing_ids`` are rejected too.
    """
    w = Window.partitionBy(key).orderBy(*[F.asc_nulls_first(c) for c in order])
    ranked = valid.withColumn("_n", F.row_number().over(w))
    first = ranked.where("_n = 1").drop("_n")
    dups = ranked.where("_n > 1").drop("_n").withColumn("reason", F.lit(reasons[0]))
    if existing_ids is not None:
        again = first.join(existing_ids, key, "left_semi").withColumn("reason",
                                                                      F.lit(reasons[1]))
        first = first.join(existing_ids, key, "left_anti")
        dups = dups.unionByName(again)
    return first, dups


def events_to_tables(checked: DataFrame, existing_ids: DataFrame | None, *, dt: _dt.date,
                     ingest_id: str, at: _dt.datetime, origin: str = "events",
                     ) -> tuple[DataFrame, DataFrame]:
    """Checked events -> (``interactions`` rows, ``quarantine`` rows) for partition ``dt``."""
    valid, rejected = validate.split(checked)
    kept, dups = dedupe(valid, existing_ids)
    lineage = [F.lit(ingest_id).alias("ingest_id"), F.lit(at).cast("timestamp")]
    interactions = kept.select(
        *_EVENT_FIELDS, "ingest_source", lineage[0],
        lineage[1].alias("ingested_at"), F.lit(dt).alias("dt"))
    bad = validate.quarantine_rows(rejected.unionByName(dups))
    quarantine = bad.select(
        "raw", "raw_bytes", "raw_size", "reason", "event_id", "ingest_source", lineage[0],
        lineage[1].alias("quarantined_at"), F.lit(origin).alias("origin"),
        F.lit(dt).alias("dt"))
    return interactions, quarantine


def _max_event_time(date: _dt.date) -> _dt.datetime:
    end = _dt.datetime.combine(date + _dt.timedelta(days=1), _dt.time(), _dt.UTC)
    return end + _dt.timedelta(hours=EVENT_RULES.max_future_skew_hours)


def _already(lakehouse: str, txn: delta.Txn, *specs) -> bool:
    for spec in specs:
        if not delta.exists(lakehouse, spec):
            return False
        if delta.open_table(lakehouse, spec).transaction_version(txn.app_id) != txn.version:
            return False
    return True


def ingest_date(spark, lakehouse: str, date: _dt.date, *, source: str,
                now: _dt.datetime | None = None, attempts: int = 3) -> IngestReport:
    """Ingest the log partition ``dt=date`` under ``source`` into the lakehouse.

    Raises :class:`pipelines.config.UsageError` if the partition does not exist.
    """
    files = landing.partition_files(source, date)
    fp = landing.fingerprint(files, RULES_VERSION)
    ingest_id = f"ingest:{date.isoformat()}:{fp[:12]}"
    txn = delta.Txn(f"lakerec.ingest/dt={date.isoformat()}", int(fp[:15], 16))
    if _already(lakehouse, txn, QUARANTINE, INTERACTIONS):
        log.info("dt=%s already ingested from these files (%s); nothing to do", date, ingest_id)
        return IngestReport(date, ingest_id, skipped=True)
    now = now or _dt.datetime.now(_dt.UTC)
    for attempt in range(1, attempts + 1):
        try:
            return _ingest_once(spark, lakehouse, date, files, ingest_id, txn, now)
        except delta.DeltaConflictError as e:
            if attempt == attempts:
                raise
            log.warning("dt=%s: %s -- recomputing (attempt %d/%d)", date, e, attempt + 1,
                        attempts)
    raise AssertionError("unreachable")


def _ingest_once(spark, lakehouse, date, files, ingest_id, txn, now) -> IngestReport:
    snap = delta.ensure_table(lakehouse, INTERACTIONS)
    version = snap.version()
    existing = delta.read(spark, lakehouse, INTERACTIONS, version=version) \
        .where(F.col("dt") != F.lit(date)).select("event_id")
    lines = landing.read_raw(spark, files, _EVENT_FIELDS)
    checked = validate.check_events(lines, max_ts=F.lit(_max_event_time(date))).persist()
    interactions = quarantine = None
    try:
        interactions, quarantine = events_to_tables(checked, existing, dt=date,
                                                    ingest_id=ingest_id, at=now)
        quarantine = quarantine.persist()
        interactions = interactions.persist()
        meta = {"lakerec.ingest_id": ingest_id, "lakerec.files": len(files)}
        q = delta.write(spark, quarantine, lakehouse, QUARANTINE, mode="overwrite",
                        partition={"origin": "events", "dt": date}, txn=txn, metadata=meta)
        i = delta.write(spark, interactions, lakehouse, INTERACTIONS, mode="overwrite",
                        partition={"dt": date}, txn=txn, metadata=meta, read_version=version,
                        conflict_scope="table")
        reasons = Counter({r["reason"]: r["count"] for r in
                           quarantine.groupBy("reason").count().collect()})
        n_valid = interactions.count()
        n_bad = sum(reasons.values())
    finally:
        for df in (checked, quarantine, interactions):
            if df is not None:
                df.unpersist()
    report = IngestReport(date, ingest_id, rows=n_valid + n_bad, valid=n_valid,
                          quarantined=n_bad, reasons=dict(reasons),
                          versions={"quarantine": q.version, "interactions": i.version})
    log.info("dt=%s: %d rows, %d valid, %d quarantined %s", date, report.rows, n_valid, n_bad,
             dict(reasons) or "")
    return report


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
