"""Tuning, the sized holdout and the gate: pure search logic, then real trainings.

The hygiene test is the one that matters: two lakehouses identical before the promotion
holdout and different inside it must see identical tuning trials (the search never looks at
the holdout), while their holdout metrics differ (the holdout is really different).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time

import numpy as np
import pytest
from pyspark.sql import functions as F

from pipelines.batch import indexing, split
from pipelines.batch.score import score
from pipelines.batch.train import train
from pipelines.dev.generate import SyntheticSpec
from pipelines.model import tuning
from pipelines.model.card import ModelCard
from pipelines.storage import delta, tracking
from schemas.tables import INTERACTIONS, ITEM_FACTORS, ITEM_INDEX, RECOMMENDATIONS, USER_INDEX
from tests.conftest import ingested

# ------------------------------------------------------------------------------ pure search


def test_the_search_starts_from_the_base_and_keeps_the_best_within_its_budget():
    base = ModelCard(window_days=28, reg=0.05)
    seen = []

    def score(card):
        seen.append(card)
        return {"ndcg": -abs(np.log(card.reg / 0.1))}

    best, trials = tuning.search(base, score, tuning.Budget(trials=25, seed=3),
                                 windows=[14, 28])
    assert trials[0].settings == {} and seen[0] == base
    assert 1 < len(trials) <= 25
    assert best == dataclasses.replace(base, **max(trials, key=lambda t: t.metrics["ndcg"])
                                       .settings)
    assert abs(np.log(best.reg / 0.1)) <= abs(np.log(base.reg / 0.1))
    for t in trials[1:]:
        lo, hi = tuning.SPACES["als"]["reg"][1]
        assert lo <= t.settings["reg"] <= hi and t.settings["window_days"] in (14, 28)
        assert t.settings["rank"] in tuning.SPACES["als"]["rank"][1]


def test_a_search_stops_when_its_time_is_spent():
    def slow(card):
        time.sleep(0.2)
        return {"ndcg": 0.0}

    _, trials = tuning.search(ModelCard(window_days=28), slow,
                              tuning.Budget(trials=50, minutes=0.5 / 60), windows=[28])
    assert 1 <= len(trials) <= 4


def test_ties_keep_the_base_and_ease_searches_its_own_space():
    best, trials = tuning.search(ModelCard(trainer="ease", window_days=21),
                                 lambda c: {"ndcg": 0.5}, tuning.Budget(trials=4),
                                 windows=[21])
    assert best == ModelCard(trainer="ease", window_days=21)
    assert all(set(t.settings) <= {"ease_lambda", "window_days"} for t in trials)


def test_window_choices_are_weeks_around_the_base_within_bounds():
    assert tuning.window_choices(28, longest=730) == [7, 14, 28, 56]
    assert tuning.window_choices(30, longest=40, least=10) == [10, 14, 28, 30, 40]
    assert all(d >= 22 for d in tuning.window_choices(28, longest=730, least=22))


def test_every_trainer_is_a_trained_source_of_the_list_policy():
    from pipelines.batch import trainers
    from pipelines.serving import policy

    assert set(trainers.TRAINERS) == set(policy.TRAINED_SOURCES)
    assert set(tuning.SPACES) <= set(trainers.TRAINERS)


# ------------------------------------------------------------------------------- real runs
# (the tests below train for real: about four minutes on 2 cores)

SPEC = SyntheticSpec(users=300, items=60, events=14_000, days=12, clusters=4, seed=5,
                     start=dt.date(2024, 3, 1))
CARD = ModelCard(rank=4, max_iter=4, window_days=12, holdout_days=2, k=5,
                 promote_if="better", min_eval_users=1, max_holdout_days=2)
BUDGET = tuning.Budget(trials=2, minutes=10, seed=2)


def _lakehouse(spark, lh, *, drop_holdout_share: float, ids_from=None) -> None:
    """SPEC's lakehouse; ``drop_holdout_share`` of the users lose their holdout events. The
    id indexes are seeded from ``ids_from`` (the other lakehouse) so both assign alike."""
    ingested(spark, lh, SPEC)
    src = ids_from or lh
    ev = delta.read(spark, src, INTERACTIONS)
    indexing.update_index(spark, lh, USER_INDEX, ev.select("user_id"))
    indexing.update_index(spark, lh, ITEM_INDEX, ev.select("item_id"))
    if drop_holdout_share:
        from deltalake import DeltaTable

        from pipelines.batch.train import latest_date

        cutoff = latest_date(lh) + dt.timedelta(days=1 - CARD.holdout_days)
        DeltaTable(delta.table_path(lh, INTERACTIONS)).delete(
            f"ts >= '{cutoff.isoformat()}T00:00:00Z' AND user_id > "
            f"'user-{int(SPEC.users * (1 - drop_holdout_share)):06d}'")


@pytest.fixture(scope="module")
def twins(spark, tmp_path_factory):
    a = str(tmp_path_factory.mktemp("twin_a"))
    b = str(tmp_path_factory.mktemp("twin_b"))
    _lakehouse(spark, a, drop_holdout_share=0)
    _lakehouse(spark, b, drop_holdout_share=0.5, ids_from=a)
    progress = []
    ra = train(spark, a, CARD, tune=BUDGET, on_trial=lambda t, best: progress.append(t))
    rb = train(spark, b, CARD, tune=BUDGET)
    return a, b, ra, rb, progress


def test_tuning_never_sees_the_promotion_holdout(spark, twins):
    a, b, ra, rb, _ = twins
    # the twins really differ inside the holdout, and nowhere before it
    ev_a, ev_b = delta.read(spark, a, INTERACTIONS), delta.read(spark, b, INTERACTIONS)
    cut = dt.datetime.fromisoformat(ra.window[1])
    assert ev_a.where(F.col("ts") >= F.lit(cut)).count() > \
        ev_b.where(F.col("ts") >= F.lit(cut)).count() > 0
    before = ["user_id", "item_id", "event_type", "ts"]
    assert ev_a.where(F.col("ts") < F.lit(cut)).select(before) \
        .exceptAll(ev_b.where(F.col("ts") < F.lit(cut)).select(before)).isEmpty()
    assert ra.metrics != pytest.approx(rb.metrics)

    def trials(lh, run_id):
        c = tracking.client(lh)
        kids = c.search_runs([tracking.experiment_id(lh)],
                             filter_string=f"tags.mlflow.parentRunId = '{run_id}'")
        return sorted((int(r.data.params["trial"]), {k: v for k, v in r.data.metrics.items()
                                                     if k.startswith("val_")}, r.data.params)
                      for r in kids)

    ta, tb = trials(a, ra.run_id), trials(b, rb.run_id)
    assert len(ta) == len(tb) == ra.trials == BUDGET.trials
    for (na, ma, pa), (nb, mb, pb) in zip(ta, tb, strict=True):
        assert na == nb and pa == pb
        assert ma == pytest.approx(mb, rel=1e-9, abs=1e-12)
    assert ra.settings == rb.settings


def test_the_winner_is_remembered_and_becomes_the_next_default(spark, twins):
    from jobs.train import params_from, tuned_card_settings
    from pipelines.runtime import cli

    a, _, ra, _, progress = twins
    assert [t.number for t in progress] == list(range(BUDGET.trials))
    tuned = tuned_card_settings(a)
    assert tuned["window_days"] == ra.settings["window_days"]
    assert tuned["reg"] == pytest.approx(ra.settings["reg"])
    p = cli.parser("train", "")
    from jobs.train import add_train_options

    add_train_options(p)
    args, s = cli.parse_args(p, ["--lakehouse", a], section="train")
    card = params_from(args, s, tuned=tuned)
    assert card.reg == tuned["reg"] and card.rank == tuned["rank"]
    args, s = cli.parse_args(p, ["--lakehouse", a, "--rank", "3"], section="train")
    assert params_from(args, s, tuned=tuned).rank == 3  # a flag beats the tuned default


def test_a_holdout_is_sized_to_hold_the_evaluated_users(spark, twins):
    a, *_ = twins
    card = dataclasses.replace(CARD, min_eval_users=10 ** 6, max_holdout_days=4) \
        .with_window(dt.date(2024, 3, 12))
    ev = delta.read(spark, a, INTERACTIONS)
    n = {h: split.relevant_pairs(ev, start=card.start,
                                 cutoff=card.end - dt.timedelta(days=h), end=card.end,
                                 max_users=10 ** 9).select("user_id").distinct().count()
         for h in (2, 3, 4)}
    assert split.size_holdout(ev, card) == (4, n[4])  # none suffices: the most users
    few = dataclasses.replace(card, min_eval_users=n[3])
    assert split.size_holdout(ev, few) == (3, n[3]) if n[2] < n[3] else (2, n[2])


def test_the_window_is_chosen_from_the_data(spark, twins):
    a, *_ = twins
    days = split.auto_window_days(spark, a, version=delta.latest_version(a, INTERACTIONS),
                                  as_of=dt.date(2024, 3, 12))
    assert days == 14  # 12 days of data: the shortest window, whole weeks


def test_ease_trains_competes_in_the_gate_and_serves_and_the_gate_refuses_noise(
        spark, twins):
    lh, _, ra, _, _ = twins
    if not ra.promoted:  # the tuned ALS model lost to popularity: make it the champion
        tracking.set_alias(lh, ra.model_version)
    als = tracking.get_alias(lh)
    assert als.version == ra.model_version and als.params["trainer"] == "als"
    ease = train(spark, lh, dataclasses.replace(CARD, trainer="ease", ease_lambda=20.0))
    assert ease.trainer == "ease" and ease.champion_version == als.version
    assert ease.gain["diff"] == pytest.approx(ease.metrics["ndcg"] - ease.champion["ndcg"],
                                              abs=1e-9)
    assert ease.promoted == (ease.gain["diff"] > 0)
    f = delta.read(spark, lh, ITEM_FACTORS).where(f"model_version = {ease.model_version}")
    assert {r.source for r in f.select("source").distinct().collect()} == {"ease"}
    if not ease.promoted:
        tracking.set_alias(lh, ease.model_version)
    rep = score(spark, lh, k=CARD.k)
    assert rep.model_version == ease.model_version and rep.by_source.get("ease", 0) > 0
    recs = delta.read(spark, lh, RECOMMENDATIONS)
    assert recs.where("source = 'als'").where(
        f"model_version = {ease.model_version}").isEmpty()

    # a weak challenger, when the gain must be significant, is not promoted
    weak = train(spark, lh, dataclasses.replace(CARD, promote_if="significant", seed=8,
                                                max_iter=1, rank=2))
    assert not weak.promoted and weak.champion_version == ease.model_version
    assert weak.gain["low"] <= 0 and "promote if significant" in weak.reason
    assert tracking.get_alias(lh).version == ease.model_version
    run = tracking.client(lh).get_run(weak.run_id)
    assert {"gate_diff", "gate_low", "gate_high"} <= set(run.data.metrics)
