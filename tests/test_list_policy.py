"""The one list policy: a brute-force reference of its rules, and batch = stream on real tables.

``score`` (Spark, on the executors) and the stream's refresh (the driver) both make lists with
:func:`pipelines.serving.policy.recommend`; the second half builds one lakehouse, scores it,
then refreshes the same users from the same history as the stream does, and holds the two
lists equal: items, ranks, sources (``als`` in batch is ``fold_in`` in the stream) and scores.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.batch.score import load_serving_model, score
from pipelines.batch.train import train
from pipelines.dev.generate import SyntheticSpec
from pipelines.model.card import DEFAULTS, ModelCard
from pipelines.model.trainer import FoldInRule
from pipelines.serving import policy
from pipelines.serving.model import ServingModel
from pipelines.storage import delta, tracking
from pipelines.streaming.microbatch import refresh, user_history
from schemas.tables import INTERACTIONS, ITEM_PLACEMENTS, RECOMMENDATIONS, USER_FACTORS
from tests.conftest import ingested

# --------------------------------------------------------------------------- the rules


def reference(items, trained, placed, pop, vectors, seen, *, k, slots, source):
    """The policy's rules written out per user with full sorts (see the policy's docstring)."""
    factors = {**placed, **{i: v for i, v in trained.items()}}
    out = []
    for u, (vec, s) in enumerate(zip(vectors, seen, strict=True)):
        lst = []
        if vec is not None and factors:
            cand = sorted((i for i in factors if i not in s),
                          key=lambda i: (-np.float32(np.dot(vec, factors[i])), i))
            main = [(i, "content" if i in placed and i not in trained else source)
                    for i in cand[:k]]
            n = min(slots, k) if [i for i in placed if i not in trained] else 0
            if n:
                new = sorted((i for i in placed if i not in trained and i not in s),
                             key=lambda i: (-np.float32(np.dot(vec, placed[i])), i))[:n]
                head = main[:k - n]
                head += [(i, "content") for i in new if i not in {h for h, _ in head}]
                taken = {h for h, _ in head}
                main = (head + [e for e in main[k - n:] if e[0] not in taken])[:k]
            lst = main
        listed = {i for i, _ in lst}
        fill = sorted((i for i in pop if i not in s and i not in listed),
                      key=lambda i: (-pop[i], i))
        lst += [(i, "popular") for i in fill[:k - len(lst)]]
        out += [(u, r + 1, i, src) for r, (i, src) in enumerate(lst)]
    return out


@st.composite
def worlds(draw):
    rank = draw(st.integers(1, 3))
    n = draw(st.integers(1, 12))
    ids = [f"i{j:02d}" for j in range(n)]
    vals = st.integers(-3, 3).map(float)  # small integers: exact float32 dot products, ties
    kind = draw(st.lists(st.sampled_from(["trained", "placed", "none"]), min_size=n,
                         max_size=n))
    trained = {i: np.array(draw(st.lists(vals, min_size=rank, max_size=rank)), np.float32)
               for i, t in zip(ids, kind, strict=True) if t == "trained"}
    placed = {i: np.array(draw(st.lists(vals, min_size=rank, max_size=rank)), np.float32)
              for i, t in zip(ids, kind, strict=True) if t == "placed"}
    pop = {i: float(draw(st.integers(1, 4))) / 4 for i in ids if draw(st.booleans())}
    b = draw(st.integers(1, 6))
    vectors = [np.array(draw(st.lists(vals, min_size=rank, max_size=rank)), np.float32)
               if draw(st.booleans()) else None for _ in range(b)]
    seen = [set(draw(st.lists(st.sampled_from(ids), max_size=n))) for _ in range(b)]
    return ids, rank, trained, placed, pop, vectors, seen, draw(st.integers(1, 6)), \
        draw(st.integers(0, 3))


@settings(max_examples=300, deadline=None)
@given(worlds())
def test_the_policy_follows_its_rules(world):
    ids, rank, trained, placed, pop, vectors, seen, k, slots = world
    t_ids = sorted(trained)
    model = ServingModel.build(
        1, ModelCard(), FoldInRule(1.0, 0.1),
        trained=(t_ids, np.array([trained[i] for i in t_ids]).reshape(-1, rank)),
        placed=(sorted(placed), np.array([placed[i] for i in sorted(placed)]).reshape(-1, rank)),
        popular=(sorted(pop), np.array([pop[i] for i in sorted(pop)])))
    has = np.array([v is not None for v in vectors])
    vec = np.array([v if v is not None else np.zeros(rank) for v in vectors], np.float32)
    rows = [sorted(model.row[i] for i in s if i in model.row) for s in seen]
    indptr = np.concatenate([[0], np.cumsum([len(r) for r in rows])]).astype(np.int64)
    flat = np.array([x for r in rows for x in r], np.int64)
    got = policy.recommend(model, vec, has, (indptr, flat), k=k, slots=slots,
                           model_source="als")
    want = reference(ids, trained, placed, pop, vectors, seen, k=k, slots=slots, source="als")
    assert [(int(u), int(r), model.items[i], s) for u, r, i, s in
            zip(got.user, got.rank, got.row, got.source, strict=True)] == want


def test_popularity_is_a_share_of_the_windows_users():
    ids, scores = policy.popularity(["b", "a", "c"], [2, 4, 1], 8)
    assert ids == ["a", "b", "c"] and scores.tolist() == [0.5, 0.25, 0.125]
    card = ModelCard(window_days=10).with_window(dt.date(2024, 6, 30))
    w = policy.popularity_window(card, latest=None)
    assert (w.start, w.end, w.max_dt) == (card.start, card.end, card.as_of)
    assert policy.popularity_window(card, latest=None, days=3).start == \
        card.end - dt.timedelta(days=3)
    latest = dt.datetime(2024, 7, 1, tzinfo=dt.UTC)
    assert policy.popularity_window(None, latest=latest).start == \
        latest - dt.timedelta(days=DEFAULTS.popularity_days)
    tuned = dataclasses.replace(card, popularity_days=4)
    assert policy.popularity_window(tuned, latest=None).start == card.end - dt.timedelta(days=4)


# --------------------------------------------------------------------------- batch = stream

SPEC = SyntheticSpec(users=250, items=70, events=12_000, days=8, clusters=5, seed=11,
                     start=dt.date(2024, 4, 1))
PARAMS = ModelCard(rank=8, max_iter=6, window_days=10, holdout_days=2, k=6,
                   promote_if="better", min_eval_users=1, max_holdout_days=2)


@pytest.fixture(scope="module")
def scored(spark, tmp_path_factory):
    lh = str(tmp_path_factory.mktemp("policy"))
    ingested(spark, lh, SPEC)
    report = train(spark, lh, PARAMS)
    assert report.promoted
    # three new items placed by hand (as `lakerec place` writes them): the slots compete too
    rng = np.random.default_rng(0)
    rows = [(f"new-{j}", rng.standard_normal(PARAMS.rank).astype(np.float32).tolist(), 1,
             dt.datetime(2024, 4, 9, tzinfo=dt.UTC), report.model_version) for j in range(3)]
    df = spark.createDataFrame(rows, "item_id string, factors array<float>, encoder_version "
                                     "long, placed_at timestamp, model_version long")
    delta.write(spark, df, lh, ITEM_PLACEMENTS, mode="overwrite",
                partition={"model_version": report.model_version})
    # a user the model has no vector for, who touched only an item it never trained on:
    # popular in batch and in the stream alike
    at = dt.datetime(2024, 4, 8, 12, tzinfo=dt.UTC)
    delta.append_arrow(lh, INTERACTIONS, pa.table({
        "event_id": ["cold-1"], "user_id": ["cold-user"], "item_id": ["lonely-item"],
        "event_type": ["view"], "value": pa.array([None], pa.float64()), "ts": [at],
        "session_id": pa.array([None], pa.string()), "source": pa.array([None], pa.string()),
        "ingest_source": ["test"], "ingest_id": ["test"], "ingested_at": [at],
        "dt": [dt.date(2024, 4, 8)]}))
    rep = score(spark, lh, k=PARAMS.k)
    assert {"als", "content", "popular"} <= set(rep.by_source)
    return lh


def test_a_batch_list_equals_the_stream_list_for_the_same_history(spark, scored):
    lh = scored
    ref = tracking.get_alias(lh)
    model = load_serving_model(spark, lh, ref)
    # the precondition of "the same history": every event lies in the model's window, so the
    # vectors training solved (score's) and the stream's come from the same events
    inter = delta.arrow_dataset(lh, INTERACTIONS).to_table(columns=["ts"])
    assert pc.min(inter["ts"]).as_py() >= model.card.start
    assert pc.max(inter["ts"]).as_py() < model.card.end
    recs = delta.arrow_dataset(lh, RECOMMENDATIONS).to_table().to_pandas()
    users = sorted(recs["user_id"].unique())
    vectors, rows = refresh(model, user_history(lh, users), users, k=PARAMS.k,
                            new_item_slots=1)
    # the stream's vectors are the very bits training solved for score (one solver, one rule)
    served = delta.arrow_dataset(lh, USER_FACTORS).to_table(
        filter=pc.field("model_version") == ref.version).to_pandas()
    assert set(served["user_id"]) == set(vectors)
    for u, v in zip(served["user_id"], served["factors"], strict=True):
        assert np.array_equal(np.asarray(v, np.float32), vectors[u]), u
    stream = sorted((u, r, i, {"fold_in": "als"}.get(s, s), sc) for u, r, i, sc, s in rows)
    batch = sorted(zip(recs["user_id"], recs["rank"], recs["item_id"], recs["source"],
                       recs["score"], strict=True))
    assert len(batch) == len(users) * PARAMS.k
    assert [b[:4] for b in batch] == [s[:4] for s in stream]
    assert [b[4] for b in batch] == [np.float32(s[4]) for s in stream]
    sources = {b[3] for b in batch}
    assert {"als", "content", "popular"} <= sources
