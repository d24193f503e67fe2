"""Implicit ALS contracts: confidence weights, exact fold-in, and a known-answer checkerboard."""

from __future__ import annotations

import numpy as np

from pipelines.batch import trainers
from pipelines.model import als
from pipelines.model.card import ModelCard
from pipelines.model.trainer import FoldInRule
from schemas.events import default_weights


def reference_fold_in(Y, items, r, alpha, reg):
    """The implicit-ALS user solve written out densely: C_u = diag(1 + alpha r_u)."""
    n, k = Y.shape
    c = np.ones(n)
    p = np.zeros(n)
    c[items] += alpha * np.asarray(r)
    p[items] = 1.0
    a = Y.T @ np.diag(c) @ Y + reg * len(items) * np.eye(k)
    return np.linalg.solve(a, Y.T @ np.diag(c) @ p)


def test_fold_in_solves_the_dense_normal_equations():
    rng = np.random.default_rng(0)
    Y = rng.standard_normal((50, 8))
    items = np.array([3, 17, 18, 40])
    r = np.array([1.0, 8.0, 2.5, 4.0])
    got = als.fold_in(Y, als.gram(Y), items, r, rule=FoldInRule(3.0, 0.1))
    np.testing.assert_allclose(got, reference_fold_in(Y, items, r, 3.0, 0.1), rtol=1e-5)
    assert not als.fold_in(Y, als.gram(Y), np.array([], int), np.array([]),
                           rule=FoldInRule(3.0, 0.1)).any()


def test_a_rule_without_per_entry_scaling_uses_a_constant_ridge():
    rng = np.random.default_rng(2)
    Y = rng.standard_normal((30, 5))
    items, r = np.array([1, 4, 9]), np.array([2.0, 1.0, 5.0])
    got = als.fold_in(Y, als.gram(Y), items, r,
                      rule=FoldInRule(3.0, 0.3, reg_per_entry=False))
    # reference_fold_in scales by n_u = 3: a constant 0.3 is 0.1 per entry
    np.testing.assert_allclose(got, reference_fold_in(Y, items, r, 3.0, 0.1), rtol=1e-5)


def test_fold_in_many_matches_the_dense_solve_of_every_user():
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((300, 6))
    # users with 1 to 120 items, one without any, in blocks small enough to split the run
    codes, items, r = [], [], []
    for u, n in enumerate([5, 0, 1, 120, 17, 17, 60, 2]):
        codes += [u] * n
        items += sorted(rng.choice(300, n, replace=False).tolist())
        r += rng.uniform(0.5, 9.0, n).tolist()
    codes, items, r = np.array(codes), np.array(items), np.array(r)
    users, x = als.fold_in_many(Y, als.gram(Y), codes, items, 3.0 * r, 8,
                                rule=FoldInRule(3.0, 0.1), budget=2000)
    assert users.tolist() == [0, 2, 3, 4, 5, 6, 7]
    for u, got in zip(users, x, strict=True):
        mine = codes == u
        np.testing.assert_allclose(got, reference_fold_in(Y, items[mine], r[mine], 3.0, 0.1),
                                   rtol=1e-4, atol=1e-6)


def test_fold_in_many_gives_a_user_the_same_bits_whoever_shares_the_call():
    rng = np.random.default_rng(3)
    Y = rng.standard_normal((200, 16)).astype(np.float32)
    yty, rule = als.gram(Y), FoldInRule(5.0, 0.05)
    codes = np.repeat(np.arange(30), rng.integers(1, 12, 30))
    items = rng.integers(0, 200, codes.size)
    c1 = rule.c1(rng.integers(1, 9, codes.size))
    _, together = als.fold_in_many(Y, yty, codes, items, c1, 30, rule=rule)
    for u in (0, 13, 29):
        m = codes == u
        perm = rng.permutation(int(m.sum()))  # entry order does not matter either
        _, alone = als.fold_in_many(Y, yty, np.zeros(m.sum(), np.int64), items[m][perm],
                                    c1[m][perm], 1, rule=rule)
        assert np.array_equal(alone[0], together[u])


def test_confidence_sums_event_weights(spark):
    rows = [("u", "a", "view", None), ("u", "a", "click", None), ("u", "a", "purchase", 9.9),
            ("u", "b", "rating", 4.5), ("u", "c", "view", None), ("v", "a", "view", None)]
    ev = spark.createDataFrame(rows, "user_id string, item_id string, event_type string, "
                                     "value double")
    got = {(r.user_id, r.item_id): r.r for r in
           trainers.confidence(ev, weights=default_weights()).collect()}
    assert got == {("u", "a"): 11.0, ("u", "b"): 4.5, ("u", "c"): 1.0, ("v", "a"): 1.0}
    only_buys = trainers.confidence(ev, weights={"purchase": 1.0})
    assert {(r.user_id, r.item_id) for r in only_buys.collect()} == {("u", "a"), ("u", "b")}


def checkerboard(n_users=40, n_items=40, blocks=2):
    """Users of block b interact with every item of block b, and only those."""
    rows = []
    for u in range(n_users):
        for i in range(n_items):
            if u * blocks // n_users == i * blocks // n_items:
                rows.append((u, i, 1.0))
    return rows


def test_als_learns_the_checkerboard_and_fold_in_reproduces_spark(spark):
    rows = checkerboard()
    df = spark.createDataFrame(rows, "user_idx int, item_idx int, r float")
    alpha, reg = 5.0, 0.05
    trained = trainers.get("als").fit(
        spark, df, ModelCard(rank=4, alpha=alpha, reg=reg, max_iter=8, seed=1))
    assert trained.item_idx.tolist() == list(range(40))
    Y = trained.y
    users = {r.id: np.array(r.features) for r in trained.native.userFactors.collect()}
    scores = np.array([users[u] for u in range(40)]) @ Y.T
    same = np.array([[u // 20 == i // 20 for i in range(40)] for u in range(40)])
    # every in-block item scores above every out-of-block item, for every user
    assert (scores[same].reshape(40, 20).min(1) > scores[~same].reshape(40, 20).max(1)).all()
    # Spark's last half-iteration solved the users against the final Y: fold-in must agree
    yty = als.gram(Y)
    for u in (0, 7, 25, 39):
        mine = [i for uu, i, _ in rows if uu == u]
        got = als.fold_in(Y, yty, np.array(mine), np.ones(len(mine)), rule=trained.rule)
        np.testing.assert_allclose(got, users[u], rtol=2e-4, atol=2e-5)


def test_fold_in_users_on_spark_matches_numpy(spark):
    rng = np.random.default_rng(1)
    Y = rng.standard_normal((10, 3)).astype(np.float32)
    item_row = np.arange(100, 110)  # item_idx of each row of Y
    hist = [("a", 101, 2.0), ("a", 105, 1.0), ("b", 109, 8.0), ("b", 999, 3.0),
            ("c", 999, 1.0)]
    rule = FoldInRule(2.0, 0.1)
    df = spark.createDataFrame(hist, "user_id string, item_idx int, r double")
    got = {r.user_id: np.array(r.factors) for r in
           trainers.fold_in_users(spark, df, Y, item_row, rule=rule).collect()}
    yty = als.gram(Y)
    # the same solver on the executors: the same bits
    assert np.array_equal(got["a"], als.fold_in(Y, yty, np.array([1, 5]), np.array([2.0, 1.0]),
                                                rule=rule))
    # item 999 has no vector: ignored, as a model that never saw it would
    assert np.array_equal(got["b"], als.fold_in(Y, yty, np.array([9]), np.array([8.0]),
                                                rule=rule))
    # a user left with no item the model knows has no vector at all
    assert "c" not in got


def test_unknown_types_carry_no_weight(spark):
    ev = spark.createDataFrame([("u", "a", "hover", None)],
                               "user_id string, item_id string, event_type string, value double")
    assert trainers.confidence(ev, weights=default_weights()).count() == 0
