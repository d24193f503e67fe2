"""Training: a window of interactions -> implicit ALS -> holdout evaluation -> MLflow -> factors.

The window is ``[as_of + 1 day - window_days, as_of + 1 day)`` of event time, as known on
``as_of`` (rows that arrived later are left out). Its last ``holdout_days`` are the global
temporal holdout: the model is trained on the days before, and evaluated on the items each
returning user touched in the holdout and had not touched before -- exactly what serving can
recommend, since serving filters seen items the same way.

Every model is evaluated through the same path: user vectors folded in from the training
history against the model's item factors (for the model just trained these equal Spark's own
user factors), then the serving top-K kernel. The current champion is re-evaluated on the
same split, so "beats the champion" compares like with like. The served user vectors are
folded in from the whole window, so the holdout days count for serving.

Example
-------
>>> report = train(spark, "/lh", TrainParams(rank=64, max_iter=10))   # doctest: +SKIP
>>> report.metrics["ndcg"], report.baseline["ndcg"], report.promoted   # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines import als, delta, indexing, metrics, topk, tracking
from schemas.tables import INTERACTIONS, ITEM_FACTORS, ITEM_INDEX, USER_FACTORS, USER_INDEX

log = logging.getLogger(__name__)


class DataError(RuntimeError):
    """The tables do not hold what the job needs (e.g. an empty holdout)."""


@dataclass(frozen=True)
class TrainParams:
    """Training settings (all overridable from the command line, env or lakerec.toml)."""

    rank: int = 32
    alpha: float = 5.0
    reg: float = 0.05
    max_iter: int = 10
    seed: int = 7
    window_days: int = 30
    holdout_days: int = 3
    k: int = 10
    as_of: _dt.date | None = None
    weights: Mapping[str, float] = field(default_factory=lambda: dict(als.DEFAULT_WEIGHTS))


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


def train_key(as_of: _dt.date, params: TrainParams, interactions_version: int) -> str:
    """What makes two trainings the same: the window, the settings and the input version."""
    body = {**asdict(params), "as_of": as_of.isoformat(), "weights": dict(params.weights),
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


def window_bounds(as_of: _dt.date, window_days: int, holdout_days: int):
    """(start, cutoff, end) timestamps, UTC."""
    end = _dt.datetime.combine(as_of + _dt.timedelta(days=1), _dt.time(), _dt.UTC)
    return (end - _dt.timedelta(days=window_days), end - _dt.timedelta(days=holdout_days), end)


def latest_date(lakehouse: str) -> _dt.date:
    dt = delta.open_table(lakehouse, INTERACTIONS)
    parts = [a["partition"]["dt"] for a in delta._add_actions(dt)]
    if not parts:
        raise DataError("interactions is empty: ingest some days first")
    return _dt.date.fromisoformat(max(parts))


def window_events(spark, lakehouse: str, *, version: int, as_of: _dt.date, start, end
                  ) -> DataFrame:
    days = [(start.date() + _dt.timedelta(days=d)) for d in
            range((as_of - start.date()).days + 1)]
    ev = delta.read(spark, lakehouse, INTERACTIONS, version=version, partitions={"dt": days})
    return ev.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(end))) \
        .select("user_id", "item_id", "event_type", "value", "ts")


def item_matrix(factors: DataFrame) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Collect ``item_idx, item_id, factors`` -> (Y float32, item_idx array, item ids)."""
    rows = sorted(factors.select("item_idx", "item_id", "factors").collect(),
                  key=lambda r: r.item_idx)
    if not rows:
        raise DataError("no item factors")
    y = np.array([r.factors for r in rows], dtype=np.float32)
    return y, np.array([r.item_idx for r in rows], dtype=np.int64), [r.item_id for r in rows]


def evaluate(spark, *, y: np.ndarray, item_idx: np.ndarray, item_ids: list[str],
             train_hist: DataFrame, relevant: DataFrame, alpha: float, reg: float, k: int
             ) -> dict:
    """Metrics of item factors ``y`` on (training history, held-out relevant items)."""
    users = relevant.select("user_id").distinct()
    hist = train_hist.join(users, "user_id", "left_semi")
    vecs = als.fold_in_users(spark, hist.select("user_id", "item_idx", "r"), y, item_idx,
                             alpha=alpha, reg=reg)
    seen = topk.seen_rows(hist.select("user_id", "item_id"), item_ids, spark)
    recs = topk.recommend(spark, vecs.join(seen, "user_id", "left"), item_ids, y, k=k)
    return metrics.ranking_metrics(recs, relevant, k=k, catalog_size=len(item_ids))


def popularity(conf: DataFrame) -> DataFrame:
    """Items by number of distinct users (``item_id, users``)."""
    return conf.groupBy("item_id").agg(F.countDistinct("user_id").alias("users"))


def evaluate_popularity(spark, *, pop: DataFrame, train_hist: DataFrame, relevant: DataFrame,
                        k: int) -> dict:
    """The popularity baseline through the same kernel: score = item popularity."""
    rows = pop.orderBy("item_id").collect()
    ids = [r.item_id for r in rows]
    v = np.array([[float(r.users)] for r in rows], dtype=np.float32)
    users = relevant.select("user_id").distinct().withColumn(
        "factors", F.array(F.lit(1.0).cast("float")))
    seen = topk.seen_rows(train_hist.select("user_id", "item_id"), ids, spark)
    recs = topk.recommend(spark, users.join(seen, "user_id", "left"), ids, v, k=k)
    return metrics.ranking_metrics(recs, relevant, k=k, catalog_size=len(ids))


def _ensure_checkpoint_dir(spark, lakehouse: str) -> None:
    sc = spark.sparkContext
    if sc.getCheckpointDir() is None:
        sc.setCheckpointDir(os.path.join(lakehouse, "_spark", "checkpoints"))


def train(spark, lakehouse: str, params: TrainParams, *,
          now: _dt.datetime | None = None) -> TrainReport:
    """Train, evaluate, log, register; write factors; move ``champion`` if the model wins."""
    import mlflow

    now = now or _dt.datetime.now(_dt.UTC)
    _ensure_checkpoint_dir(spark, lakehouse)
    version = delta.open_table(lakehouse, INTERACTIONS).version()
    as_of = params.as_of or latest_date(lakehouse)
    start, cutoff, end = window_bounds(as_of, params.window_days, params.holdout_days)
    key = train_key(as_of, params, version)
    done = _finished_run(lakehouse, key, params.k)
    if done is not None:  # same window, settings and data: the model exists already
        log.info("already trained as model v%d (run %s); nothing to do", done.model_version,
                 done.run_id)
        return done
    events = window_events(spark, lakehouse, version=version, as_of=as_of, start=start,
                           end=end).persist()
    cached = [events]
    try:
        users = indexing.update_index(spark, lakehouse, USER_INDEX, events.select("user_id"))
        items = indexing.update_index(spark, lakehouse, ITEM_INDEX, events.select("item_id"))
        conf_all = als.confidence(events, weights=params.weights)
        conf_train = als.confidence(events.where(F.col("ts") < F.lit(cutoff)),
                                    weights=params.weights)
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

        log.info("training ALS rank=%d on %d user-item pairs (%s .. %s)", params.rank,
                 n_train, f"{start:%F}", f"{cutoff:%F}")
        model = als.fit(train_hist.select("user_idx", "item_idx", F.col("r").cast("float")),
                        rank=params.rank, alpha=params.alpha, reg=params.reg,
                        max_iter=params.max_iter, seed=params.seed)
        y_rows = model.itemFactors.join(items, items.item_idx == model.itemFactors.id) \
            .select("item_idx", "item_id", F.col("features").alias("factors"))
        y, item_idx, item_ids = item_matrix(y_rows)

        k = params.k
        scores = evaluate(spark, y=y, item_idx=item_idx, item_ids=item_ids,
                          train_hist=train_hist, relevant=relevant, alpha=params.alpha,
                          reg=params.reg, k=k)
        baseline = evaluate_popularity(spark, pop=popularity(conf_train),
                                       train_hist=train_hist, relevant=relevant, k=k)
        champ = tracking.get_alias(lakehouse)
        champ_scores, decision = None, ""
        if champ is not None:
            champ_cutoff = champ.params.get("cutoff")
            if champ_cutoff and champ_cutoff > cutoff.isoformat():
                decision = (f"champion v{champ.version} was trained on data up to "
                            f"{champ_cutoff}, past this holdout: no fair comparison")
            else:
                cy, cidx, cids = item_matrix(delta.read(
                    spark, lakehouse, ITEM_FACTORS, partitions={"model_version": [champ.version]}))
                champ_scores = evaluate(
                    spark, y=cy, item_idx=cidx, item_ids=cids, train_hist=train_hist,
                    relevant=relevant, alpha=float(champ.params.get("alpha", params.alpha)),
                    reg=float(champ.params.get("reg", params.reg)), k=k)
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
                              run_name=f"als-{as_of}") as run:
            mlflow.log_params({
                "rank": params.rank, "alpha": params.alpha, "reg": params.reg,
                "max_iter": params.max_iter, "seed": params.seed, "k": k,
                "window_days": params.window_days, "holdout_days": params.holdout_days,
                "as_of": as_of.isoformat(), "start": start.isoformat(),
                "cutoff": cutoff.isoformat(), "end": end.isoformat(),
                "weights": json.dumps(dict(params.weights), sort_keys=True),
            })
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
            info = mlflow.spark.log_model(model, artifact_path="model",
                                          registered_model_name=tracking.ALS_MODEL,
                                          pip_requirements=_requirements())
            model_version = int(info.registered_model_version)
            _write_factors(spark, lakehouse, model_version, y_rows, conf_all, users, items,
                           y, item_idx, params, now)
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


def _write_factors(spark, lakehouse, model_version, y_rows, conf_all, users, items, y,
                   item_idx, params, now) -> None:
    ts = F.lit(now).cast("timestamp")
    meta = {"lakerec.model_version": model_version}
    item_df = y_rows.select("item_id", "item_idx", "factors", F.lit("als").alias("source"),
                            ts.alias("updated_at"),
                            F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, item_df, lakehouse, ITEM_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/items", 1))
    # serving vectors: every user of the window, folded in from the whole window
    hist = conf_all.join(items, "item_id").select("user_id", "item_idx", "r")
    vecs = als.fold_in_users(spark, hist, y, item_idx, alpha=params.alpha, reg=params.reg)
    user_df = vecs.join(users, "user_id").select(
        "user_id", "user_idx", "factors", F.lit("als").alias("source"), ts.alias("updated_at"),
        F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, user_df, lakehouse, USER_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/users", 1))


def _requirements() -> list[str]:
    import pyspark

    return [f"pyspark=={pyspark.__version__}"]


def report_dict(r: TrainReport) -> dict:
    return asdict(r)
