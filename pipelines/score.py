"""Scoring: top-K for every known user from the champion model, seen items excluded.

* Every user in ``interactions`` is scored. Users with a factor vector get the ALS top-K over the items with factors (``source = als``).
* Users without one (cold, or seen only outside the model's window) get the popularity list,
  and so does any user whose ALS list comes out shorter than K because they have seen nearly
  every item with factors: the list is topped up with the most popular unseen items
  (``source = popular``). So every user gets exactly K rows unless fewer than K recommendable
  items remain unseen.
* "Seen" means any interaction, ever, in ``interactions``; the recommendable catalog is the
  items with factors plus the items with interactions in the popularity window.
* Content-based placement of new items: when the text encoder has a champion with
  embeddings, catalog items the model lacks first get factors mapped from their text
  (:func:`pipelines.embed.place_cold_items`); they compete with the ALS items on the same
  dot-product scale, and the last ``new_item_slots`` places of a list go to the user's best
  placed items (:func:`with_new_item_slots`). Rows that pick them say ``source = content``.

Ties are broken by item id, so a re-run on the same inputs writes the same rows; the write is
skipped entirely when model version, input table versions and K are unchanged.

Example
-------
>>> score(spark, "/lh", k=10)      # doctest: +SKIP
ScoreReport(model_version=3, users=20000, rows=200000, by_source={'als': 199950, ...})
"""

from __future__ import annotations

import datetime as _dt
import logging
from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from pipelines import delta, topk, tracking
from pipelines.train import item_matrix
from schemas.tables import (
    INTERACTIONS,
    ITEM_EMBEDDINGS,
    ITEM_FACTORS,
    RECOMMENDATIONS,
    USER_FACTORS,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScoreReport:
    model_version: int | None
    users: int = 0
    rows: int = 0
    by_source: dict = field(default_factory=dict)
    skipped: bool = False
    version: int | None = None


def popularity_vector(interactions: DataFrame, *, since: _dt.datetime | None) -> DataFrame:
    """``item_id, score``: share of users who touched each item (since ``since``)."""
    ev = interactions if since is None else interactions.where(F.col("ts") >= F.lit(since))
    users = max(1, ev.select("user_id").distinct().count())
    return ev.groupBy("item_id").agg((F.countDistinct("user_id") / users).alias("score"))


def with_new_item_slots(als_recs: DataFrame, new_recs: DataFrame, *, k: int, slots: int
                        ) -> DataFrame:
    """Reserve the last ``slots`` of each top-``k`` for text-placed items.

    ``als_recs`` ranks every item with factors (placed ones included, on equal terms);
    ``new_recs`` holds each user's top ``slots`` placed items. A user's list keeps its first
    ``k - slots`` rows, then those placed items not already among them (``source =
    content``), then fills up from the rest of its own list: a placed item that ranked in
    the head on its own merits leaves its slot to the ALS list. Without the slots a mapped factor -- a conditional
    mean, shrunk like every ridge estimate -- rarely out-scores the popular warm items, and
    new items would never be shown: the slots are the exploration budget that lets them
    collect the interactions the next training needs.
    """
    head = k - min(slots, k)
    rows = (als_recs.withColumn("_pri", F.when(F.col("rank") <= head, 0).otherwise(2))
            .unionByName(new_recs.withColumn("source", F.lit("content"))
                         .withColumn("_pri", F.lit(1))))
    w = Window.partitionBy("user_id", "item_id").orderBy("_pri", "rank")
    w2 = Window.partitionBy("user_id").orderBy("_pri", "rank")
    return (rows.withColumn("_n", F.row_number().over(w)).where(F.col("_n") == 1)
            .withColumn("rank", F.row_number().over(w2)).where(F.col("rank") <= k)
            .drop("_pri", "_n"))


def combine(als_recs: DataFrame, pop_recs: DataFrame, *, k: int) -> DataFrame:
    """ALS rows first, then popular rows not already chosen, renumbered 1..k per user."""
    merged = als_recs.withColumn("_pri", F.lit(0)).unionByName(
        pop_recs.join(als_recs.select("user_id", "item_id"), ["user_id", "item_id"], "left_anti")
        .withColumn("_pri", F.lit(1)))
    w = Window.partitionBy("user_id").orderBy("_pri", "rank")
    return (merged.withColumn("rank", F.row_number().over(w)).where(F.col("rank") <= k)
            .drop("_pri"))


def score(spark, lakehouse: str, *, k: int = 10, model_version: int | None = None,
          popularity_days: int | None = None, content_reg: float = 1.0,
          place_new_items: bool = True, new_item_slots: int = 1,
          now: _dt.datetime | None = None) -> ScoreReport:
    """Write ``recommendations`` for every user in ``interactions`` (atomic full replace)."""
    now = now or _dt.datetime.now(_dt.UTC)
    ref = tracking.get_version(lakehouse, model_version) if model_version is not None \
        else tracking.get_alias(lakehouse)
    version = ref.version if ref else None
    if ref is not None and place_new_items:
        enc = tracking.get_alias(lakehouse, name=tracking.ENCODER_MODEL)
        if enc is not None and delta.exists(lakehouse, ITEM_EMBEDDINGS):
            from pipelines.embed import place_cold_items

            place_cold_items(spark, lakehouse, model_version=version,
                             encoder_version=enc.version, reg=content_reg)
    inputs = {t.name: delta.latest_version(lakehouse, t)
              for t in (INTERACTIONS, USER_FACTORS, ITEM_FACTORS)}
    txn = delta.Txn.of_content("lakerec.score", version, k, popularity_days, new_item_slots,
                               *sorted(inputs.items()))
    if delta.exists(lakehouse, RECOMMENDATIONS) and delta.open_table(
            lakehouse, RECOMMENDATIONS).transaction_version(txn.app_id) == txn.version:
        log.info("recommendations already computed from these inputs; nothing to do")
        return ScoreReport(version, skipped=True)

    interactions = delta.read(spark, lakehouse, INTERACTIONS, version=inputs["interactions"])
    seen_pairs = interactions.select("user_id", "item_id").distinct().persist()
    users = seen_pairs.select("user_id").distinct()
    cached = [seen_pairs]
    try:
        days = popularity_days or (int(ref.params.get("window_days", 30)) if ref else 30)
        latest = interactions.agg(F.max("ts")).first()[0]
        since = None if latest is None else latest - _dt.timedelta(days=days)
        pop = popularity_vector(interactions, since=since)

        recs_als = spark.createDataFrame([], topk.OUTPUT_SCHEMA)
        item_ids: list[str] = []
        if ref is not None:
            factors = delta.read(spark, lakehouse, ITEM_FACTORS,
                                 partitions={"model_version": [version]})
            y, _, item_ids = item_matrix(factors)
            vecs = delta.read(spark, lakehouse, USER_FACTORS,
                              partitions={"model_version": [version]}).select("user_id",
                                                                              "factors")
            seen = topk.seen_rows(seen_pairs, item_ids, spark)
            recs_als = topk.recommend(spark, vecs.join(seen, "user_id", "left"), item_ids, y,
                                      k=k).withColumn("source", F.lit("als"))
            content = factors.where(F.col("source") == "content")
            if not content.isEmpty():
                if new_item_slots:
                    c_y, _, c_ids = item_matrix(content)
                    c_seen = topk.seen_rows(seen_pairs, c_ids, spark)
                    recs_new = topk.recommend(spark, vecs.join(c_seen, "user_id", "left"),
                                              c_ids, c_y, k=min(new_item_slots, k))
                    recs_als = with_new_item_slots(recs_als, recs_new, k=k,
                                                   slots=new_item_slots)
                # placed items that ranked on their own merits are content rows too
                placed = content.select("item_id", F.lit(True).alias("_placed"))
                recs_als = (recs_als.join(F.broadcast(placed), "item_id", "left")
                            .withColumn("source", F.when(F.col("_placed"), F.lit("content"))
                                        .otherwise(F.col("source"))).drop("_placed"))
            recs_als = recs_als.persist()
            cached.append(recs_als)

        # popularity for users short of k: seen items and their ALS picks excluded
        counts = recs_als.groupBy("user_id").count()
        short = users.join(counts.where(F.col("count") >= k), "user_id", "left_anti")
        pop_rows = pop.orderBy("item_id").collect()
        pop_ids = [r.item_id for r in pop_rows]
        excluded = seen_pairs.unionByName(recs_als.select("user_id", "item_id")) \
            .join(short, "user_id", "left_semi")
        pop_users = short.withColumn("factors", F.array(F.lit(1.0).cast("float"))).join(
            topk.seen_rows(excluded, pop_ids, spark), "user_id", "left")
        recs_pop = topk.recommend(spark, pop_users, pop_ids,
                                  np.array([[r.score] for r in pop_rows], np.float32), k=k) \
            .withColumn("source", F.lit("popular"))
        recs = combine(recs_als, recs_pop, k=k).select(
            "user_id", "rank", "item_id", "score", "source",
            F.lit(version).cast("long").alias("model_version"),
            F.lit(now).cast("timestamp").alias("generated_at")).persist()
        cached.append(recs)
        res = delta.write(spark, recs, lakehouse, RECOMMENDATIONS, mode="overwrite", txn=txn,
                          metadata={"lakerec.model_version": version,
                                    **{f"lakerec.input.{t}": v for t, v in inputs.items()}})
        by_source = {r["source"]: r["count"] for r in recs.groupBy("source").count().collect()}
        n_users = recs.select("user_id").distinct().count()
        report = ScoreReport(version, n_users, sum(by_source.values()), by_source,
                             version=res.version)
        log.info("recommendations v%s: %d users, %d rows %s (model v%s)", res.version, n_users,
                 report.rows, by_source, version)
        return report
    finally:
        for df in cached:
            df.unpersist()
