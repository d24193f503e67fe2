"""Training: a window of interactions -> implicit ALS -> holdout evaluation -> MLflow -> factors.

The window is ``[as_of + 1 day - window_days, as_of + 1 day)`` of event time, as known on
``as_of`` (rows that arrived later are left out). Its last ``holdout_days`` are the global
temporal holdout: the model is trained on the days before, and evaluated on the items each
returning user touched in the holdout and had not touched before -- exactly what serving can
recommend, since serving filters seen items the same way.

The model family is a :class:`pipelines.model.trainer.Trainer` named by the card
(``trainer = "als"``: Spark ML's ALS). Every model is evaluated through the same path
(:mod:`pipelines.batch.evaluate`): user vectors folded in from the training history against
the model's item factors with the model's own fold-in rule, then the serving top-K kernel.
The champion is re-evaluated on exactly the factors it was trained with (placement of new
items writes elsewhere: :mod:`pipelines.batch.place`). The current champion is re-evaluated on the
same split, so "beats the champion" compares like with like. The served user vectors are
folded in from the whole window, so the holdout days count for serving.

Example
-------
>>> report = train(spark, "/lh", ModelCard(rank=64, max_iter=10))   # doctest: +SKIP
>>> report.metrics["ndcg"], report.baseline["ndcg"], report.promoted   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.batch import evaluate, indexing, metrics, trainers
from pipelines.errors import DataError
from pipelines.model.card import ModelCard
from pipelines.storage import delta, tracking
from schemas.tables import INTERACTIONS, ITEM_FACTORS, ITEM_INDEX, USER_FACTORS, USER_INDEX

log = logging.getLogger(__name__)

__all__ = ["DataError", "ModelCard", "TrainReport", "latest_date", "train", "train_key"]


@dataclass(frozen=True)
class TrainReport:
    model_version: int
    run_id: str
    metrics: dict
    baseline: dict
    champion: dict | None
    champion_version: int | None
    promoted: bool
    reason: str
    window: tuple[str, str, str]
    counts: dict
    skipped: bool = False


def train_key(as_of: _dt.date, params: ModelCard, interactions_version: int) -> str:
    """What makes two trainings the same: the window, the settings and the input version."""
    body = {**params.settings(), "as_of": as_of.isoformat(),
            "interactions_version": interactions_version}
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:20]


def _finished_run(lakehouse: str, key: str, k: int) -> TrainReport | None:
    """The report of an earlier training with the same key whose factors were written."""
    c = tracking.client(lakehouse)
    runs = c.search_runs([tracking.experiment_id(lakehouse)],
                         filter_string=f"tags.`lakerec.train_key` = '{key}' "
                                       "and attributes.status = 'FINISHED'",
                         max_results=5)
    for run in runs:
        tags, m, p = run.data.tags, run.data.metrics, run.data.params
        if "factors.model_version" not in tags:
            continue

        def pick(prefix: str, m=m) -> dict | None:
            got = {name: m.get(f"{prefix}{name}_at_{k}") for name in metrics.METRICS}
            return None if any(v is None for v in got.values()) else \
                {**got, "users": int(m.get("n_eval_users", 0))}

        return TrainReport(
            int(tags["factors.model_version"]), run.info.run_id, pick(""), pick("pop_"),
            pick("champion_"), int(tags["champion_version"]) if tags.get("champion_version")
            else None, tags.get("promoted") == "true", tags.get("decision", ""),
            (p.get("start", ""), p.get("cutoff", ""), p.get("end", "")),
            {n[2:]: int(v) for n, v in m.items() if n.startswith("n_")}, skipped=True)
    return None


def latest_date(lakehouse: str) -> _dt.date:
    """The newest arrival date (``dt`` partition) of ``interactions``, from the log."""
    days = delta.partition_values(lakehouse, INTERACTIONS, "dt")
    if not days:
        raise DataError("interactions is empty: ingest some days first")
    return _dt.date.fromisoformat(days[-1])


def window_events(spark, lakehouse: str, *, version: int, card: ModelCard) -> DataFrame:
    """The events of the card's window as known on ``as_of`` (later arrivals left out).

    Cost: reads only the ``dt`` partitions from the window's start to ``as_of``.
    """
    days = [(card.start.date() + _dt.timedelta(days=d)) for d in
            range((card.as_of - card.start.date()).days + 1)]
    ev = delta.read(spark, lakehouse, INTERACTIONS, version=version, partitions={"dt": days})
    return ev.where((F.col("ts") >= F.lit(card.start)) & (F.col("ts") < F.lit(card.end))) \
        .select("user_id", "item_id", "event_type", "value", "ts")


def _ensure_checkpoint_dir(spark, lakehouse: str) -> None:
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        sc.setCheckpointDir(os.path.join(lakehouse, "_spark", "checkpoints"))


def champion_card(ref) -> ModelCard:
    """The model card of a registered version (its run's params, typed)."""
    return ModelCard.from_params(ref.params)


def train(spark, lakehouse: str, params: ModelCard, *,
          now: _dt.datetime | None = None) -> TrainReport:
    """Train, evaluate, log, register; write factors; move ``champion`` if the model wins."""
    import mlflow

    from pipelines.batch.recommend import item_matrix

    now = now or _dt.datetime.now(_dt.UTC)
    _ensure_checkpoint_dir(spark, lakehouse)
    version = delta.open_table(lakehouse, INTERACTIONS).version()
    as_of = params.as_of or latest_date(lakehouse)
    card = params.with_window(as_of)
    start, cutoff, end = card.start, card.cutoff, card.end
    trainer = trainers.get(card.trainer)
    key = train_key(as_of, params, version)
    done = _finished_run(lakehouse, key, card.k)
    if done is not None:  # same window, settings and data: the model exists already
        log.info("already trained as model v%d (run %s); nothing to do", done.model_version,
                 done.run_id)
        return done
    events = window_events(spark, lakehouse, version=version, card=card).persist()
    cached = [events]
    try:
        users = indexing.update_index(spark, lakehouse, USER_INDEX, events.select("user_id"))
        items = indexing.update_index(spark, lakehouse, ITEM_INDEX, events.select("item_id"))
        conf_all = trainers.confidence(events, weights=card.weights)
        conf_train = trainers.confidence(events.where(F.col("ts") < F.lit(cutoff)),
                                         weights=card.weights)
        train_hist = conf_train.join(users, "user_id").join(items, "item_id").persist()
        cached.append(train_hist)
        n_train = train_hist.count()
        if n_train == 0:
            raise DataError(f"no training events before the holdout ({start:%F} .. {cutoff:%F})")
        test = events.where(F.col("ts") >= F.lit(cutoff)).select("user_id", "item_id").distinct()
        relevant = (test.join(train_hist.select("user_id").distinct(), "user_id", "left_semi")
                    .join(train_hist.select("user_id", "item_id"), ["user_id", "item_id"],
                          "left_anti")).persist()
        cached.append(relevant)
        if relevant.isEmpty():
            raise DataError(f"no returning users with new items in the holdout "
                            f"({cutoff:%F} .. {end:%F}); widen --window-days or the data")

        log.info("training %s rank=%d on %d user-item pairs (%s .. %s)", trainer.name,
                 card.rank, n_train, f"{start:%F}", f"{cutoff:%F}")
        model = trainer.fit(spark, train_hist, card)
        y, item_idx = model.y, model.item_idx
        names = {r.item_idx: r.item_id for r in items.select("item_idx", "item_id").collect()}
        item_ids = [names[int(i)] for i in item_idx]

        k = card.k
        scores = evaluate.evaluate(spark, y=y, item_idx=item_idx, item_ids=item_ids,
                                   train_hist=train_hist, relevant=relevant, rule=model.rule,
                                   k=k)
        baseline = evaluate.evaluate_popularity(spark, train_hist=train_hist,
                                                relevant=relevant, k=k)
        champ = tracking.get_alias(lakehouse)
        champ_scores, decision = None, ""
        if champ is not None:
            c_card = champion_card(champ)
            if c_card.cutoff and c_card.cutoff > cutoff:
                decision = (f"champion v{champ.version} was trained on data up to "
                            f"{c_card.cutoff.isoformat()}, past this holdout: no fair "
                            "comparison")
            else:
                # the trained rows only: lakehouses of before `place` hold placed ones too
                cy, cidx, cids = item_matrix(delta.read(
                    spark, lakehouse, ITEM_FACTORS, partitions={"model_version": [champ.version]})
                    .where(F.col("source") == "als"))
                champ_scores = evaluate.evaluate(
                    spark, y=cy, item_idx=cidx, item_ids=cids, train_hist=train_hist,
                    relevant=relevant, rule=trainers.get(c_card.trainer).fold_in_rule(c_card),
                    k=k)
        if decision:
            promote = False
        elif champ_scores is None:
            promote = scores["ndcg"] > baseline["ndcg"]
            decision = (f"first model: NDCG@{k} {scores['ndcg']:.4f} vs popularity "
                        f"{baseline['ndcg']:.4f}")
        else:
            promote = scores["ndcg"] > champ_scores["ndcg"]
            decision = (f"NDCG@{k} {scores['ndcg']:.4f} vs champion v{champ.version} "
                        f"{champ_scores['ndcg']:.4f} on the same holdout")

        counts = {"events": events.count(), "train_pairs": n_train,
                  "eval_users": scores["users"], "items_with_factors": len(item_ids)}
        tracking.use(lakehouse)
        with mlflow.start_run(experiment_id=tracking.experiment_id(lakehouse),
                              run_name=f"{trainer.name}-{as_of}") as run:
            mlflow.log_params(card.to_params())
            mlflow.log_metrics({**{f"{m}_at_{k}": scores[m] for m in metrics.METRICS},
                                **{f"pop_{m}_at_{k}": baseline[m] for m in metrics.METRICS},
                                **({f"champion_{m}_at_{k}": champ_scores[m]
                                    for m in metrics.METRICS} if champ_scores else {}),
                                **{f"n_{c}": v for c, v in counts.items()}})
            mlflow.set_tags({
                "input.interactions.version": version,
                "input.user_index.version": delta.latest_version(lakehouse, USER_INDEX),
                "input.item_index.version": delta.latest_version(lakehouse, ITEM_INDEX),
                "lakehouse": os.path.abspath(lakehouse),
                "decision": decision,
                "lakerec.train_key": key,
                "champion_version": champ.version if champ else "",
            })
            info = trainer.log_model(model, card)
            model_version = int(info.registered_model_version)
            _write_factors(spark, lakehouse, model_version, model, item_ids, conf_all, users,
                           items, now)
            mlflow.set_tag("factors.model_version", model_version)
            if promote:
                tracking.set_alias(lakehouse, model_version)
            mlflow.set_tag("promoted", str(promote).lower())
        log.info("model v%d: %s -> %s", model_version, decision,
                 "promoted to champion" if promote else "not promoted")
        return TrainReport(model_version, run.info.run_id, scores, baseline, champ_scores,
                           champ.version if champ else None, promote, decision,
                           (start.isoformat(), cutoff.isoformat(), end.isoformat()), counts)
    finally:
        for df in cached:
            df.unpersist()


def _write_factors(spark, lakehouse, model_version, model, item_ids, conf_all, users, items,
                   now) -> None:
    """The model's trained ``item_factors`` and the served ``user_factors`` (every user of
    the window, solved from the whole window with the model's fold-in rule)."""
    import pandas as pd

    ts = F.lit(now).cast("timestamp")
    meta = {"lakerec.model_version": model_version}
    pdf = pd.DataFrame({"item_id": item_ids, "item_idx": model.item_idx.astype(np.int32),
                        "factors": [v.tolist() for v in model.y]})
    item_df = spark.createDataFrame(pdf, "item_id string, item_idx int, factors array<float>") \
        .select("item_id", "item_idx", "factors", F.lit("als").alias("source"),
                ts.alias("updated_at"), F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, item_df, lakehouse, ITEM_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/items", 1))
    hist = conf_all.join(items, "item_id").select("user_id", "item_idx", "r")
    vecs = trainers.fold_in_users(spark, hist, model.y, model.item_idx, rule=model.rule)
    user_df = vecs.join(users, "user_id").select(
        "user_id", "user_idx", "factors", F.lit("als").alias("source"), ts.alias("updated_at"),
        F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, user_df, lakehouse, USER_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/users", 1))


def report_dict(r: TrainReport) -> dict:
    return asdict(r)
