"""Holdout evaluation: every model through the serving path, and the popularity baseline.

A model is judged the way it will be served: each evaluated user's vector is solved from
their training history against the model's item factors with the model's own fold-in rule
(:func:`pipelines.batch.trainers.fold_in_users`; for the model just trained these equal the
trainer's own user factors), then ranked by the serving top-K kernel with the seen filter.
The popularity baseline ranks items by :func:`pipelines.serving.policy.popularity` of the
training pairs, through the same kernel.

Example
-------
>>> evaluate(spark, y=y, item_idx=idx, item_ids=ids, train_hist=hist, relevant=rel,
...          rule=FoldInRule(5.0, 0.05), k=10)                           # doctest: +SKIP
{'precision': 0.03, 'recall': 0.08, 'ndcg': 0.06, 'map': 0.03, 'coverage': 0.4, 'users': 912}
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.batch import metrics, recommend, trainers
from pipelines.model.trainer import FoldInRule
from pipelines.serving import policy


def evaluate(spark, *, y: np.ndarray, item_idx: np.ndarray, item_ids: list[str],
             train_hist: DataFrame, relevant: DataFrame, rule: FoldInRule, k: int) -> dict:
    """Metrics of item factors ``y`` on (training history, held-out relevant items).

    Cost: a fold-in of the evaluated users' histories and one top-K job over them.
    """
    users = relevant.select("user_id").distinct()
    hist = train_hist.join(users, "user_id", "left_semi")
    vecs = trainers.fold_in_users(spark, hist.select("user_id", "item_idx", "r"), y, item_idx,
                                  rule=rule)
    seen = recommend.seen_rows(hist.select("user_id", "item_id"), item_ids, spark)
    recs = recommend.recommend(spark, vecs.join(seen, "user_id", "left"), item_ids, y, k=k)
    return metrics.ranking_metrics(recs, relevant, k=k, catalog_size=len(item_ids))


def evaluate_popularity(spark, *, train_hist: DataFrame, relevant: DataFrame, k: int) -> dict:
    """The popularity baseline: items by their share of the training users.

    Cost: one aggregation of ``train_hist``; the per-item counts (item-sized) come to the
    driver.
    """
    counts = train_hist.groupBy("item_id").agg(F.countDistinct("user_id").alias("users")) \
        .collect()
    n_users = train_hist.select("user_id").distinct().count()
    ids, scores = policy.popularity([r.item_id for r in counts], [r.users for r in counts],
                                    n_users)
    users = relevant.select("user_id").distinct().withColumn(
        "factors", F.array(F.lit(1.0).cast("float")))
    seen = recommend.seen_rows(train_hist.select("user_id", "item_id"), ids, spark)
    recs = recommend.recommend(spark, users.join(seen, "user_id", "left"), ids,
                               scores.reshape(-1, 1), k=k)
    return metrics.ranking_metrics(recs, relevant, k=k, catalog_size=len(ids))
