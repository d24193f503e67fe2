"""The blockwise top-K kernel equals a brute-force argsort, ties and seen items included."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines import topk


@st.composite
def problems(draw):
    n_users = draw(st.integers(1, 12))
    n_items = draw(st.integers(1, 40))
    rank = draw(st.integers(1, 4))
    k = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    tie_levels = draw(st.sampled_from([0, 1, 2, 3]))  # 0: continuous scores
    rng = np.random.default_rng(seed)
    if tie_levels:
        # small integer factors force many exactly equal dot products
        users = rng.integers(-tie_levels, tie_levels + 1, (n_users, rank)).astype(np.float32)
        items = rng.integers(-tie_levels, tie_levels + 1, (n_items, rank)).astype(np.float32)
    else:
        users = rng.standard_normal((n_users, rank)).astype(np.float32)
        items = rng.standard_normal((n_items, rank)).astype(np.float32)
    seen = [np.unique(rng.integers(0, n_items, rng.integers(0, n_items + 1)))
            for _ in range(n_users)]
    ids = [f"it{j:03d}" for j in rng.permutation(n_items)]
    tile = draw(st.integers(1, 16))
    return users, items, seen, k, ids, tile


@settings(max_examples=300, deadline=None)
@given(problems())
def test_blockwise_topk_equals_brute_force(p):
    users, items, seen, k, ids, tile = p
    key = topk.order_key(ids)
    idx, score, count = topk.topk_block(users, items, seen, k, key, tile=tile)
    expected = topk.brute_force(users, items, seen, k, key)
    for u, exp in enumerate(expected):
        assert count[u] == len(exp) == min(k, items.shape[0] - len(seen[u]))
        assert [int(i) for i in idx[u, :count[u]]] == [i for i, _ in exp]
        np.testing.assert_allclose(score[u, :count[u]], [s for _, s in exp], rtol=1e-5,
                                   atol=1e-5)
        assert not set(idx[u, :count[u]].tolist()) & set(seen[u].tolist())
        assert (idx[u, count[u]:] == -1).all()


def test_ties_break_by_item_id_not_by_position():
    users = np.ones((1, 1), np.float32)
    items = np.ones((5, 1), np.float32)  # five-way tie
    ids = ["e", "c", "a", "d", "b"]
    idx, _, count = topk.topk_block(users, items, [np.array([], np.int64)], 3,
                                    topk.order_key(ids), tile=2)
    assert [ids[i] for i in idx[0, :count[0]]] == ["a", "b", "c"]


def test_recommend_on_spark(spark):
    rng = np.random.default_rng(3)
    items = rng.standard_normal((30, 4)).astype(np.float32)
    users = rng.standard_normal((7, 4)).astype(np.float32)
    ids = [f"i{j:02d}" for j in range(30)]
    seen = [rng.choice(30, 5, replace=False) for _ in range(7)]
    df = spark.createDataFrame(
        [(f"u{u}", users[u].tolist(), seen[u].tolist()) for u in range(7)],
        "user_id string, factors array<float>, seen array<int>")
    got = topk.recommend(spark, df, ids, items, k=4, block=3, tile=8).collect()
    expected = topk.brute_force(users, items, seen, 4, topk.order_key(ids))
    by_user = {}
    for r in sorted(got, key=lambda r: (r.user_id, r.rank)):
        by_user.setdefault(r.user_id, []).append(r.item_id)
    assert by_user == {f"u{u}": [ids[i] for i, _ in expected[u]] for u in range(7)}
