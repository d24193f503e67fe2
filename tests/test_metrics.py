"""Ranking metrics: Spark == numpy reference == hand-computed values == Spark's RankingEvaluator."""

from __future__ import annotations

import math
import random

import pytest

from pipelines.batch.metrics import ranking_metrics
from tests import reference


def to_frames(spark, recs: dict, relevant: dict):
    r = spark.createDataFrame([(u, j + 1, i) for u, lst in recs.items()
                               for j, i in enumerate(lst)],
                              "user_id string, rank int, item_id string")
    rel = spark.createDataFrame([(u, i) for u, s in relevant.items() for i in s],
                                "user_id string, item_id string")
    return r, rel


def test_hand_computed_example(spark):
    # u1: hits at ranks 1 and 3 of 3 recommendations, 4 relevant items
    # u2: one relevant item, recommended at rank 2
    # u3: relevant items but no recommendations at all
    recs = {"u1": ["a", "x", "b"], "u2": ["y", "c", "z"]}
    relevant = {"u1": ["a", "b", "d", "e"], "u2": ["c"], "u3": ["q"]}
    got = ranking_metrics(*to_frames(spark, recs, relevant), k=3, catalog_size=10)
    l2 = math.log2
    ndcg_u1 = (1 + 1 / l2(4)) / (1 + 1 / l2(3) + 1 / l2(4))
    ndcg_u2 = (1 / l2(3)) / 1
    assert got["precision"] == pytest.approx((2 / 3 + 1 / 3 + 0) / 3)
    assert got["recall"] == pytest.approx((2 / 4 + 1 + 0) / 3)
    assert got["ndcg"] == pytest.approx((ndcg_u1 + ndcg_u2) / 3)
    assert got["map"] == pytest.approx(((1 + 2 / 3) / 3 + (1 / 2) / 1 + 0) / 3)
    assert got["coverage"] == pytest.approx(6 / 10)
    assert got["users"] == 3
    assert got == pytest.approx(reference.mean_metrics(recs, relevant, 3, 10))


def random_case(seed, n_users=30, n_items=25, k=5):
    rnd = random.Random(seed)
    items = [f"i{j}" for j in range(n_items)]
    recs = {f"u{u}": rnd.sample(items, rnd.randint(0, k + 2)) for u in range(n_users)}
    relevant = {f"u{u}": rnd.sample(items, rnd.randint(1, 8)) for u in range(n_users)}
    return recs, relevant, k, n_items


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_spark_matches_numpy_reference(spark, seed):
    recs, relevant, k, n = random_case(seed)
    got = ranking_metrics(*to_frames(spark, recs, relevant), k=k, catalog_size=n)
    assert got == pytest.approx(reference.mean_metrics(recs, relevant, k, n))


def test_spark_matches_ranking_evaluator(spark):
    from pyspark.ml.evaluation import RankingEvaluator

    recs, relevant, k, n = random_case(7)
    got = ranking_metrics(*to_frames(spark, recs, relevant), k=k, catalog_size=n)
    code = {f"i{j}": float(j) for j in range(n)}
    rows = [([code[i] for i in recs.get(u, [])[:k]], [code[i] for i in rel])
            for u, rel in relevant.items()]
    df = spark.createDataFrame(rows, "prediction array<double>, label array<double>")
    for ours, theirs in (("precision", "precisionAtK"), ("recall", "recallAtK"),
                         ("ndcg", "ndcgAtK"), ("map", "meanAveragePrecisionAtK")):
        ev = RankingEvaluator(metricName=theirs, k=k)
        assert got[ours] == pytest.approx(ev.evaluate(df), rel=1e-9), ours


def test_per_user_rows_average_to_the_means(spark):
    from pipelines.batch.metrics import per_user_metrics

    recs = {"u1": ["a", "x", "b"], "u2": ["y", "c", "z"]}
    relevant = {"u1": ["a", "b", "d", "e"], "u2": ["c"], "u3": ["q"]}
    r, rel = to_frames(spark, recs, relevant)
    rows = {row.user_id: row for row in per_user_metrics(r, rel, k=3).collect()}
    assert set(rows) == {"u1", "u2", "u3"} and rows["u3"].ndcg == 0
    means = ranking_metrics(r, rel, k=3, catalog_size=10)
    for m in ("precision", "recall", "ndcg", "map"):
        assert sum(getattr(x, m) for x in rows.values()) / 3 == pytest.approx(means[m])
