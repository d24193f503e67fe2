"""Scoring: every user's list from the champion, by the one list policy.

* Every user in ``interactions`` gets a list by :func:`pipelines.serving.policy.recommend`,
  run inside a ``mapInArrow`` function on the executors with the :class:`ServingModel`
  broadcast once. The stream's refresh calls the same function, so a user's batch list and
  stream list cannot drift apart (a test holds them equal).
* Model rows come from the user's served vector (``user_factors`` of the model version,
  ``source = als``); users without one, and lists left short, are topped up from popularity
  (``source = popular``); items placed from their text (``item_placements``, written by
  ``lakerec place``) compete on the same scale and hold the new-item slots (``source =
  content``). ``score`` only reads the model: it writes nothing but ``recommendations``.
* "Seen" means any interaction, ever, in ``interactions``.

Ties are broken by item id, so a re-run on the same inputs writes the same rows; the write is
skipped entirely when model version, input table versions and settings are unchanged.

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
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.batch import recommend, trainers
from pipelines.model.card import DEFAULTS, ModelCard
from pipelines.serving import policy
from pipelines.serving.model import ServingModel
from pipelines.storage import delta, tracking
from schemas.tables import (
    INTERACTIONS,
    ITEM_FACTORS,
    ITEM_PLACEMENTS,
    LIST_LENGTH_KEY,
    MODEL_VERSION_KEY,
    RECOMMENDATIONS,
    USER_FACTORS,
)

log = logging.getLogger(__name__)
LIST_SCHEMA = "user_id string, rank int, item_id string, score float, source string"


@dataclass(frozen=True)
class ScoreReport:
    model_version: int | None
    users: int = 0
    rows: int = 0
    by_source: dict = field(default_factory=dict)
    skipped: bool = False
    version: int | None = None


def _arrow_rows(lakehouse: str, spec, columns: list[str], model_version: int, *,
                version: int | None = None, trained_only: bool = False):
    import pyarrow.compute as pc

    if not delta.exists(lakehouse, spec):
        return None
    flt = pc.field("model_version") == model_version
    if trained_only:  # lakehouses of before `place` also hold placed rows (source = content)
        flt = flt & pc.field("source").isin(list(policy.TRAINED_SOURCES))
    return delta.arrow_dataset(lakehouse, spec, version).to_table(columns=columns, filter=flt)


def popularity_counts(spark, lakehouse: str, window: policy.PopularityWindow, *,
                      version: int | None = None) -> tuple[list[str], list[int], int]:
    """(item ids, distinct users per item, distinct users) of ``interactions`` in ``window``.

    Cost: one Spark aggregation over the window's events; item-sized result to the driver.
    """
    if not delta.exists(lakehouse, INTERACTIONS):
        return [], [], 0
    ev = delta.read(spark, lakehouse, INTERACTIONS, version=version)
    if window.start is not None:
        ev = ev.where(F.col("ts") >= F.lit(window.start))
    if window.end is not None:
        ev = ev.where(F.col("ts") < F.lit(window.end))
    if window.max_dt is not None:
        ev = ev.where(F.col("dt") <= F.lit(window.max_dt))
    ev = ev.select("user_id", "item_id").persist()
    try:
        rows = ev.groupBy("item_id").agg(F.countDistinct("user_id").alias("n")).collect()
        total = ev.select("user_id").distinct().count() if rows else 0
    finally:
        ev.unpersist()
    return [r.item_id for r in rows], [r.n for r in rows], total


def load_serving_model(spark, lakehouse: str, ref, *, popularity_days: int | None = None,
                       interactions_version: int | None = None,
                       versions: dict | None = None) -> ServingModel:
    """The serving model of registered version ``ref`` (``None``: popularity only).

    Trained factors from ``item_factors``, placed ones from ``item_placements``, popularity
    over :func:`pipelines.serving.policy.popularity_window`; ``versions`` pins the table
    versions read (``{table: version}``, latest otherwise). ``score`` and the stream both
    build theirs here. Cost: the model's factor rows (item-sized) read with Arrow on the
    driver, and one Spark aggregation for popularity.
    """
    card = rule = None
    trained_ids: list[str] = []
    trained_y = np.zeros((0, 1), np.float32)
    placed_ids: list[str] = []
    placed_y = np.zeros((0, 1), np.float32)
    if ref is not None:
        card = ModelCard.from_params(ref.params)
        rule = trainers.get(card.trainer).fold_in_rule(card)
        versions = versions or {}
        tbl = _arrow_rows(lakehouse, ITEM_FACTORS, ["item_idx", "item_id", "factors"],
                          ref.version, version=versions.get(ITEM_FACTORS.name),
                          trained_only=True)
        if tbl is None or tbl.num_rows == 0:
            log.warning("model v%d has no item factors: serving popular items only",
                        ref.version)
        else:
            tbl = tbl.sort_by("item_idx")
            trained_ids = tbl["item_id"].to_pylist()
            trained_y = _matrix(tbl["factors"])
        placed = _arrow_rows(lakehouse, ITEM_PLACEMENTS, ["item_id", "factors"], ref.version,
                             version=versions.get(ITEM_PLACEMENTS.name))
        if placed is not None and placed.num_rows and len(trained_ids):
            placed_ids = placed["item_id"].to_pylist()
            placed_y = _matrix(placed["factors"])
    latest = None
    if (card is None or card.end is None) and delta.exists(lakehouse, INTERACTIONS):
        latest = delta.read(spark, lakehouse, INTERACTIONS, version=interactions_version) \
            .agg(F.max("ts")).first()[0]
    window = policy.popularity_window(card, latest=latest, days=popularity_days)
    ids, counts, total = popularity_counts(spark, lakehouse, window,
                                           version=interactions_version)
    model = ServingModel.build(ref.version if ref else None, card, rule,
                               trained=(trained_ids, trained_y), placed=(placed_ids, placed_y),
                               popular=policy.popularity(ids, counts, total))
    log.info("serving model v%s: %d trained items, %d placed from text, %d popular",
             model.version, len(trained_ids), len(model.placed) - len(trained_ids), len(ids))
    return model


def _matrix(col) -> np.ndarray:
    import pyarrow.compute as pc

    n = len(col)
    flat = pc.list_flatten(col).to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    return flat.reshape(n, -1) if n else np.zeros((0, 1), np.float32)


def lists(spark, users: DataFrame, model: ServingModel, *, k: int, slots: int,
          model_source: str = "als", backend: str = "auto") -> DataFrame:
    """Each row of ``users`` (``user_id, factors`` (null: no vector), ``seen`` universe rows)
    -> its list, by :func:`pipelines.serving.policy.recommend` on the executors.

    Cost: per Arrow batch, the policy's kernel calls (see there); the model is broadcast once
    and one task runs per core (the kernel is compute-bound).
    """
    import pyarrow as pa

    bc = spark.sparkContext.broadcast(model)

    def run(batches):
        import pyarrow.compute as pc

        m = bc.value
        ids = pa.array(m.items, pa.string())
        kernel = None
        if m.index is not None and recommend.choose_backend(backend) == "cuda":
            import torch

            gpu = recommend.task_gpu()
            kernel = recommend.gpu_kernel(m.index, torch.device("cuda", gpu or 0))
        width = max(1, m.rank)
        for batch in batches:
            n = batch.num_rows
            fac = batch.column("factors")
            has = pc.is_valid(fac).to_numpy(zero_copy_only=False) & (m.index is not None)
            vec = np.zeros((n, width), np.float32)
            if has.any():
                vec[has] = _matrix(fac.filter(pa.array(has)))
                # an all-zero vector (written for users without a known item before the
                # fold-in dropped them) is no vector: such users get the popular list
                has &= vec.any(axis=1)
            seen = batch.column("seen")
            lens = pc.fill_null(pc.list_value_length(seen), 0).to_numpy()
            indptr = np.zeros(n + 1, np.int64)
            np.cumsum(lens, out=indptr[1:])
            rows = pc.list_flatten(seen).to_numpy(zero_copy_only=False).astype(np.int64)
            out = policy.recommend(m, vec, has, (indptr, rows), k=k, slots=slots,
                                   model_source=model_source, kernel=kernel)
            yield pa.RecordBatch.from_arrays(
                [batch.column("user_id").take(pa.array(out.user)), pa.array(out.rank),
                 ids.take(pa.array(out.row)), pa.array(out.score),
                 pa.array(out.source.tolist(), pa.string())],
                names=["user_id", "rank", "item_id", "score", "source"])

    tasks = spark.sparkContext.defaultParallelism
    return users.select("user_id", "factors", "seen").coalesce(tasks) \
        .mapInArrow(run, LIST_SCHEMA)


def universe_rows(spark, model: ServingModel) -> DataFrame:
    """``item_id, row``: the serving model's items (item-sized, broadcast in joins)."""
    import pandas as pd

    return spark.createDataFrame(pd.DataFrame({"item_id": model.items,
                                               "row": np.arange(len(model.items),
                                                                dtype=np.int32)}),
                                 "item_id string, row int")


def score(spark, lakehouse: str, *, k: int = DEFAULTS.k, model_version: int | None = None,
          popularity_days: int | None = None, new_item_slots: int = DEFAULTS.new_item_slots,
          now: _dt.datetime | None = None) -> ScoreReport:
    """Write ``recommendations`` for every user in ``interactions``: one commit replacing
    every list the table held when the job started (:func:`pipelines.storage.delta.replace_snapshot`).

    Cost: one pass over ``interactions`` (distinct user-item pairs, grouped by user), the
    served vectors of the model version, and the policy on the executors.
    """
    now = now or _dt.datetime.now(_dt.UTC)
    ref = tracking.get_version(lakehouse, model_version) if model_version is not None \
        else tracking.get_alias(lakehouse)
    version = ref.version if ref else None
    if ref is None:
        log.warning("no champion model: every user gets the popular items")
    inputs = {t.name: delta.latest_version(lakehouse, t)
              for t in (INTERACTIONS, USER_FACTORS, ITEM_FACTORS, ITEM_PLACEMENTS)}
    txn = delta.Txn.of_content("lakerec.score", version, k, popularity_days, new_item_slots,
                               *sorted(inputs.items()))
    # the lists present now are replaced; lists the stream appends while this job runs are
    # newer than its `now` and stay current (merge-on-read)
    snapshot = delta.ensure_table(lakehouse, RECOMMENDATIONS)
    if delta.done(snapshot, txn):
        log.info("recommendations already computed from these inputs; nothing to do")
        return ScoreReport(version, skipped=True)

    model = load_serving_model(spark, lakehouse, ref, popularity_days=popularity_days,
                               interactions_version=inputs["interactions"], versions=inputs)
    interactions = delta.read(spark, lakehouse, INTERACTIONS, version=inputs["interactions"])
    pairs = interactions.select("user_id", "item_id").distinct()
    seen = (pairs.join(F.broadcast(universe_rows(spark, model)), "item_id")
            .groupBy("user_id").agg(F.collect_list("row").alias("seen")))
    users = pairs.select("user_id").distinct().join(seen, "user_id", "left")
    if ref is not None and inputs["user_factors"] is not None:
        vecs = delta.read(spark, lakehouse, USER_FACTORS, version=inputs["user_factors"],
                          partitions={"model_version": [version]}, current=True) \
            .select("user_id", "factors")
        users = users.join(vecs, "user_id", "left")
    else:
        users = users.withColumn("factors", F.lit(None).cast("array<float>"))
    trained_as = model.card.trainer if model.card is not None else "als"
    recs = lists(spark, users, model, k=k, slots=new_item_slots,
                 model_source=trained_as).select(
        "user_id", "rank", "item_id", "score", "source",
        F.lit(version).cast("long").alias("model_version"),
        F.lit(now).cast("timestamp").alias("generated_at")).persist()
    try:
        res = delta.replace_snapshot(
            spark, recs, lakehouse, RECOMMENDATIONS, snapshot=snapshot, txn=txn,
            metadata={MODEL_VERSION_KEY: version, LIST_LENGTH_KEY: k,
                      **{f"lakerec.input.{t}": v for t, v in inputs.items()}})
        by_source = {r["source"]: r["count"] for r in recs.groupBy("source").count().collect()}
        n_users = recs.select("user_id").distinct().count()
    finally:
        recs.unpersist()
    report = ScoreReport(version, n_users, sum(by_source.values()), by_source,
                         version=res.version)
    log.info("recommendations v%s: %d users, %d rows %s (model v%s)", res.version, n_users,
             report.rows, by_source, version)
    return report
