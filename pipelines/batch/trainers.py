"""Model families behind the trainer seam (:mod:`pipelines.model.trainer`), and the Spark side
of fold-in.

* :func:`confidence` -- events -> ``r_ui`` per user-item pair, in Spark, by the rule of
  :mod:`schemas.events` (:func:`schemas.events.event_r` is its numpy twin);
* :class:`SparkALS` -- Spark ML's implicit ALS: ``fit`` returns the item factors and the
  ALS-WR fold-in rule (``lambda n_u``);
* :func:`fold_in_users` -- every user of a history solved against fixed item factors on the
  executors, with the one solver :func:`pipelines.model.als.fold_in_many`.

Example
-------
>>> r = confidence(events, weights={"view": 1.0, "purchase": 8.0})     # doctest: +SKIP
>>> model = get("als").fit(spark, pairs, ModelCard(rank=64))          # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.model import als
from pipelines.model.card import ModelCard
from pipelines.model.trainer import FoldInRule, TrainedModel, Trainer
from schemas import events as event_types


def confidence(events: DataFrame, *, weights: Mapping[str, float],
               user_col: str = "user_id", item_col: str = "item_id",
               half_life_days: float = 0.0, ref=None) -> DataFrame:
    """``user, item, r`` with ``r_ui = sum_e r_e`` (:mod:`schemas.events`); pairs whose sum is
    not positive carry no preference and are dropped.

    ``half_life_days > 0`` weighs each event by ``2^(-age / half_life_days)``, its age in days
    before ``ref`` (a datetime: the end of the training span): recent events count more.
    Only the pairs a model is fitted on decay; users are folded in from their plain history
    (the stream keeps no event times per pair), so batch and stream vectors agree.

    Cost: one aggregation over ``events`` (a shuffle by pair).
    """
    w = F.lit(0.0)
    for t, v in weights.items():
        w = F.when(F.col("event_type") == t, F.lit(float(v))).otherwise(w)
    for t in event_types.valued_types():
        w = F.when(F.col("event_type") == t.name, F.col("value")).otherwise(w)
    if half_life_days > 0:
        if ref is None:
            raise ValueError("a decaying confidence needs its reference time")
        age = (F.lit(ref).cast("double") - F.col("ts").cast("double")) / 86400.0
        w = w * F.pow(F.lit(2.0), -age / F.lit(float(half_life_days)))
    return (events.groupBy(user_col, item_col).agg(F.sum(w).alias("r"))
            .where(F.col("r") > 0))


class SparkALS:
    """Spark ML ``ALS(implicitPrefs=True)``: the first :class:`~pipelines.model.trainer.Trainer`."""

    name = "als"

    def fold_in_rule(self, card: ModelCard) -> FoldInRule:
        # Spark scales lambda by the row's number of observed entries (ALS-WR)
        return FoldInRule(alpha=card.alpha, reg=card.reg, reg_per_entry=True)

    def fit(self, spark, pairs: DataFrame, card: ModelCard, *, checkpoint_interval: int = 5,
            num_blocks: int | None = None) -> TrainedModel:
        """Train on ``(user_idx, item_idx, r)``. Needs a SparkContext checkpoint directory:
        without one, long lineages across iterations overflow the stack.

        Cost: ``max_iter`` distributed iterations; the item factors (items x rank floats)
        come to the driver.
        """
        from pyspark.ml.recommendation import ALS

        est = ALS(rank=card.rank, maxIter=card.max_iter, regParam=card.reg, alpha=card.alpha,
                  implicitPrefs=True, userCol="user_idx", itemCol="item_idx", ratingCol="r",
                  seed=card.seed, nonnegative=False, checkpointInterval=checkpoint_interval,
                  coldStartStrategy="drop", intermediateStorageLevel="MEMORY_AND_DISK")
        if num_blocks:
            est = est.setNumUserBlocks(num_blocks).setNumItemBlocks(num_blocks)
        model = est.fit(pairs.select("user_idx", "item_idx", F.col("r").cast("float")))
        rows = sorted(model.itemFactors.collect(), key=lambda r: r.id)
        idx = np.array([r.id for r in rows], dtype=np.int64)
        y = np.array([r.features for r in rows], dtype=np.float32).reshape(len(rows), card.rank)
        return TrainedModel(idx, y, self.fold_in_rule(card), native=model)

    def log_model(self, model: TrainedModel, card: ModelCard):
        import mlflow
        import mlflow.spark
        import pyspark
        from mlflow.models import Model, ModelSignature
        from mlflow.types import ColSpec, Schema

        from pipelines.storage import tracking

        # what ALSModel.transform takes and adds: the pairs to score, their predicted scores
        signature = ModelSignature(
            inputs=Schema([ColSpec("integer", "user_idx"), ColSpec("integer", "item_idx")]),
            outputs=Schema([ColSpec("float", "prediction")]))
        # Model.log, not mlflow.spark.log_model: the latter takes the legacy path for a local
        # artifact store (no logged model, no model id); this one is MLflow 3's
        with tracking.registry_notes():
            return Model.log(artifact_path=None, name="model", flavor=mlflow.spark,
                             spark_model=model.native, signature=signature,
                             registered_model_name=tracking.ALS_MODEL,
                             pip_requirements=[f"pyspark=={pyspark.__version__}"])


def item_gram(spark, pairs: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(item_idx of the items of ``pairs``, sorted; ``G = XᵀX`` of the binary user x item
    matrix over them, float64).

    Cost: each partition of ``pairs`` (``user_idx, item_idx``), grouped by user, builds its
    rows of ``X`` as a scipy CSR block and its ``n x n`` part of ``G`` (co-occurrence
    counts); the blocks are summed by ``treeReduce`` (``n²`` floats per partition move).
    Nothing user-sized reaches the driver; the item-sized index does.
    """
    items = np.array(sorted(r[0] for r in pairs.select("item_idx").distinct().collect()),
                     np.int64)
    n = items.size
    bc = spark.sparkContext.broadcast(items)
    tasks = max(1, spark.sparkContext.defaultParallelism)

    def block(rows):
        import scipy.sparse as sp

        u, i = [], []
        for row in rows:
            u.append(row[0])
            i.append(row[1])
        if not u:
            return [np.zeros((n, n))]
        codes, users = np.unique(np.asarray(u, np.int64), return_inverse=True)
        cols = np.searchsorted(bc.value, np.asarray(i, np.int64))
        x = sp.csr_matrix((np.ones(len(cols)), (users, cols)), shape=(codes.size, n))
        x.data[:] = 1.0  # binary: a duplicated pair counts once
        return [(x.T @ x).toarray()]

    distinct = pairs.select("user_idx", "item_idx").distinct().repartition(tasks, "user_idx")
    g = distinct.rdd.mapPartitions(block).treeReduce(np.add, depth=2)
    return items, g


class SparkEASE:
    """EASE (:mod:`pipelines.model.ease`): the Gram matrix in Spark, one solve on the driver."""

    name = "ease"

    def fold_in_rule(self, card: ModelCard) -> FoldInRule:
        return FoldInRule(alpha=1.0, reg=0.0, reg_per_entry=False, kind="history")

    def fit(self, spark, pairs: DataFrame, card: ModelCard) -> TrainedModel:
        """Train on ``(user_idx, item_idx, r)`` (binary: any positive ``r`` is a 1).

        Cost: :func:`item_gram` plus :func:`pipelines.model.ease.item_vectors` on the driver
        (``O(n³)`` for ``n`` items; the caller keeps ``n <= card.ease_max_items``).
        """
        from pipelines.model import ease

        idx, g = item_gram(spark, pairs.where(F.col("r") > 0))
        y = ease.item_vectors(g, lam=card.ease_lambda, rank=card.ease_rank)
        return TrainedModel(idx, y, self.fold_in_rule(card),
                            native={"item_idx": idx, "y": y, "lambda": card.ease_lambda})

    def log_model(self, model: TrainedModel, card: ModelCard):
        """Log the factors as an MLflow pyfunc (:mod:`pipelines.model.ease_pyfunc`) and
        register it under the one recommender name, so the champion alias covers both."""
        import os
        import tempfile

        import mlflow

        from pipelines.model.ease_pyfunc import EaseRecommender
        from pipelines.storage import tracking

        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "factors.npz")
            np.savez(path, item_idx=model.item_idx, y=model.y)
            from mlflow.models import ModelSignature
            from mlflow.types.schema import Array, ColSpec, DataType, Schema

            # a user's touched item_idx in, their top-k unseen item_idx out
            signature = ModelSignature(
                inputs=Schema([ColSpec(Array(DataType.long), "items")]),
                outputs=Schema([ColSpec(Array(DataType.long))]))
            with tracking.registry_notes():
                return mlflow.pyfunc.log_model(
                    name="model", python_model=EaseRecommender(k=card.k),
                    artifacts={"factors": path}, registered_model_name=tracking.ALS_MODEL,
                    signature=signature, pip_requirements=["numpy", "scipy"])


TRAINERS: dict[str, Trainer] = {t.name: t for t in (SparkALS(), SparkEASE())}


def get(name: str) -> Trainer:
    """The trainer called ``name`` (a model card's ``trainer``)."""
    try:
        return TRAINERS[name]
    except KeyError:
        raise ValueError(f"unknown trainer {name!r} (known: {', '.join(TRAINERS)})") from None


def fold_in_users(spark, history: DataFrame, item_factors: np.ndarray, item_row: np.ndarray, *,
                  rule: FoldInRule) -> DataFrame:
    """Solve every user of ``history`` (``user_id, item_idx, r``) against fixed item factors.

    ``item_factors[j]`` is the vector of item ``item_row[j]`` (an item_idx). Items without a
    vector are ignored, and a user left with no positive weight gets no row (no vector: the
    serving policy gives such users the popular list). Returns ``user_id, factors``.

    Cost: one shuffle grouping ``history`` by user; the factors are broadcast once and each
    Arrow batch's users are solved by :func:`pipelines.model.als.fold_in_many`.
    """
    y = np.ascontiguousarray(item_factors, dtype=np.float32)
    lookup = np.full(int(np.max(item_row, initial=-1)) + 2, -1, np.int64)
    lookup[np.asarray(item_row, np.int64)] = np.arange(len(item_row))
    bc = spark.sparkContext.broadcast((y, als.gram(y), lookup))
    grouped = history.groupBy("user_id").agg(
        F.collect_list("item_idx").alias("items"), F.collect_list("r").alias("rs"))

    def solve(batches):
        import pandas as pd

        y_, yty_, lookup_ = bc.value
        for pdf in batches:
            n = len(pdf)
            lens = pdf["items"].map(len).to_numpy(np.int64)
            codes = np.repeat(np.arange(n), lens)
            items = np.concatenate([np.asarray(v, np.int64) for v in pdf["items"]]) \
                if n else np.zeros(0, np.int64)
            rs = np.concatenate([np.asarray(v, np.float64) for v in pdf["rs"]]) \
                if n else np.zeros(0)
            inside = items < len(lookup_) - 1
            rows = np.where(inside, lookup_[np.where(inside, items, len(lookup_) - 1)], -1)
            keep = (rows >= 0) & (rs > 0)
            users, x = als.fold_in_many(y_, yty_, codes[keep], rows[keep], rule.c1(rs[keep]),
                                        n, rule=rule)
            yield pd.DataFrame({"user_id": pdf["user_id"].to_numpy()[users],
                                "factors": list(x)})

    return grouped.mapInPandas(solve, "user_id string, factors array<float>")
