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
from pipelines.batch.embed import (
    embed_items,
    evaluate_champion,
    similar_items,
    write_similar_items,
)
from pipelines.batch.place import place
from pipelines.batch.score import load_serving_model, score
from pipelines.batch.train import ModelCard, train
from pipelines.dev.generate import SyntheticSpec
from pipelines.model import content, encoder, topk
from pipelines.model.card import ModelCard as Card
from pipelines.model.trainer import FoldInRule
from pipelines.serving import policy
from pipelines.serving.model import ServingModel
from pipelines.storage import delta, tracking
from pipelines.streaming.microbatch import StreamContext, refresh
from schemas.tables import (
    ITEM_EMBEDDINGS,
    ITEM_FACTORS,
    ITEM_INDEX,
    ITEM_PLACEMENTS,
    ITEMS,
    RECOMMENDATIONS,
    SIMILAR_ITEMS,
)
from tests.conftest import ingested
from tests.test_encoder import BUILD

SPEC = SyntheticSpec(users=300, items=90, events=15_000, days=8, clusters=4, seed=5,
                     start=dt.date(2024, 2, 1), new_item_fraction=0.12)
PARAMS = ModelCard(rank=8, max_iter=6, window_days=8, holdout_days=2, k=5,
                   promote_if="better", min_eval_users=1, max_holdout_days=2)


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


def _placed(model):
    """(ids, vectors) of a serving model's text-placed items, from its index."""
    idx = model.placed_index
    y = idx.factors[idx.position]
    rows = model.factor_rows[len(model.trained_rows):]
    return [model.items[r] for r in rows], y


def test_cold_items_are_placed_by_the_ridge_map_and_recommended(spark, embedded):
    lh, _ = embedded
    champ = tracking.get_alias(lh)
    enc = tracking.get_alias(lh, name=tracking.ENCODER_MODEL).version
    trained_before = arrow(lh, ITEM_FACTORS, model_version=champ.version)
    index_v = delta.latest_version(lh, ITEM_INDEX)
    rep = place(spark, lh)
    assert (rep.model_version, rep.encoder_version) == (champ.version, enc) and rep.placed >= 5
    assert place(spark, lh).skipped  # same inputs: nothing to do
    cold = arrow(lh, ITEM_PLACEMENTS, model_version=champ.version)
    warm = trained_before
    catalog = set(arrow(lh, ITEMS)["item_id"])
    assert set(cold["item_id"]) == catalog - set(warm["item_id"]) and len(cold) == rep.placed
    assert set(cold["encoder_version"]) == {enc}
    # the mapped factors are the numpy ridge map of their embeddings
    emb = arrow(lh, ITEM_EMBEDDINGS, encoder_version=enc).set_index("item_id")["embedding"]
    warm = warm.sort_values("item_id")
    w = content.fit_ridge(np.stack(emb[warm["item_id"]]), np.stack(warm["factors"]), reg=1.0)
    cold = cold.sort_values("item_id")
    np.testing.assert_allclose(np.stack(cold["factors"]),
                               content.map_factors(np.stack(emb[cold["item_id"]]), w), atol=1e-4)
    rep = score(spark, lh, k=5)
    # one slot per list for the user's best placed item: every ALS user gets one
    assert rep.by_source["content"] >= rep.by_source["als"] / 4 > 0
    recs = arrow(lh, RECOMMENDATIONS)
    assert set(recs[recs.source == "content"]["item_id"]) <= set(cold["item_id"])
    assert not set(recs[recs.source == "als"]["item_id"]) & set(cold["item_id"])
    # neither place nor score touched the model: its trained factors and the index stand
    after = arrow(lh, ITEM_FACTORS, model_version=champ.version)
    assert after.sort_values("item_id").reset_index(drop=True).equals(
        trained_before.sort_values("item_id").reset_index(drop=True))
    assert set(after["source"]) == {"als"}
    assert delta.latest_version(lh, ITEM_INDEX) == index_v
    # scoring again changes nothing
    v = (delta.latest_version(lh, ITEM_FACTORS), delta.latest_version(lh, RECOMMENDATIONS))
    assert score(spark, lh, k=5).skipped
    assert v == (delta.latest_version(lh, ITEM_FACTORS), delta.latest_version(lh, RECOMMENDATIONS))


def test_the_stream_ranks_placed_items_but_folds_in_over_trained_items_only(spark, embedded):
    lh, _ = embedded
    place(spark, lh)
    model = load_serving_model(spark, lh, tracking.get_alias(lh))
    cold, cold_y = _placed(model)
    assert len(cold) >= 5
    ys = model.trained_y.astype(np.float64)
    np.testing.assert_allclose(model.yty, ys.T @ ys, rtol=1e-6)
    import pandas as pd
    first = model.items[model.trained_rows[0]]
    hist = pd.DataFrame({"user_id": "u", "item_id": [first, cold[0]],
                         "event_type": "purchase", "value": None})
    n_listable = len(model.factor_rows)
    vectors, rows = refresh(model, hist, ["u"], k=n_listable, new_item_slots=1)
    assert "u" in vectors
    by_item = {r[2]: r[4] for r in rows}
    assert cold[0] not in by_item  # seen
    assert {by_item[i] for i in cold[1:]} == {"content"}
    assert {s for i, s in by_item.items() if i not in cold} == {"fold_in"}
    # the placed item in the history did not enter the solve: same vector without it
    v2, top5 = refresh(model, hist.iloc[:1], ["u"], k=5, new_item_slots=1)
    np.testing.assert_allclose(vectors["u"], v2["u"], rtol=1e-5)
    # the last slot goes to the best placed item unless one already ranks in the first four
    _, plain = refresh(model, hist.iloc[:1], ["u"], k=5, new_item_slots=0)
    best = cold[int(np.argmax(cold_y @ v2["u"]))]
    head = [r[2] for r in plain[:4]]
    want = head + [best] if best not in head else [r[2] for r in plain]
    assert [r[2] for r in top5] == want and top5[-1][4] == "content"


def test_new_item_slots_by_hand():
    # user a = e0, b = e1; trained w1..w3, placed n1, n2: their scores are the coordinates
    vec = {"w1": (0.9, 0.9), "w2": (0.7, 0.8), "w3": (0.0, 0.7), "n1": (0.8, 0.1),
           "n2": (0.1, 0.2)}
    trained, placed = ["w1", "w2", "w3"], ["n1", "n2"]
    model = ServingModel.build(
        1, Card(), FoldInRule(1.0, 0.1), trained=(trained, np.array([vec[i] for i in trained])),
        placed=(placed, np.array([vec[i] for i in placed])), popular=([], np.zeros(0)))
    users = np.eye(2, dtype=np.float32)
    no_seen = (np.zeros(3, np.int64), np.zeros(0, np.int64))

    def lists(slots):
        out = policy.recommend(model, users, np.ones(2, bool), no_seen, k=3, slots=slots,
                               model_source="als")
        return sorted(("ab"[u], int(r), model.items[i], s) for u, r, i, s in
                      zip(out.user, out.rank, out.row, out.source, strict=True))

    # a: head w1; slots n1 (already ranked second), n2; b: head w1; slots n2, n1
    assert lists(2) == [("a", 1, "w1", "als"), ("a", 2, "n1", "content"),
                        ("a", 3, "n2", "content"), ("b", 1, "w1", "als"),
                        ("b", 2, "n2", "content"), ("b", 3, "n1", "content")]
    # one slot: a's best placed item already ranks second, so the slot goes back to ALS
    assert [x[:3] for x in lists(1)] == [("a", 1, "w1"), ("a", 2, "n1"), ("a", 3, "w2"),
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
    lh = tmp_path / "lh"
    assert embed_job.main(["--lakehouse", str(lh)]) == 2  # no lakehouse there
    assert capsys.readouterr().err.strip().startswith(f"lakerec embed: error: no lakehouse at {lh}")
    assert not lh.exists()
    lh.mkdir()
    assert embed_job.main(["--lakehouse", str(lh)]) == 2
    assert "is not a lakehouse" in capsys.readouterr().err
    (lh / "items" / "_delta_log").mkdir(parents=True)  # a lakehouse with a catalog
    assert embed_job.main(["--lakehouse", str(lh), "--variant", "fp16"]) == 2
    assert embed_job.main(["--lakehouse", str(lh), "--encoder-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("lakerec embed: error: no encoder export") and \
        "make models" in err[-1]
    assert os.listdir(lh) == ["items"]  # nothing written


def test_a_running_stream_picks_up_newly_placed_items(spark, embedded):
    lh, _ = embedded
    place(spark, lh)
    ctx = StreamContext(lh, "q", model_refresh_s=0.0)
    first = ctx.serving_model(spark)
    assert ctx.serving_model(spark) is first  # nothing changed: the cached model
    place(spark, lh, reg=5.0)
    again = ctx.serving_model(spark)
    assert again is not first and again.version == first.version
    moved = _placed(again)[1] - _placed(first)[1]
    assert np.abs(moved).max() > 0  # the re-placed factors (another ridge penalty)
