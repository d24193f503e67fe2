"""Training: a window of interactions -> a model -> a paired, bootstrapped gate -> MLflow.

The window is ``[as_of + 1 day - window_days, as_of + 1 day)`` of event time, as known on
``as_of`` (rows that arrived later are left out); with ``window_days`` unset it is chosen
from the data (:func:`pipelines.batch.split.auto_window_days`). Two splits are cut from its
end, both ``h`` days long, ``h`` sized to hold ``min_eval_users`` evaluated users
(:func:`pipelines.batch.split.size_holdout`):

* the **holdout** ``[cutoff, end)``: the model is trained on ``[start, cutoff)`` and judged
  on the items each returning user touched in the holdout and had not touched before --
  exactly what serving can recommend. It decides promotion, and nothing else looks at it;
* the **validation split** ``[cutoff - h, cutoff)``, with training on the ``window - h``
  days before it: the popularity baseline's window (:data:`POPULARITY_DAYS`) and, with
  ``tune``, every setting of the search (:mod:`pipelines.model.tuning`) are chosen on it.

The model family is a :class:`pipelines.model.trainer.Trainer` named by the card (``als``:
Spark ML's ALS; ``ease``: EASE, for catalogs up to ``ease_max_items``, else ALS). Every
model is evaluated through the same path (:mod:`pipelines.batch.evaluate`): user vectors
folded in from the training history with the model's own fold-in rule, then the serving
top-K kernel. The opponent is the champion, re-evaluated on exactly the factors it was
trained with on the same split, or, with no champion, the tuned popularity list. The gate
(:mod:`pipelines.model.gate`) pairs the two over the same users and bootstraps the mean NDCG
gain; ``promote_if`` says whether a significant gain or any gain promotes. The served user
vectors are folded in from the whole window, so the holdout days count for serving.

Example
-------
>>> report = train(spark, "/lh", ModelCard(rank=64, max_iter=10))   # doctest: +SKIP
>>> report.metrics["ndcg"], report.baseline["ndcg"], report.gain["low"]   # doctest: +SKIP
>>> report = train(spark, "/lh", ModelCard(), tune=Budget(trials=12))   # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from pipelines.batch import evaluate, indexing, metrics, split, trainers
from pipelines.errors import DataError
from pipelines.model import gate, tuning
from pipelines.model.card import ModelCard
from pipelines.serving import policy
from pipelines.storage import delta, tracking
from schemas.tables import INTERACTIONS, ITEM_FACTORS, ITEM_INDEX, USER_FACTORS, USER_INDEX

log = logging.getLogger(__name__)

__all__ = ["DataError", "ModelCard", "TrainReport", "latest_date", "train", "train_key"]

# popularity windows the baseline is chosen from on the validation split (None: the whole
# training span), shortest last so that ties keep the longer, steadier list
POPULARITY_DAYS = (None, 365, 180, 90, 30, 14, 7)


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
    gain: dict | None = None
    trainer: str = "als"
    settings: dict = dataclasses.field(default_factory=dict)
    trials: int = 0
    # 95% bootstrap intervals of the per-user means: {"model"|"popularity": {metric: (lo, hi)}}
    intervals: dict = dataclasses.field(default_factory=dict)


def train_key(as_of: _dt.date, params: ModelCard, interactions_version: int,
              tune: tuning.Budget | None = None) -> str:
    """What makes two trainings the same: the window, the settings, the search and the
    input version."""
    body = {**params.settings(), "as_of": as_of.isoformat(),
            "interactions_version": interactions_version,
            "tune": asdict(tune) if tune else None}
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

        gain = ({"diff": m["gate_diff"], "low": m["gate_low"], "high": m["gate_high"],
                 "users": int(m.get("n_eval_users", 0))} if "gate_diff" in m else None)
        return TrainReport(
            int(tags["factors.model_version"]), run.info.run_id, pick(""), pick("pop_"),
            pick("champion_"), int(tags["champion_version"]) if tags.get("champion_version")
            else None, tags.get("promoted") == "true", tags.get("decision", ""),
            (p.get("start", ""), p.get("cutoff", ""), p.get("end", "")),
            {n[2:]: int(v) for n, v in m.items() if n.startswith("n_")}, skipped=True,
            gain=gain, trainer=p.get("trainer", "als"))
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


@dataclass
class _Split:
    """One time split: fit on ``[start, cutoff)``, judge on ``[cutoff, end)``."""

    start: _dt.datetime
    cutoff: _dt.datetime
    end: _dt.datetime
    relevant: DataFrame


class _Data:
    """The loaded events and the index, and the frames each split and card need (cached
    per split and setting, unpersisted by :meth:`close`)."""

    def __init__(self, spark, events: DataFrame, users: DataFrame, items: DataFrame,
                 weights):
        self.spark, self.events, self.users, self.items = spark, events, users, items
        self.weights = weights
        self.cached: list[DataFrame] = [events]
        self._memo: dict = {}

    def keep(self, df: DataFrame) -> DataFrame:
        self.cached.append(df.persist())
        return df

    def pairs(self, start, cutoff, half_life: float = 0.0) -> DataFrame:
        """``user_id, item_id, user_idx, item_idx, r`` of ``[start, cutoff)``; with a half-life,
        decayed towards ``cutoff``."""
        key = (start, cutoff, half_life)
        if key not in self._memo:
            ev = self.events.where((F.col("ts") >= F.lit(start)) & (F.col("ts") < F.lit(cutoff)))
            conf = trainers.confidence(ev, weights=self.weights, half_life_days=half_life,
                                       ref=cutoff)
            self._memo[key] = self.keep(conf.join(self.users, "user_id").join(self.items,
                                                                              "item_id"))
        return self._memo[key]

    def split(self, start, cutoff, end, max_users: int) -> _Split:
        rel = self.keep(split.relevant_pairs(self.events, start=start, cutoff=cutoff, end=end,
                                             max_users=max_users))
        return _Split(start, cutoff, end, rel)

    def close(self) -> None:
        for df in self.cached:
            df.unpersist()


def _fit(spark, data: _Data, card: ModelCard, sp: _Split, item_names: dict):
    """Train ``card`` on the split's training span and evaluate it on its relevant items.

    Cost: one fit (the trainer's) and one :func:`pipelines.batch.evaluate.evaluate`.
    """
    start = sp.cutoff - _dt.timedelta(days=card.window_days - card.holdout_days)
    hist = data.pairs(start, sp.cutoff)
    fit_pairs = data.pairs(start, sp.cutoff, card.half_life_days) if card.half_life_days \
        else hist
    if fit_pairs.isEmpty():
        raise DataError(f"no training events before the holdout ({start:%F} .. "
                        f"{sp.cutoff:%F})")
    model = trainers.get(card.trainer).fit(spark, fit_pairs, card)
    item_ids = [item_names[int(i)] for i in model.item_idx]
    scores = evaluate.evaluate(spark, y=model.y, item_idx=model.item_idx, item_ids=item_ids,
                               train_hist=hist, relevant=sp.relevant, rule=model.rule,
                               k=card.k)
    return model, item_ids, hist, scores


def _popularity(spark, data: _Data, card: ModelCard, sp: _Split, days: int | None):
    start = sp.cutoff - _dt.timedelta(days=card.window_days - card.holdout_days)
    hist = data.pairs(start, sp.cutoff)
    counted = hist if days is None else \
        hist.join(data.pairs(sp.cutoff - _dt.timedelta(days=days), sp.cutoff)
                  .select("user_id", "item_id"), ["user_id", "item_id"], "left_semi")
    return evaluate.evaluate_popularity(spark, train_hist=hist, relevant=sp.relevant,
                                        k=card.k, counted=counted)


def _tune_popularity(spark, data: _Data, card: ModelCard, val: _Split) -> int | None:
    """The popularity window (days before the split, or None: the whole training span) with
    the best validation NDCG among :data:`POPULARITY_DAYS` shorter than the span.

    Cost: one popularity evaluation per candidate (a top-K job over the evaluated users).
    """
    span = card.window_days - card.holdout_days
    best, best_ndcg = None, -1.0
    for days in POPULARITY_DAYS:
        if days is not None and days >= span:
            continue
        got = _popularity(spark, data, card, val, days)["ndcg"]
        log.info("popularity over %s: validation NDCG@%d %.4f",
                 "the whole span" if days is None else f"{days} days", card.k, got)
        if got > best_ndcg:
            best, best_ndcg = days, got
    return best


def _resolve_trainer(card: ModelCard, n_items: int) -> ModelCard:
    if card.trainer == "ease" and n_items > card.ease_max_items:
        log.warning("ease: %d items exceed ease_max_items = %d; training ALS instead",
                    n_items, card.ease_max_items)
        return dataclasses.replace(card, trainer="als")
    return card


def _paired(a: evaluate.Scores, b: evaluate.Scores, promote_if: str):
    if not np.array_equal(a.users, b.users):  # both are scored on the same relevant users
        raise AssertionError("gate: the two sides were scored on different users")
    g = gate.paired_bootstrap(a.ndcg, b.ndcg)
    return g, gate.decide(g, promote_if=promote_if)


def train(spark, lakehouse: str, params: ModelCard, *, now: _dt.datetime | None = None,
          tune: tuning.Budget | None = None,
          on_trial: Callable[[tuning.Trial, tuning.Trial], None] | None = None
          ) -> TrainReport:
    """Train (after a search, with ``tune``), gate, log, register; write factors; move
    ``champion`` if the gate says so.

    Cost: reads the window's partitions once (the longest window a search may try, plus
    the validation days) and caches them; per trial one fit and one evaluation on the
    validation split; then one fit, three evaluations (model, popularity, champion) and the
    fold-in of every user of the window. Driver memory: item-sized factors and the
    evaluated users' (at most ``max_eval_users``) per-user metrics.
    """
    import mlflow

    from pipelines.batch.recommend import item_matrix

    now = now or _dt.datetime.now(_dt.UTC)
    _ensure_checkpoint_dir(spark, lakehouse)
    version = delta.open_table(lakehouse, INTERACTIONS).version()
    as_of = params.as_of or latest_date(lakehouse)
    key = train_key(as_of, params, version, tune)
    done = _finished_run(lakehouse, key, params.k)
    if done is not None:  # same window, settings and data: the model exists already
        log.info("already trained as model v%d (run %s); nothing to do", done.model_version,
                 done.run_id)
        return done
    window = params.window_days or split.auto_window_days(
        spark, lakehouse, version=version, as_of=as_of,
        least=3 * params.holdout_days + 1)
    base = dataclasses.replace(params, as_of=None, window_days=window)
    windows = tuning.window_choices(window, longest=split.MAX_WINDOW_DAYS,
                                    least=3 * params.holdout_days + 1) if tune else [window]
    # the validation split's training span reaches back h days further than the holdout's
    load = dataclasses.replace(base, window_days=max(windows) + base.max_holdout_days) \
        .with_window(as_of)
    events = window_events(spark, lakehouse, version=version, card=load).persist()
    users = indexing.update_index(spark, lakehouse, USER_INDEX, events.select("user_id"))
    items = indexing.update_index(spark, lakehouse, ITEM_INDEX, events.select("item_id"))
    data = _Data(spark, events, users, items, base.weights)
    try:
        probe = base.with_window(as_of)
        h, n_eval = split.size_holdout(events.where(F.col("ts") >= F.lit(probe.start)), probe)
        base = dataclasses.replace(base, holdout_days=h)
        card = base.with_window(as_of)
        # a trial window must leave days to train on before the validation split
        windows = [w for w in windows if w > 2 * h] or [window]
        names = {r.item_idx: r.item_id for r in items.select("item_idx", "item_id").collect()}
        n_items = data.pairs(card.start, card.cutoff).select("item_id").distinct().count()
        base = _resolve_trainer(base, n_items)
        cap = base.max_eval_users
        val_cut = card.cutoff - _dt.timedelta(days=h)
        val = data.split(val_cut - _dt.timedelta(days=window - h), val_cut, card.cutoff, cap)
        # judged users: those with history in the base window, whatever window a trial
        # picks, so that every training of the same data is judged on the same users
        hold = data.split(card.start, card.cutoff, card.end, cap)
        if hold.relevant.isEmpty():
            if data.pairs(card.start, card.cutoff).isEmpty():
                raise DataError(f"no training events before the holdout "
                                f"({card.start:%F} .. {card.cutoff:%F})")
            raise DataError(f"no returning users with new items in the holdout "
                            f"({card.cutoff:%F} .. {card.end:%F}); widen --window-days or "
                            "the data")
        has_val = not val.relevant.isEmpty()

        trials: list[tuning.Trial] = []
        if tune is not None and has_val:
            def score(c: ModelCard) -> dict:
                c = _resolve_trainer(c, n_items)
                return _fit(spark, data, c, val, names)[3].metrics

            base, trials = tuning.search(base, score, tune, windows=windows,
                                         on_trial=on_trial)
        elif tune is not None:
            log.warning("tuning skipped: the validation split (%s .. %s) has no evaluated "
                        "users", f"{val_cut:%F}", f"{card.cutoff:%F}")
        pop_days = _tune_popularity(spark, data, base, val) if has_val else None
        base = dataclasses.replace(base, popularity_days=pop_days)
        card = base.with_window(as_of)
        trainer = trainers.get(card.trainer)

        log.info("training %s on %d days (%s .. %s), holdout %d days with %d evaluated "
                 "users", trainer.name, card.window_days - h, f"{card.start:%F}",
                 f"{card.cutoff:%F}", h, n_eval)
        model, item_ids, train_hist, scores = _fit(spark, data, card, hold, names)
        baseline = _popularity(spark, data, card, hold, pop_days)
        k = card.k
        champ = tracking.get_alias(lakehouse)
        champ_scores, decision, g = None, "", None
        if champ is not None:
            c_card = champion_card(champ)
            if c_card.cutoff and c_card.cutoff > card.cutoff:
                decision = (f"champion v{champ.version} was trained on data up to "
                            f"{c_card.cutoff.isoformat()}, past this holdout: no fair "
                            "comparison")
            else:
                cy, cidx, cids = item_matrix(delta.read(
                    spark, lakehouse, ITEM_FACTORS, partitions={"model_version": [champ.version]})
                    .where(F.col("source").isin(*policy.TRAINED_SOURCES)))
                champ_scores = evaluate.evaluate(
                    spark, y=cy, item_idx=cidx, item_ids=cids, train_hist=train_hist,
                    relevant=hold.relevant,
                    rule=trainers.get(c_card.trainer).fold_in_rule(c_card), k=k)
        if decision:
            promote = False
        else:
            opp, name = (baseline, "popularity") if champ_scores is None else \
                (champ_scores, f"champion v{champ.version}")
            g, promote = _paired(scores, opp, card.promote_if)
            decision = (f"{'first model: ' if champ_scores is None else ''}NDCG@{k} "
                        f"{scores['ndcg']:.4f} vs {name} {opp['ndcg']:.4f}; {g.describe()}; "
                        f"promote if {card.promote_if}")

        counts = {"events": events.where(F.col("ts") >= F.lit(card.start)).count(),
                  "train_pairs": train_hist.count(), "eval_users": scores["users"],
                  "items_with_factors": len(item_ids), "holdout_days": h,
                  "base_window_days": window,
                  "tuning_trials": len(trials)}
        tracking.use(lakehouse)
        exp = tracking.experiment_id(lakehouse)
        with mlflow.start_run(experiment_id=exp,
                              run_name=f"{trainer.name}-{as_of}-{now:%H%M%S}") as run:
            for t in trials:
                with mlflow.start_run(experiment_id=exp, nested=True,
                                      run_name=f"trial-{t.number}"):
                    mlflow.log_params({**dataclasses.replace(base, **t.settings)
                                       .to_params(), "trial": t.number})
                    mlflow.log_metrics({**{f"val_{m}_at_{k}": t.metrics[m]
                                           for m in metrics.METRICS},
                                        "seconds": t.seconds})
            mlflow.log_params(card.to_params())
            mlflow.log_metrics({**{f"{m}_at_{k}": scores[m] for m in metrics.METRICS},
                                **{f"pop_{m}_at_{k}": baseline[m] for m in metrics.METRICS},
                                **({f"champion_{m}_at_{k}": champ_scores[m]
                                    for m in metrics.METRICS} if champ_scores else {}),
                                **({"gate_diff": g.diff, "gate_low": g.low,
                                    "gate_high": g.high} if g else {}),
                                **{f"n_{c}": v for c, v in counts.items()}})
            inputs = {"interactions": version,
                      "user_index": delta.latest_version(lakehouse, USER_INDEX),
                      "item_index": delta.latest_version(lakehouse, ITEM_INDEX)}
            mlflow.set_tags({
                **{f"input.{t}.version": v for t, v in inputs.items()},
                "lakehouse": os.path.abspath(lakehouse),
                "decision": decision,
                "lakerec.train_key": key,
                "champion_version": champ.version if champ else "",
            })
            info = trainer.log_model(model, card)
            model_version = int(info.registered_model_version)
            # MLflow 3: the inputs as datasets with their Delta versions, the metrics on the
            # logged model too, and the evaluation as a table and a plot
            tracking.log_inputs(lakehouse, inputs, model_id=info.model_id)
            mlflow.log_metrics({f"{m}_at_{k}": scores[m] for m in metrics.METRICS},
                               model_id=info.model_id)
            _log_evaluation(k, {"model": scores, "popularity": baseline,
                                **({"champion": champ_scores} if champ_scores else {})})
            _write_factors(spark, lakehouse, model_version, model, item_ids,
                           data.pairs(card.start, card.end), users, now, trainer.name)
            mlflow.set_tag("factors.model_version", model_version)
            if promote:
                tracking.promote(lakehouse, model_version, reason=decision, by="train")
            mlflow.set_tag("promoted", str(promote).lower())
            if trials:
                tracking.remember_tuned(lakehouse, {**tuning.remembered(base),
                                                    "trainer": base.trainer})
        log.info("model v%d: %s -> %s", model_version, decision,
                 "promoted to champion" if promote else "not promoted")
        return TrainReport(model_version, run.info.run_id, scores.metrics, baseline.metrics,
                           champ_scores.metrics if champ_scores else None,
                           champ.version if champ else None, promote, decision,
                           (card.start.isoformat(), card.cutoff.isoformat(),
                            card.end.isoformat()), counts,
                           gain=asdict(g) if g else None, trainer=trainer.name,
                           settings={n: getattr(card, n) for n in
                                     ("window_days", "holdout_days", "popularity_days",
                                      *tuning.SPACES.get(card.trainer, {}))},
                           trials=len(trials),
                           intervals={"model": scores.intervals(),
                                      "popularity": baseline.intervals()})
    finally:
        data.close()


def _log_evaluation(k: int, scored: dict[str, evaluate.Scores]) -> None:
    """``evaluation.json`` (every metric of every model judged, with its 95% interval) and
    ``evaluation.png`` (those intervals side by side) as artifacts of the active run."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a job's machine
    import matplotlib.pyplot as plt
    import mlflow

    rows = {"model": [], "metric": [], "value": [], "low": [], "high": [], "users": []}
    cis = {name: sc.intervals() for name, sc in scored.items()}  # one bootstrap per model
    for name, sc in scored.items():
        ci = cis[name]
        for m in metrics.METRICS:
            lo, hi = ci.get(m, (float("nan"), float("nan")))
            for col, v in zip(rows, (name, f"{m}@{k}", sc[m], lo, hi, sc["users"]),
                              strict=True):
                rows[col].append(v)
    mlflow.log_table(rows, artifact_file="evaluation.json")
    shown = [m for m in ("ndcg", "recall", "precision", "map") if m in metrics.METRICS]
    fig, axes = plt.subplots(1, len(shown), figsize=(3.2 * len(shown), 3), squeeze=False)
    for ax, m in zip(axes[0], shown, strict=True):
        names = list(scored)
        vals = [scored[n][m] for n in names]
        ci = [cis[n].get(m, (v, v)) for n, v in zip(names, vals, strict=True)]
        # max(0, .): a bootstrap bound can sit a rounding error on the wrong side of the mean
        err = [[max(0.0, v - lo) for v, (lo, _) in zip(vals, ci, strict=True)],
               [max(0.0, hi - v) for v, (_, hi) in zip(vals, ci, strict=True)]]
        ax.bar(names, vals, yerr=err, capsize=4, color=["#3b6ea5", "#b0b0b0", "#e39c37"][
            :len(names)])
        ax.set_title(f"{m}@{k}")
    fig.suptitle(f"holdout, {scored['model']['users']:,} users, 95% intervals")
    fig.tight_layout()
    mlflow.log_figure(fig, "evaluation.png")
    plt.close(fig)


def _write_factors(spark, lakehouse, model_version, model, item_ids, conf_all, users, now,
                   source) -> None:
    """The model's trained ``item_factors`` and the served ``user_factors`` (every user of
    the window, solved from the whole window with the model's fold-in rule)."""
    import pandas as pd

    ts = F.lit(now).cast("timestamp")
    meta = {"lakerec.model_version": model_version}
    pdf = pd.DataFrame({"item_id": item_ids, "item_idx": model.item_idx.astype(np.int32),
                        "factors": [v.tolist() for v in model.y]})
    item_df = spark.createDataFrame(pdf, "item_id string, item_idx int, factors array<float>") \
        .select("item_id", "item_idx", "factors", F.lit(source).alias("source"),
                ts.alias("updated_at"), F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, item_df, lakehouse, ITEM_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/items", 1))
    hist = conf_all.select("user_id", "item_idx", "r")
    vecs = trainers.fold_in_users(spark, hist, model.y, model.item_idx, rule=model.rule)
    user_df = vecs.join(users, "user_id").select(
        "user_id", "user_idx", "factors", F.lit(source).alias("source"),
        ts.alias("updated_at"), F.lit(model_version).cast("long").alias("model_version"))
    delta.write(spark, user_df, lakehouse, USER_FACTORS, mode="overwrite",
                partition={"model_version": model_version}, metadata=meta,
                txn=delta.Txn(f"lakerec.train/v{model_version}/users", 1))


def report_dict(r: TrainReport) -> dict:
    return asdict(r)
