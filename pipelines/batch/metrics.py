"""Ranking metrics at K, computed in Spark over (recommendations, relevant items).

For a user ``u`` with relevant set ``R_u`` (``|R_u| >= 1``) and recommended list
``L_u = (l_1, ..., l_K)`` (possibly shorter), with ``rel_j = 1 if l_j in R_u``:

* ``precision@K = (sum_j rel_j) / K``
* ``recall@K    = (sum_j rel_j) / |R_u|``
* ``NDCG@K      = DCG / IDCG`` with ``DCG = sum_j rel_j / log2(j + 1)`` and
  ``IDCG = sum_{j=1..min(K, |R_u|)} 1 / log2(j + 1)``
* ``MAP@K``: ``AP@K = (1 / min(K, |R_u|)) sum_j rel_j * precision@j``
* ``coverage@K = |union_u L_u| / |catalog|`` (a catalog-level number, not averaged)

The first four are averaged over the users that have relevant items; a user with no
recommendation scores 0. These are the definitions of Spark's ``RankingEvaluator``
(``precisionAtK``, ``recallAtK``, ``ndcgAtK``, ``meanAveragePrecisionAtK``), which the tests use
as a cross-check along with a pure-numpy reference.

Example
-------
>>> ranking_metrics(recs, relevant, k=10, catalog_size=5000)   # doctest: +SKIP
{'precision': 0.031, 'recall': 0.082, 'ndcg': 0.061, 'map': 0.029, 'coverage': 0.41, 'users': 9120}
"""

from __future__ import annotations

import math

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

METRICS = ("precision", "recall", "ndcg", "map", "coverage")


def per_user_metrics(recs: DataFrame, relevant: DataFrame, *, k: int) -> DataFrame:
    """``user_id, precision, recall, ndcg, map`` at ``k`` for every user of ``relevant``
    (0 for a user without recommendations): the rows :func:`ranking_metrics` averages, and
    what the promotion gate pairs between two models.

    Parameters
    ----------
    recs : DataFrame
        ``user_id, rank, item_id`` (rank 1 = best); ranks above ``k`` are ignored.
    relevant : DataFrame
        ``user_id, item_id``: the held-out items of each evaluated user.

    Cost: a join of the top-``k`` rows with the relevant pairs and a window over each user's
    hits (shuffles by user).
    """
    recs = recs.where(F.col("rank") <= k).select("user_id", "rank", "item_id")
    rel = relevant.select("user_id", "item_id").distinct()
    n_rel = rel.groupBy("user_id").agg(F.count("*").alias("n_rel"))
    hits = recs.join(rel.withColumn("hit", F.lit(1)), ["user_id", "item_id"], "inner")
    # precision@j at each hit = (hits at ranks <= j) / j
    w = Window.partitionBy("user_id").orderBy("rank") \
        .rowsBetween(Window.unboundedPreceding, Window.currentRow)
    hits = hits.withColumn("hits_so_far", F.count("*").over(w))
    per_hit = hits.groupBy("user_id").agg(
        F.count("*").alias("hits"),
        F.sum(1.0 / F.log2(F.col("rank") + 1)).alias("dcg"),
        F.sum(F.col("hits_so_far") / F.col("rank")).alias("ap_sum"),
    )
    idcg_table = [sum(1.0 / math.log2(j + 1) for j in range(1, m + 1)) for m in range(1, k + 1)]
    idcg = F.element_at(F.array(*[F.lit(v) for v in idcg_table]),
                        F.least(F.col("n_rel"), F.lit(k)).cast("int"))
    per_user = n_rel.join(per_hit, "user_id", "left").fillna(0, ["hits", "dcg", "ap_sum"])
    return per_user.select(
        "user_id",
        (F.col("hits") / k).alias("precision"),
        (F.col("hits") / F.col("n_rel")).alias("recall"),
        (F.col("dcg") / idcg).alias("ndcg"),
        (F.col("ap_sum") / F.least(F.col("n_rel"), F.lit(k))).alias("map"),
    )


def ranking_metrics(recs: DataFrame, relevant: DataFrame, *, k: int,
                    catalog_size: int) -> dict[str, float]:
    """Mean precision/recall/NDCG/MAP@k over users of ``relevant``, and coverage@k.

    Parameters are those of :func:`per_user_metrics`; ``catalog_size`` is the denominator of
    coverage.
    """
    per_user = per_user_metrics(recs, relevant, k=k)
    row = per_user.agg(*[F.avg(c).alias(c) for c in ("precision", "recall", "ndcg", "map")],
                       F.count("*").alias("users")).first()
    covered = recs.where(F.col("rank") <= k).select("item_id").distinct().count()
    out = {c: float(row[c] or 0.0) for c in ("precision", "recall", "ndcg", "map")}
    out["coverage"] = covered / catalog_size if catalog_size else 0.0
    out["users"] = int(row["users"])
    return out

