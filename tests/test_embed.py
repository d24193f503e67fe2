"""The embed job on real tables: the real ONNX MiniLM in a Spark pandas UDF, incremental
re-embedding, similar items against a numpy reference, cold items placed by their text and
served by ``score`` and the stream."""

from __future__ import annotations

import dataclasses
import datetime as dt
import os

import numpy as np
import pytest
from pyspark.sql import functions as F

from jobs import embed as embed_job
from pipelines import content, delta, encoder, topk, tracking
from pipelines.embed import (
    embed_items,
    evaluate_champion,
    similar_items,
    write_similar_items,
)
from pipelines.generate import SyntheticSpec
from pipelines.score import score
from pipelines.stream import load_model, refresh
from pipelines.train import TrainParams, train
from schemas.tables import (
    ITEM_EMBEDDINGS,
    ITEM_FACTORS,
    ITEMS,
    RECOMMENDATIONS,
    SIMILAR_ITEMS,
)
from tests.conftest import ingested
from tests.test_encoder import BUILD

SPEC = SyntheticSpec(users=300, items=90, events=15_000, days=8, clusters=4, seed=5,
                     start=dt.date(2024, 2, 1), new_item_fraction=0.12)
PARAMS = TrainParams(rank=8, max_iter=6, window_days=8, holdout_days=2, k=5)


def arrow(lh, spec, **filters):
    import pyarrow.compute as pc

    flt = None
    for c, v in filters.items():
        f = pc.field(c) == v
        flt = f if flt is None else flt & f
    return delta.arrow_dataset(lh, spec).to_table(filter=flt).to_pandas()


@pytest.fixture(scope="module")
def embedded(spark, tmp_path_factory):
    lh = str(tmp_path_factory.mktemp("lh"))
    ingested(spark, lh, SPEC)
    assert train(spark, lh, PARAMS).promoted
    cfg = embed_job.parse(["--lakehouse", lh, "--k", "5", "--similar", "4", "--holdout", "0.2"])
    assert embed_job.body(spark, cfg) == 0
    return lh, cfg


def test_every_item_is_embedded_as_the_standalone_encoder_does(spark, embedded):
    lh, _ = embedded
    enc = tracking.get_alias(lh, name=tracking.ENCODER_MODEL)
    mv = tracking.client(lh).get_model_version(tracking.ENCODER_MODEL, str(enc.version))
    assert mv.tags["variant"] == "int8" and len(mv.tags["sha256"]) == 64
    rows = arrow(lh, ITEM_EMBEDDINGS).sort_values("item_id", ignore_index=True)
    items = arrow(lh, ITEMS).sort_values("item_id", ignore_index=True)
    assert list(rows["item_id"]) == list(items["item_id"])
    assert set(rows["encoder_version"]) == {enc.version}
    texts = [encoder.item_text(t, c, d) for t, c, d in
             zip(items["title"], items["category"], items["description"], strict=True)]
    # int8 with dynamic quantisation scales activations per batch, so an item's vector
    # depends a little on its batch-mates: held to the fp32 model (exact in the fp32 test)
    ref = encoder.Encoder.load(BUILD, variant="fp32", threads=1).encode(texts)
    got = np.stack(rows["embedding"].to_numpy())
    cos = (got * ref).sum(1)
    assert cos.mean() >= 0.98 and cos.min() >= 0.9
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    import hashlib
    assert list(rows["text_sha256"]) == [hashlib.sha256(t.encode()).hexdigest() for t in texts]


def test_unchanged_items_are_not_embedded_again(spark, embedded):
    lh, cfg = embedded
    versions = (delta.latest_version(lh, ITEM_EMBEDDINGS), delta.latest_version(lh, SIMILAR_ITEMS))
    assert embed_job.body(spark, dataclasses.replace(cfg, evaluate=False)) == 0
    assert versions == (delta.latest_version(lh, ITEM_EMBEDDINGS),
                        delta.latest_version(lh, SIMILAR_ITEMS))
    assert len(tracking.encoder_versions(lh)) == 1  # the same export is registered once


def test_only_items_whose_text_changed_are_embedded_again(spark, embedded):
    lh, _ = embedded
    version = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    bundle = encoder.Bundle.from_folder(
        tracking.encoder_folder(lh, version, os.path.join(lh, "_encoders")))
    before = arrow(lh, ITEM_EMBEDDINGS).set_index("item_id")
    changed = delta.read(spark, lh, ITEMS).where(F.col("item_id") == "item-000007") \
        .withColumn("description", F.lit("A completely new description about jazz vinyl."))
    delta.replace_rows(spark, changed, lh, ITEMS, on=["item_id"])
    r = embed_items(spark, lh, bundle=bundle, encoder_version=version)
    assert (r.embedded, r.items) == (1, SPEC.items)
    after = arrow(lh, ITEM_EMBEDDINGS).set_index("item_id")
    assert len(after) == SPEC.items
    diff = [i for i in after.index
            if after.at[i, "text_sha256"] != before.at[i, "text_sha256"]]
    assert diff == ["item-000007"]
    same = after.index != "item-000007"
    assert (after["embedded_at"][same] == before["embedded_at"][after.index[same]]).all()


def test_a_new_encoder_version_embeds_everything_into_its_own_partition(spark, embedded):
    lh, cfg = embedded
    old = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    try:
        assert embed_job.body(spark, dataclasses.replace(cfg, variant="fp32",
                                                         evaluate=False)) == 0
        new = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
        assert new != old
        rows = arrow(lh, ITEM_EMBEDDINGS)
        assert (rows.groupby("encoder_version").size() == SPEC.items).all()
        a = np.stack(rows[rows.encoder_version == old].sort_values("item_id")["embedding"])
        b = np.stack(rows[rows.encoder_version == new].sort_values("item_id")["embedding"])
        assert (a * b).sum(1).mean() >= 0.98  # int8 vs fp32 on the catalog's own text
        # fp32 does not depend on batching: the UDF's rows are the standalone encoder's
        items = arrow(lh, ITEMS).sort_values("item_id")
        texts = [encoder.item_text(t, c, d) for t, c, d in
                 zip(items["title"], items["category"], items["description"], strict=True)]
        ref = encoder.Encoder.load(BUILD, variant="fp32", threads=1).encode(texts)
        np.testing.assert_allclose(b, ref, atol=2e-5)
    finally:
        tracking.set_alias(lh, old, name=tracking.ENCODER_MODEL)


def test_similar_items_match_a_brute_force_reference(spark, embedded):
    lh, _ = embedded
    version = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    # an earlier test changed an item's text: the table follows the embeddings it came from
    assert not write_similar_items(spark, lh, encoder_version=version, n=4).skipped
    assert write_similar_items(spark, lh, encoder_version=version, n=4).skipped
    emb = arrow(lh, ITEM_EMBEDDINGS, encoder_version=version).sort_values("item_id",
                                                                          ignore_index=True)
    ids = list(emb["item_id"])
    mat = np.stack(emb["embedding"]).astype(np.float32)
    ref = topk.brute_force(mat, mat, [np.array([i]) for i in range(len(ids))], 4,
                           topk.order_key(ids))
    expected = sorted((ids[u], q + 1, ids[i]) for u, top in enumerate(ref)
                      for q, (i, _) in enumerate(top))
    got = arrow(lh, SIMILAR_ITEMS, encoder_version=version)
    assert sorted(zip(got["item_id"], got["rank"], got["similar_item_id"], strict=True)) == expected
    # and the Spark function on its own, from any DataFrame of unit vectors
    df = spark.createDataFrame([(i, v.tolist()) for i, v in zip(ids, mat, strict=True)],
                               "item_id string, embedding array<float>")
    again = similar_items(spark, df, n=4).collect()
    assert sorted((r.item_id, r.rank, r.similar_item_id) for r in again) == expected
    assert all(r.item_id != r.similar_item_id for r in again)


def test_cold_items_are_placed_by_the_ridge_map_and_recommended(spark, embedded):
    lh, _ = embedded
    champ = tracking.get_alias(lh)
    enc = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    rep = score(spark, lh, k=5)
    # one slot per list for the user's best placed item: every ALS user gets one
    assert rep.by_source["content"] >= rep.by_source["als"] / 4 > 0
    f = arrow(lh, ITEM_FACTORS, model_version=champ.version)
    warm, cold = f[f.source == "als"], f[f.source == "content"]
    catalog = set(arrow(lh, ITEMS)["item_id"])
    assert set(cold["item_id"]) == catalog - set(warm["item_id"]) and len(cold) >= 5
    # the mapped factors are the numpy ridge map of their embeddings
    emb = arrow(lh, ITEM_EMBEDDINGS, encoder_version=enc).set_index("item_id")["embedding"]
    warm = warm.sort_values("item_id")
    w = content.fit_ridge(np.stack(emb[warm["item_id"]]), np.stack(warm["factors"]), reg=1.0)
    cold = cold.sort_values("item_id")
    np.testing.assert_allclose(np.stack(cold["factors"]),
                               content.map_factors(np.stack(emb[cold["item_id"]]), w), atol=1e-4)
    recs = arrow(lh, RECOMMENDATIONS)
    assert set(recs[recs.source == "content"]["item_id"]) <= set(cold["item_id"])
    assert not set(recs[recs.source == "als"]["item_id"]) & set(cold["item_id"])
    # scoring again changes nothing: the placement and the scores are idempotent
    v = (delta.latest_version(lh, ITEM_FACTORS), delta.latest_version(lh, RECOMMENDATIONS))
    assert score(spark, lh, k=5).skipped
    assert v == (delta.latest_version(lh, ITEM_FACTORS), delta.latest_version(lh, RECOMMENDATIONS))


def test_the_stream_ranks_placed_items_but_folds_in_over_als_items_only(spark, embedded):
    lh, _ = embedded
    score(spark, lh, k=5)
    model = load_model(lh)
    assert model.content.sum() >= 5
    ys = model.y[~model.content].astype(np.float64)
    np.testing.assert_allclose(model.yty, ys.T @ ys, rtol=1e-6)
    # a user who bought the placed item nearest to a direction: the others of its kind rank
    cold = [model.item_ids[i] for i in np.flatnonzero(model.content)]
    import pandas as pd
    hist = pd.DataFrame({"user_id": "u", "item_id": [model.item_ids[0], cold[0]],
                         "event_type": "purchase", "value": None})
    vectors, rows = refresh(model, hist, ["u"], k=len(model.item_ids))
    assert "u" in vectors
    by_item = {r[2]: r[4] for r in rows}
    assert cold[0] not in by_item  # seen
    assert {by_item[i] for i in cold[1:]} == {"content"}
    assert {s for i, s in by_item.items() if i not in cold} == {"fold_in"}
    # the placed item in the history did not enter the solve: same vector without it
    v2, top5 = refresh(model, hist.iloc[:1], ["u"], k=5)
    np.testing.assert_allclose(vectors["u"], v2["u"], rtol=1e-5)
    # the last slot goes to the best placed item unless one already ranks in the first four
    _, plain = refresh(model, hist.iloc[:1], ["u"], k=5, new_item_slots=0)
    scores = model.y[model.content_rows] @ v2["u"]
    best = model.item_ids[model.content_rows[np.argmax(scores)]]
    head = [r[2] for r in plain[:4]]
    want = head + [best] if best not in head else [r[2] for r in plain]
    assert [r[2] for r in top5] == want and top5[-1][4] == "content"


def test_new_item_slots_by_hand(spark):
    from pipelines.score import with_new_item_slots

    als = spark.createDataFrame(
        [("a", 1, "w1", 0.9, "als"), ("a", 2, "n1", 0.8, "als"), ("a", 3, "w2", 0.7, "als"),
         ("b", 1, "w1", 0.9, "als"), ("b", 2, "w2", 0.8, "als"), ("b", 3, "w3", 0.7, "als")],
        "user_id string, rank int, item_id string, score float, source string")
    new = spark.createDataFrame([("a", 1, "n1", 0.8), ("a", 2, "n2", 0.1), ("b", 1, "n2", 0.2),
                                 ("b", 2, "n1", 0.1)],
                                "user_id string, rank int, item_id string, score float")
    got = sorted(tuple(r) for r in with_new_item_slots(als, new, k=3, slots=2).select(
        "user_id", "rank", "item_id", "source").collect())
    # a: head w1; slots n1 (already ranked second), n2; b: head w1; slots n2, n1
    assert got == [("a", 1, "w1", "als"), ("a", 2, "n1", "content"), ("a", 3, "n2", "content"),
                   ("b", 1, "w1", "als"), ("b", 2, "n2", "content"), ("b", 3, "n1", "content")]
    # one slot: a's best placed item already ranks second, so the slot goes back to ALS
    one = sorted(tuple(r) for r in with_new_item_slots(als, new.where("rank = 1"), k=3,
                                                        slots=1).select(
        "user_id", "rank", "item_id").collect())
    assert one == [("a", 1, "w1"), ("a", 2, "n1"), ("a", 3, "w2"),
                   ("b", 1, "w1"), ("b", 2, "w2"), ("b", 3, "n2")]


def test_cold_start_evaluation_is_logged_and_text_beats_random(embedded):
    lh, cfg = embedded
    champ = tracking.get_alias(lh)
    enc = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    ev = evaluate_champion(lh, model_version=champ.version, encoder_version=enc, k=5,
                           holdout=0.2)
    warm = arrow(lh, ITEM_FACTORS, model_version=champ.version, source="als")
    assert ev.items == round(0.2 * len(warm))
    assert 0 <= ev.recall_random < ev.recall_content <= 1 and ev.recall_true > ev.recall_random
    runs = tracking.client(lh).search_runs([tracking.experiment_id(lh)],
                                           "attributes.run_name = 'cold-start-eval'")
    assert runs and "cold_start_recall_at_5_content" in runs[0].data.metrics


def test_usage_errors_exit_2_before_anything_runs(tmp_path, capsys):
    lh = str(tmp_path / "lh")
    assert embed_job.main(["--lakehouse", lh, "--variant", "fp16"]) == 2
    assert embed_job.main(["--lakehouse", lh, "--encoder-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lakerec embed: error: no encoder export") and \
        "make models" in err[-1]
    assert not os.path.exists(lh)


def test_a_running_stream_picks_up_newly_placed_items(spark, embedded):
    from pipelines.embed import place_cold_items
    from pipelines.stream import StreamContext

    lh, _ = embedded
    score(spark, lh, k=5)
    ctx = StreamContext(lh, "q", model_refresh_s=0.0)
    first = ctx.serving_model()
    assert ctx.serving_model() is first  # nothing changed: the cached model
    champ = tracking.get_alias(lh).version
    enc = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    place_cold_items(spark, lh, model_version=champ, encoder_version=enc, reg=5.0)
    again = ctx.serving_model()
    assert again is not first and again.version == first.version
    moved = again.y[again.content_rows] - first.y[first.content_rows]
    assert np.abs(moved).max() > 0  # the re-placed factors (another ridge penalty)
