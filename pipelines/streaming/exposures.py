"""Landing exposures: one micro-batch of the ``exposures`` topic -> the ``exposures`` table.

Each record holds a batch of exposures (:mod:`schemas.exposures`); each exposure becomes one
row per list position. A record that does not parse, and an exposure that lacks an id, a
user, a known route, a time or items, go to ``quarantine`` (origin ``exposures``) with the
reason (an exposure's ``ingest_source`` is its record's, ``#`` its index in the batch). Exactly once as the feedback stream is: offsets in the
checkpoint, and both commits carry the transaction ``(lakerec.stream/<query>, batch)``, so a
replayed batch is skipped. Cost per batch: its records (parsed by Spark, written by Arrow).
"""

from __future__ import annotations

import datetime as _dt
import logging
import time

from pipelines.storage import delta
from pipelines.streaming.checkpoint import app_id
from pipelines.streaming.microbatch import BatchReport, StreamContext
from schemas import exposures as message
from schemas.tables import EXPOSURES, QUARANTINE

log = logging.getLogger(__name__)


def _checked(df):
    """Spark: one row per exposure (or per unreadable record) with ``reason`` (NULL =
    valid) and the parsed exposure ``m``."""
    from pyspark.sql import functions as F

    source = F.concat(F.lit("kafka://"), "topic", F.lit("/"), F.col("partition").cast("string"),
                      F.lit("/"), F.col("offset").cast("string"))
    recs = (df.select(F.col("value").cast("string").alias("raw"),
                      F.length("value").cast("long").alias("raw_size"),
                      source.alias("ingest_source"))
            .withColumn("env", F.from_json(F.col("raw"), message.envelope_ddl())))
    record_reason = (F.when(F.try_parse_json(F.col("raw")).isNull(), F.lit("not_json"))
                     .when(F.col("env.exposures").isNull(), F.lit("bad_field:exposures")))
    recs = recs.withColumn("record_reason", record_reason)
    bad_records = recs.where(F.col("record_reason").isNotNull()).select(
        "raw", "raw_size", "ingest_source", F.lit(None).cast(message.ddl()).alias("m"),
        F.col("record_reason").alias("reason"))
    exposures = recs.where(F.col("record_reason").isNull()).select(
        "ingest_source", F.posexplode("env.exposures").alias("idx", "m")).select(
        F.to_json("m").alias("raw"), F.length(F.to_json("m")).cast("long").alias("raw_size"),
        F.concat("ingest_source", F.lit("#"), F.col("idx").cast("string")).alias(
            "ingest_source"), "m")
    served = F.try_to_timestamp(F.col("m.served_at"))
    id_ok = lambda c: c.isNotNull() & (F.length(c) >= 1) & (F.length(c) <= 128)  # noqa: E731
    items_ok = F.forall("m.items", lambda i: id_ok(i["item_id"]) & (i["position"] >= 1)
                        & i["source"].isNotNull())
    reason = (F.when(F.col("m").isNull(), F.lit("bad_field:exposures"))
              .when(~id_ok(F.col("m.request_id")), F.lit("bad_field:request_id"))
              .when(~id_ok(F.col("m.user_id")), F.lit("bad_field:user_id"))
              .when(~F.col("m.route").isin(*message.ROUTES), F.lit("bad_field:route"))
              .when(served.isNull(), F.lit("bad_field:served_at"))
              .when(F.col("m.items").isNull() | (F.size("m.items") == 0) | ~items_ok,
                    F.lit("bad_field:items")))
    return exposures.withColumn("reason", reason).unionByName(bad_records).withColumn(
        "served_at", served)


def land(ctx: StreamContext, df, batch_id: int) -> BatchReport:
    """Write one batch of exposure messages (see the module docstring)."""
    import pyarrow as pa
    from pyspark.sql import functions as F

    t0 = time.perf_counter()
    rep = BatchReport(int(batch_id))
    txn = delta.Txn.batch(app_id(ctx.query), int(batch_id))
    ingest_id = f"stream:{ctx.query}:{batch_id}"
    now = _dt.datetime.now(_dt.UTC)
    checked = _checked(df).persist()
    try:
        rows = checked.where(F.col("reason").isNull()).select(
            F.col("m.request_id").alias("request_id"), F.col("m.user_id").alias("user_id"),
            F.explode("m.items").alias("i"), F.col("m.model_version").alias("model_version"),
            F.col("m.variant").alias("variant"), F.col("m.route").alias("route"),
            "served_at", "ingest_source").select(
            "request_id", "user_id", F.col("i.position").alias("position"),
            F.col("i.item_id").alias("item_id"), F.col("i.source").alias("source"),
            "model_version", "variant", "route", "served_at", "ingest_source",
            F.lit(ingest_id).alias("ingest_id"),
            F.to_date(F.col("served_at")).alias("dt")).toArrow()
        bad = checked.where(F.col("reason").isNotNull()).select(
            "raw", "raw_size", "reason", "ingest_source").toArrow()
    finally:
        checked.unpersist()
    # the batch's Kafka records, from what was parsed (a second read of the source would
    # fetch the offsets again): an exposure's source is its record's plus "#index"
    rep.records = len({s.split("#", 1)[0] for s in
                       (*rows["ingest_source"].to_pylist(), *bad["ingest_source"].to_pylist())})
    rep.quarantined = bad.num_rows
    rep.valid = rows.num_rows and len(set(rows["request_id"].to_pylist()))
    meta = {"lakerec.ingest_id": ingest_id}
    if bad.num_rows:
        n = bad.num_rows
        quar = pa.table({
            "raw": bad["raw"], "raw_bytes": pa.nulls(n, pa.binary()), "raw_size": bad["raw_size"],
            "reason": bad["reason"], "event_id": pa.nulls(n, pa.string()),
            "ingest_source": bad["ingest_source"], "ingest_id": [ingest_id] * n,
            "quarantined_at": pa.array([now] * n, pa.timestamp("us", "UTC")),
            "origin": ["exposures"] * n, "dt": pa.array([now.date()] * n, pa.date32())})
        dt = delta.ensure_table(ctx.lakehouse, QUARANTINE)
        if not txn.done_in(dt):
            delta.append_arrow(ctx.lakehouse, QUARANTINE, quar.cast(QUARANTINE.arrow_schema()),
                               txn=txn, metadata=meta, snapshot=dt)
    if rows.num_rows:
        dt = delta.ensure_table(ctx.lakehouse, EXPOSURES)
        if txn.done_in(dt):
            rep.skipped.append(EXPOSURES.name)
        else:
            delta.append_arrow(ctx.lakehouse, EXPOSURES, rows.cast(EXPOSURES.arrow_schema()),
                               txn=txn, metadata=meta, snapshot=dt)
    rep.users = rows.num_rows  # positions landed
    rep.seconds = round(time.perf_counter() - t0, 3)
    log.info("exposures batch %d: %d records, %d exposures (%d positions) landed, "
             "%d quarantined in %.2f s%s",
             batch_id, rep.records, rep.valid, rows.num_rows, rep.quarantined, rep.seconds,
             f"; already committed: {rep.skipped}" if rep.skipped else "")
    return rep
