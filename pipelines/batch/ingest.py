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
import os
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines.batch import validate
from pipelines.errors import UsageError
from pipelines.storage import delta, landing
from schemas import (
    DEDUP_HORIZON_DAYS,
    EVENT_RULES,
    catalog_json_schema,
    dedup_window,
    event_json_schema,
    field_kinds,
)
from schemas.tables import INTERACTIONS, ITEMS, QUARANTINE

log = logging.getLogger(__name__)

# Input bytes one ingest pass reads at most (``ingest --all`` of a long backlog runs in
# passes): its cached frames then fit the default driver memory instead of spilling.
PASS_BYTES = 256 << 20
# Bump when dedup or catalog semantics change: inputs then count as new and re-ingest. The
# event rules (types, limits) carry their own fingerprint, so a new event type re-validates.
RULES_VERSION = "1"
_EVENT_FIELDS = ("event_id", "user_id", "item_id", "event_type", "value", "ts", "session_id",
                 "source", "request_id")
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
    files: list  # readable by name
    bad: list  # landing.BadFile: unexpected folders, unknown formats
    ingest_id: str
    txn: delta.Txn


def _plan(date: _dt.date, source: str, hashes: landing.ContentHashes | None = None) -> _Input:
    folder = landing.partition_path(source, date)
    if not os.path.isdir(folder):
        raise UsageError(f"no input partition {folder}")
    files, bad = landing.scan_partition(folder, root=source)
    # every file counts, the unreadable too: fixing or removing one re-ingests the date
    fp = landing.fingerprint([*files, *(b.file for b in bad)], RULES_VERSION,
                             EVENT_RULES.fingerprint(), hashes=hashes)
    return _Input(date, files, bad, f"ingest:{date.isoformat()}:{fp[:12]}",
                  delta.Txn(f"lakerec.ingest/dt={date.isoformat()}", int(fp[:15], 16)))


def _file_uri(spark, path: str) -> str:
    """The file's URI as Spark's ``_metadata.file_path`` gives it to the rows read from it
    (Hadoop's ``Path.toUri``: spaces and ``%`` escaped, ``+``, ``,``, non-ASCII kept)."""
    return "file:" + spark.sparkContext._jvm.org.apache.hadoop.fs.Path(
        os.path.abspath(path)).toUri().toString()


def bad_file_rows(spark, bad: list, *, origin: str, ingest_id_of, dt_of, at: _dt.datetime):
    """``quarantine`` rows for unreadable files: one each, ``reason = unreadable_file:<cause>``,
    the file's URI as ``ingest_source``, what was wrong in ``raw``. Cost: one row per file."""
    schema = QUARANTINE.spark_schema()
    rows = [(b.detail, None, b.file.size, b.reason, None, _file_uri(spark, b.file.path),
             ingest_id_of(b), at, origin, dt_of(b)) for b in bad]
    return spark.createDataFrame(rows, schema)


def _forced(df) -> None:
    """Compute every column of ``df`` (a read that fails on some page fails here)."""
    df.agg(F.count(F.lit(1)), F.sum(F.hash(*df.columns))).collect()


def isolate_unreadable(spark, plan: landing.ReadPlan, fields: tuple[str, ...], check,
                       inputs: Mapping[str, landing.InputFile]) -> list[landing.BadFile] | None:
    """The files of ``plan`` whose read (and ``check``) fails in Spark, found by bisection.

    Run after a Spark job over the whole input failed: a file whose footer or header looked
    right can still hold a corrupt page or a truncated compressed stream. A file counts as
    unreadable only when read alone it fails with an error naming it; a failure that names
    no file (an executor lost, memory, a full disk) is not the input's fault, and then this
    returns None. Cost: one small Spark job per probe, ``O(bad files * log(files))`` probes.
    """
    from urllib.parse import unquote

    from pipelines.errors import spark_cause

    def fails(paths) -> str | None:
        groups = (landing.ReadGroup(g.fmt, g.columns, tuple(p for p in g.paths if p in paths))
                  for g in plan.groups)
        sub = landing.ReadPlan(tuple(g for g in groups if g.paths), ())
        try:
            _forced(check(landing.read_raw(spark, sub, fields)))
        except Exception as e:  # noqa: BLE001 - any failure of this read is the files' fault
            return spark_cause(e)
        return None

    files = {p: inputs[p] for g in plan.groups for p in g.paths}
    out: list[landing.BadFile] = []

    class _NotTheFilesError(Exception):
        pass

    def bisect(paths: list[str]) -> None:
        why = fails(set(paths))
        if why is None:
            return
        if len(paths) == 1:
            if os.path.abspath(paths[0]) not in unquote(why):
                raise _NotTheFilesError(why)
            cls = why.split(" ", 1)[0]
            out.append(landing.BadFile(files[paths[0]], _cause_name(cls), why))
            return
        mid = len(paths) // 2
        bisect(paths[:mid])
        bisect(paths[mid:])

    try:
        bisect(sorted(files))
    except _NotTheFilesError as e:
        log.warning("a Spark job failed, but not because of one input file: %s", e)
        return None
    return out or None


def _isolating(spark, plan: landing.ReadPlan, fields: tuple[str, ...], check, run,
               inputs: Mapping[str, landing.InputFile], *, attempts: int = 3):
    """``run(plan)``; when its Spark work fails on a file, quarantine that file
    (:func:`isolate_unreadable`) and run again without it (at most ``attempts`` runs)."""
    for attempt in range(1, attempts + 1):
        try:
            return run(plan)
        except _SparkReadFailedError as e:
            found = isolate_unreadable(spark, plan, fields, check, inputs) \
                if attempt < attempts else None
            if not found:
                raise e.__cause__ from None
            for b in found:
                log.warning("quarantining file %s: %s", b.file.path, b.detail)
            plan = plan.without(found)
    raise AssertionError("unreachable")


def ingest_dates(spark, lakehouse: str, dates: list[_dt.date], *, source: str,
                 now: _dt.datetime | None = None, attempts: int = 3,
                 dedup_horizon_days: int = DEDUP_HORIZON_DAYS) -> list[IngestReport]:
    """Ingest the log partitions ``dt=D`` of ``dates`` under ``source``.

    Dates whose files are unchanged since their last ingest are skipped. The others are
    read in passes of at most :data:`PASS_BYTES` of input (:func:`passes`); a pass's dates
    are validated together and committed together: one commit per table replaces all their
    partitions and records each date's transaction. The result is the same as ingesting
    them one by one, oldest first, except that copies of an event further apart than
    ``dedup_horizon_days`` are caught within one pass (:func:`schemas.dedup_window`).
    Raises :class:`pipelines.runtime.config.UsageError` if a partition does not exist.
    """
    hashes = landing.ContentHashes(lakehouse)
    try:
        plans = [_plan(d, source, hashes) for d in dates]
    finally:
        hashes.close()
    reports = {p.date: IngestReport(p.date, p.ingest_id, skipped=True) for p in plans
               if _already(lakehouse, p.txn, QUARANTINE, INTERACTIONS)}
    for p in plans:
        if p.date in reports:
            log.info("dt=%s already ingested from these files (%s)", p.date, p.ingest_id)
    pending = [p for p in plans if p.date not in reports]
    now = now or _dt.datetime.now(_dt.UTC)
    for chunk in passes(pending, PASS_BYTES):
        reports.update(_ingest_pass(spark, lakehouse, chunk, now, attempts, dedup_horizon_days))
    return [reports[d] for d in dates]


def passes(pending: list, budget: int) -> list[list]:
    """``pending`` dates (oldest first) in consecutive passes of at most ``budget`` bytes of
    input each (a date larger than that is a pass of its own): what one pass caches is then
    bounded by the budget, not by the backlog. Pure, so that it is tested alone."""
    out: list[list] = []
    size = 0
    for p in pending:
        n = sum(f.size for f in p.files)
        if out and size + n <= budget:
            out[-1].append(p)
            size += n
        else:
            out.append([p])
            size = n
    return out


def _ingest_pass(spark, lakehouse: str, pending: list[_Input], now: _dt.datetime,
                 attempts: int, dedup_horizon_days: int) -> dict[_dt.date, IngestReport]:
    """One pass of :func:`ingest_dates`: these dates read, validated and committed together."""
    plan = landing.plan_read([f for p in pending for f in p.files], field_kinds(
        event_json_schema()), EVENT_RULES.required, [b for p in pending for b in p.bad])
    for b in plan.bad:
        log.warning("quarantining file %s: %s (%s)", b.file.path, b.reason, b.detail)

    def run(plan_):
        for attempt in range(1, attempts + 1):
            try:
                return _ingest(spark, lakehouse, pending, plan_, now, dedup_horizon_days)
            except delta.DeltaConflictError as e:
                if attempt == attempts:
                    raise
                log.warning("%s -- recomputing (attempt %d/%d)", e, attempt + 1, attempts)
        raise AssertionError("unreachable")

    # a file that looked right but fails in Spark: found, quarantined, the rest read
    inputs = {f.path: f for p in pending for f in p.files}
    return _isolating(spark, plan, _EVENT_FIELDS, _checker(pending), run, inputs)


class _SparkReadFailedError(Exception):
    """A Spark job over the input failed (the cause is chained)."""


def _is_spark_failure(e: BaseException) -> bool:
    from py4j.protocol import Py4JJavaError
    from pyspark.errors import PySparkException

    return isinstance(e, PySparkException | Py4JJavaError)


def _cause_name(cls: str) -> str:
    """A short reason from an error class: ``FAILED_READ_FILE.NO_HINT`` -> ``failed_read_file``."""
    import re

    name = cls.strip("[]").split(".")[0] if cls.startswith("[") else cls.rsplit(".", 1)[-1]
    return re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")[:64] or "unreadable"


def _checker(pending: list[_Input]):
    """The validation of these dates' lines (``dt``, ``ingest_id`` and the future bound)."""
    # the log partition each line came from: the last dt=YYYY-MM-DD folder of its path
    day = F.regexp_extract("ingest_source", r"^.*/dt=([0-9]{4}-[0-9]{2}-[0-9]{2})/", 1)
    ids = F.create_map(*[x for p in pending for x in (F.lit(p.date.isoformat()),
                                                     F.lit(p.ingest_id))])
    skew = 24 + EVENT_RULES.max_future_skew_hours  # end of the day, plus the allowed skew
    max_ts = F.timestamp_add("HOUR", F.lit(skew), F.col("dt").cast("timestamp"))

    def check(lines):
        lines = lines.withColumn("dt", F.to_date(day)) \
            .withColumn("ingest_id", F.element_at(ids, day))
        return validate.check_events(lines, max_ts=max_ts)
    return check


def ingest_date(spark, lakehouse: str, date: _dt.date, *, source: str,
                now: _dt.datetime | None = None, attempts: int = 3,
                dedup_horizon_days: int = DEDUP_HORIZON_DAYS) -> IngestReport:
    """Ingest one log partition (see :func:`ingest_dates`)."""
    return ingest_dates(spark, lakehouse, [date], source=source, now=now, attempts=attempts,
                        dedup_horizon_days=dedup_horizon_days)[0]


def _ingest(spark, lakehouse: str, pending: list[_Input], plan: landing.ReadPlan,
            now: _dt.datetime, horizon_days: int) -> dict[_dt.date, IngestReport]:
    """Stage both tables' files (every Spark job), then commit quarantine, then interactions.

    Cost: the input, plus the ``event_id`` column of the partitions within the dedup horizon
    of these dates (:func:`schemas.dedup_window`): not the whole table.

    A Spark failure therefore happens before any commit: nothing is half-written, and the
    caller can isolate the file that caused it (:class:`_SparkReadFailedError`).
    """
    dates = [p.date for p in pending]
    of_date = {p.date: p for p in pending}
    snap = delta.ensure_table(lakehouse, INTERACTIONS)
    version = snap.version()
    # the ids already ingested within the horizon of these dates (never the dates themselves)
    lo, hi = (d.isoformat() for d in dedup_window(dates, horizon_days))
    near = sorted({a["partition"]["dt"] for a in delta.add_actions(snap)
                   if lo <= a["partition"]["dt"] <= hi} - {d.isoformat() for d in dates})
    existing = delta.read(spark, lakehouse, INTERACTIONS, version=version,
                          partitions={"dt": near}).select("event_id")
    try:  # reading the footers/headers is Spark work that can fail on a file too
        checked = _checker(pending)(landing.read_raw(spark, plan, _EVENT_FIELDS)).persist()
    except Exception as e:
        if _is_spark_failure(e):
            raise _SparkReadFailedError(str(e)) from e
        raise
    day_of = {f.path: p.date for p in pending for f in (*p.files, *(b.file for b in p.bad))}
    files_bad = bad_file_rows(spark, list(plan.bad), origin="events", at=now,
                              dt_of=lambda b: day_of[b.file.path],
                              ingest_id_of=lambda b: of_date[day_of[b.file.path]].ingest_id)
    interactions = quarantine = None
    staged = []
    try:
        interactions, quarantine = events_to_tables(checked, existing, at=now)
        # one file per day for the (small) quarantine rather than one per task and day
        quarantine = quarantine.unionByName(files_bad).repartition("dt").persist()
        interactions = interactions.persist()
        meta = {"lakerec.ingest_ids": ",".join(p.ingest_id for p in pending),
                "lakerec.files": sum(len(p.files) + len(p.bad) for p in pending),
                "lakerec.files_quarantined": len(plan.bad)}
        txns = [p.txn for p in pending]
        q_snap = delta.ensure_table(lakehouse, QUARANTINE)
        q_part = {"origin": "events", "dt": dates}
        try:
            staged.append(delta.stage(spark, quarantine, lakehouse, QUARANTINE,
                                      partition=q_part))
            staged.append(delta.stage(spark, interactions, lakehouse, INTERACTIONS,
                                      partition={"dt": dates}))
            reasons: dict[_dt.date, Counter] = {d: Counter() for d in dates}
            for r in quarantine.groupBy("dt", "reason").count().collect():
                reasons[r["dt"]][r["reason"]] = r["count"]
            valid = Counter({r["dt"]: r["count"]
                             for r in interactions.groupBy("dt").count().collect()})
        except Exception as e:
            if _is_spark_failure(e):
                raise _SparkReadFailedError(str(e)) from e
            raise
        q = delta.commit(staged[0], snapshot=q_snap, mode="overwrite", partition=q_part,
                         txn=txns, metadata=meta)
        staged.pop(0)
        i = delta.commit(staged[0], snapshot=snap, mode="overwrite", partition={"dt": dates},
                         txn=txns, metadata=meta, conflict_scope="table")
        staged.pop(0)
    finally:
        for s in staged:
            s.discard()
        # dependents first: unpersisting `checked` while plans cached on top of it remain
        # makes Spark re-plan them (CacheManager.recacheByCondition), which spun for minutes
        # after a failed read
        for df in (interactions, quarantine, checked):
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
    hashes = landing.ContentHashes(lakehouse)
    try:
        fp = landing.fingerprint(files, RULES_VERSION, hashes=hashes)
    finally:
        hashes.close()
    ingest_id = f"catalog:{fp[:12]}"
    txn = delta.Txn("lakerec.ingest/catalog", int(fp[:15], 16))
    if _already(lakehouse, txn, ITEMS):
        log.info("catalog already ingested from these files (%s)", ingest_id)
        return IngestReport(None, ingest_id, skipped=True)
    now = now or _dt.datetime.now(_dt.UTC)
    schema = catalog_json_schema()
    plan = landing.plan_read(files, field_kinds(schema), tuple(schema["required"]))
    for b in plan.bad:
        log.warning("quarantining catalog file %s: %s (%s)", b.file.path, b.reason, b.detail)
    inputs = {f.path: f for f in files}
    return _isolating(spark, plan, _CATALOG_FIELDS, validate.check_catalog,
                      lambda p: _ingest_catalog(spark, lakehouse, p, txn, ingest_id, now),
                      inputs)


def _ingest_catalog(spark, lakehouse: str, plan: landing.ReadPlan, txn: delta.Txn,
                    ingest_id: str, now: _dt.datetime) -> IngestReport:
    today = now.date()
    files_bad = bad_file_rows(spark, list(plan.bad), origin="catalog", at=now,
                              dt_of=lambda b: today, ingest_id_of=lambda b: ingest_id)
    try:  # every input is read by the quarantine write, before the first commit
        checked = validate.check_catalog(
            landing.read_raw(spark, plan, _CATALOG_FIELDS)).persist()
    except Exception as e:
        if _is_spark_failure(e):
            raise _SparkReadFailedError(str(e)) from e
        raise
    bad = None
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
            F.lit("catalog").alias("origin"), F.lit(today).alias("dt")) \
            .unionByName(files_bad).persist()
        items = kept.select(*_CATALOG_FIELDS, "ingest_source",
                            F.lit(ingest_id).alias("ingest_id"))
        # appended (one day may see several catalog drops), once per input thanks to the txn
        try:
            q = delta.write(spark, bad, lakehouse, QUARANTINE, txn=txn,
                            metadata={"lakerec.ingest_id": ingest_id})
        except Exception as e:
            if _is_spark_failure(e):
                raise _SparkReadFailedError(str(e)) from e
            raise
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
    finally:
        if bad is not None:  # dependents first (see _ingest)
            bad.unpersist()
        checked.unpersist()
    n_bad = sum(reasons.values())
    log.info("catalog: %d items valid, %d quarantined %s", n_valid, n_bad, dict(reasons) or "")
    return IngestReport(None, ingest_id, rows=n_valid + n_bad, valid=n_valid, quarantined=n_bad,
                        reasons=dict(reasons),
                        versions={"quarantine": q.version, "items": it.version})
