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

from dataclasses import dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.batch import metrics, recommend, trainers
from pipelines.model import gate
from pipelines.model.trainer import FoldInRule
from pipelines.serving import policy


@dataclass(frozen=True)
class Scores:
    """A model's holdout metrics and its per-user metrics (users sorted by id), for pairing
    and for intervals."""

    metrics: dict
    users: np.ndarray = field(repr=False)
    per_user: dict = field(repr=False)  # metric -> (n,) float64, in the order of ``users``

    def __getitem__(self, name):
        return self.metrics[name]

    @property
    def ndcg(self) -> np.ndarray:
        return self.per_user["ndcg"]

    def intervals(self, level: float = 0.95) -> dict[str, tuple[float, float]]:
        """The bootstrap interval of each per-user mean (:func:`gate.mean_interval`)."""
        return {m: gate.mean_interval(v, level=level) for m, v in self.per_user.items()}


def _summarise(per_user, covered: int, catalog_size: int) -> dict[str, float]:
    """:func:`ranking_metrics`' dict from collected per-user rows (a pandas frame) and the
    number of distinct items listed."""
    n = len(per_user)
    out = {c: float(per_user[c].mean()) if n else 0.0
           for c in ("precision", "recall", "ndcg", "map")}
    out["coverage"] = covered / catalog_size if catalog_size else 0.0
    out["users"] = n
    return out


def _scores(recs: DataFrame, relevant: DataFrame, k: int, catalog_size: int) -> Scores:
    """Collect the per-user metrics (bounded: the evaluated users are a capped sample)."""
    per_user = metrics.per_user_metrics(recs, relevant, k=k).toPandas() \
        .sort_values("user_id", kind="stable").reset_index(drop=True)
    covered = recs.where(F.col("rank") <= k).select("item_id").distinct().count()
    cols = ("precision", "recall", "ndcg", "map")
    return Scores(_summarise(per_user, covered, catalog_size), per_user["user_id"].to_numpy(),
                  {c: per_user[c].to_numpy(np.float64) for c in cols})


def evaluate(spark, *, y: np.ndarray, item_idx: np.ndarray, item_ids: list[str],
             train_hist: DataFrame, relevant: DataFrame, rule: FoldInRule, k: int) -> Scores:
    """Metrics of item factors ``y`` on (training history, held-out relevant items).

    Cost: a fold-in of the evaluated users' histories and one top-K job over them; the
    per-user metrics (evaluated-user-sized) come to the driver.
    """
    users = relevant.select("user_id").distinct()
    hist = train_hist.join(users, "user_id", "left_semi")
    vecs = trainers.fold_in_users(spark, hist.select("user_id", "item_idx", "r"), y, item_idx,
                                  rule=rule)
    seen = recommend.seen_rows(hist.select("user_id", "item_id"), item_ids, spark)
    recs = recommend.recommend(spark, vecs.join(seen, "user_id", "left"), item_ids, y, k=k)
    return _scores(recs, relevant, k, len(item_ids))


def evaluate_popularity(spark, *, train_hist: DataFrame, relevant: DataFrame, k: int,
                        counted: DataFrame | None = None) -> Scores:
    """The popularity baseline: items by their share of the users of ``counted``
    (``user_id, item_id`` pairs, e.g. a recent part of the training span; default the
    training pairs), seen items (``train_hist``) filtered.

    Cost: one aggregation of ``counted``; the per-item counts (item-sized) come to the
    driver.
    """
    counted = train_hist if counted is None else counted
    counts = counted.groupBy("item_id").agg(F.countDistinct("user_id").alias("users")) \
        .collect()
    n_users = counted.select("user_id").distinct().count()
    ids, scores = policy.popularity([r.item_id for r in counts], [r.users for r in counts],
                                    n_users)
    users = relevant.select("user_id").distinct().withColumn(
        "factors", F.array(F.lit(1.0).cast("float")))
    seen = recommend.seen_rows(train_hist.select("user_id", "item_id"), ids, spark)
    recs = recommend.recommend(spark, users.join(seen, "user_id", "left"), ids,
                               scores.reshape(-1, 1), k=k)
    return _scores(recs, relevant, k, len(ids))
