"""The event-type table is the one declaration: schema, validation, weights, batch and stream."""

from __future__ import annotations

import datetime as dt
import json
from importlib import resources

import numpy as np
import pandas as pd
import pytest
from pyspark.sql import functions as F

from pipelines.batch import trainers, validate
from pipelines.model.card import ModelCard
from pipelines.serving.model import ServingModel
from pipelines.streaming.microbatch import refresh
from schemas import EVENT_RULES, events


def test_the_json_schema_is_derived_from_the_table():
    path = resources.files("schemas").joinpath("event.schema.json")
    committed = json.loads(path.read_text())
    assert events.render_schema(committed) == committed, \
        "event.schema.json is stale: run `python -m schemas.events`"
    assert committed["properties"]["event_type"]["enum"] == list(EVENT_RULES.event_types)


def test_numpy_and_spark_compute_the_same_confidence(spark):
    rng = np.random.default_rng(0)
    types = [*events.names(), "hover"]
    n = 400
    rows = [(f"u{rng.integers(20)}", f"i{rng.integers(15)}", types[rng.integers(len(types))],
             float(rng.integers(1, 11)) / 2) for _ in range(n)]
    weights = {"view": 1.0, "click": 2.5, "purchase": 8.0}  # add_to_cart left out: weighs 0
    ev = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, "
                                     "value double")
    got = {(r.user_id, r.item_id): r.r for r in
           trainers.confidence(ev, weights=weights).collect()}
    pdf = pd.DataFrame(rows, columns=["user_id", "item_id", "event_type", "value"])
    pdf["r"] = events.event_r(pdf["event_type"].to_numpy(), pdf["value"].to_numpy(), weights)
    want = pdf.groupby(["user_id", "item_id"])["r"].sum()
    assert got == {k: v for k, v in want.items() if v > 0}


@pytest.fixture
def share_type(monkeypatch):
    """A new event type added the one way there is: a line in the table."""
    monkeypatch.setattr(events, "EVENT_TYPES",
                        (*events.EVENT_TYPES, events.EventType("share", 3.0)))


def test_a_new_event_type_weighs_the_same_in_training_and_in_the_stream(spark, share_type):
    card = ModelCard()  # default weights come from the table
    assert card.weights["share"] == 3.0
    assert "share" in EVENT_RULES.event_types
    ev = spark.createDataFrame([("u", "a", "share", None), ("u", "b", "view", None)],
                               "user_id string, item_id string, event_type string, "
                               "value double")
    batch = {r.item_id: r.r for r in trainers.confidence(ev, weights=card.weights).collect()}
    assert batch == {"a": 3.0, "b": 1.0}
    # the stream's fold-in sums the same r: with one item, x_u solves a 1-d equation
    y = np.array([[1.0], [1.0]], np.float32)
    model = ServingModel.build(1, card, trainers.get("als").fold_in_rule(card),
                               trained=(["a", "b"], y), placed=([], np.zeros((0, 1))),
                               popular=([], np.zeros(0)))
    history = pd.DataFrame({"user_id": ["u"], "item_id": ["a"], "event_type": ["share"],
                            "value": [None]})
    vectors, _ = refresh(model, history, ["u"], k=1, new_item_slots=0)
    c = 1 + card.alpha * batch["a"]  # (YᵀY + (c - 1) y yᵀ + λ) x = c y
    want = c / (2 + (c - 1) + card.reg)
    assert vectors["u"][0] == pytest.approx(want, rel=1e-6)
    # and validation accepts it, in ingest and in the stream alike (one checker)
    lines = spark.createDataFrame([(json.dumps({
        "event_id": "e", "user_id": "u", "item_id": "a", "event_type": "share",
        "ts": "2024-05-01T10:00:00Z"}),)], "raw string")
    out = validate.check_events(lines, max_ts=F.lit(dt.datetime(2024, 5, 2, tzinfo=dt.UTC)))
    assert out.first()["reason"] is None


def test_the_rules_fingerprint_follows_the_table(share_type):
    with_share = EVENT_RULES.fingerprint()
    events.EVENT_TYPES = events.EVENT_TYPES[:-1]
    assert EVENT_RULES.fingerprint() != with_share


def test_weights_must_name_weighted_types():
    with pytest.raises(ValueError, match="bogus"):
        ModelCard(weights={"bogus": 1.0})
    with pytest.raises(ValueError, match="rating"):
        ModelCard(weights={"rating": 1.0})
    with pytest.raises(ValueError, match="finite"):
        ModelCard(weights={"view": float("nan")})


def test_the_model_card_round_trips_through_mlflow_params():
    card = ModelCard(rank=8, alpha=2.0, reg=0.3, weights={"view": 1.0, "purchase": 4.0},
                     window_days=30, trainer="ease", half_life_days=14.5, ease_lambda=80.0,
                     promote_if="better", popularity_days=7, min_eval_users=3) \
        .with_window(dt.date(2024, 6, 28))
    params = card.to_params()
    assert all(isinstance(v, str) for v in params.values())
    assert ModelCard.from_params(params) == card
    assert card.end - card.start == dt.timedelta(days=card.window_days)
    # a run logged before a field existed reads back with that field's default
    assert ModelCard.from_params({"rank": "8"}) == ModelCard(rank=8)
    # an unset (data-chosen) window is not logged and reads back unset
    assert "window_days" not in ModelCard().to_params()
    with pytest.raises(ValueError, match="chosen from the data"):
        ModelCard().with_window(dt.date(2024, 6, 28))
    with pytest.raises(ValueError, match="promote_if"):
        ModelCard(promote_if="always")
