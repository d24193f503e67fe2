"""The blockwise top-K kernel equals a brute-force argsort, ties and seen items included."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.batch import recommend
from pipelines.model import topk


@st.composite
def problems(draw):
    n_users = draw(st.integers(1, 12))
    # wide catalogues too, so that tiles span several of the selection's 64-score segments
    wide = draw(st.booleans())
    n_items = draw(st.integers(1, 300 if wide else 40))
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
        if draw(st.booleans()):  # heavy-tailed item norms, as learned factors have
            items *= rng.pareto(1.5, (n_items, 1)).astype(np.float32) + 0.01
    seen = [np.unique(rng.integers(0, n_items, rng.integers(0, n_items + 1)))
            for _ in range(n_users)]
    ids = [f"it{j:03d}" for j in rng.permutation(n_items)]
    width = st.integers(1, 300 if wide else 16)
    tile, step, block = draw(width), draw(width), draw(st.integers(1, 8))
    return users, items, seen, k, ids, tile, step, block


@settings(max_examples=400, deadline=None)
@given(problems())
def test_blockwise_topk_equals_brute_force(p):
    users, items, seen, k, ids, tile, step, block = p
    key = topk.order_key(ids)
    idx, score, count = topk.topk_block(users, items, seen, k, key, tile=tile, step=step,
                                        block=block)
    expected = topk.brute_force(users, items, seen, k, key)
    for u, exp in enumerate(expected):
        assert count[u] == len(exp) == min(k, items.shape[0] - len(seen[u]))
        assert [int(i) for i in idx[u, :count[u]]] == [i for i, _ in exp]
        np.testing.assert_allclose(score[u, :count[u]], [s for _, s in exp], rtol=1e-5,
                                   atol=1e-5)
        assert not set(idx[u, :count[u]].tolist()) & set(seen[u].tolist())
        assert (idx[u, count[u]:] == -1).all()


def test_pruned_users_still_get_the_exact_answer():
    """Most users stop early on skewed norms; the answer must not change."""
    rng = np.random.default_rng(11)
    items = rng.standard_normal((3000, 8)).astype(np.float32)
    items *= (rng.pareto(1.2, (3000, 1)) + 0.01).astype(np.float32)
    users = rng.standard_normal((40, 8)).astype(np.float32)
    seen = [rng.choice(3000, 30, replace=False) for _ in range(40)]
    key = topk.order_key([f"i{j:04d}" for j in range(3000)])
    idx, score, _ = topk.topk_block(users, items, seen, 10, key, tile=64)
    expected = topk.brute_force(users, items, seen, 10, key)
    assert [[int(i) for i in row] for row in idx] == [[i for i, _ in e] for e in expected]


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
    got = recommend.recommend(spark, df, ids, items, k=4, block=3, tile=8).collect()
    expected = topk.brute_force(users, items, seen, 4, topk.order_key(ids))
    by_user = {}
    for r in sorted(got, key=lambda r: (r.user_id, r.rank)):
        by_user.setdefault(r.user_id, []).append(r.item_id)
    assert by_user == {f"u{u}": [ids[i] for i, _ in expected[u]] for u in range(7)}


def test_backend_choice(monkeypatch):
    assert recommend.choose_backend("cpu") == "cpu"
    with pytest.raises(ValueError):
        recommend.choose_backend("tpu")
    monkeypatch.setattr(recommend, "task_gpu", lambda: None)
    assert recommend.choose_backend("auto") == "cpu"  # no GPU granted to the task
    monkeypatch.setattr(recommend, "task_gpu", lambda: 0)
    monkeypatch.setitem(sys.modules, "torch", None)  # GPU granted, torch not installed
    assert recommend.choose_backend("auto") == "cpu"


def _cuda():
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


gpu = pytest.mark.skipif(not _cuda(), reason="needs torch with a CUDA device")


@gpu
@settings(max_examples=200, deadline=None)
@given(problems())
def test_gpu_kernel_equals_brute_force(p):
    import torch

    users, items, seen, k, ids, *_ = p
    key = topk.order_key(ids)
    # integer-valued factors: dot products are exact in float32 on any hardware, so the
    # GPU must reproduce the reference exactly, ties included
    users, items = np.round(users * 2), np.round(items * 2)
    dev = torch.as_tensor(items, device="cuda")
    idx, score, count = topk.topk_block_torch(users, dev, seen, k, key)
    expected = topk.brute_force(users, items, seen, k, key)
    for u, exp in enumerate(expected):
        assert count[u] == len(exp)
        assert [int(i) for i in idx[u, :count[u]]] == [i for i, _ in exp]
        assert (idx[u, count[u]:] == -1).all()


@gpu
def test_gpu_kernel_matches_cpu_kernel_within_float_tolerance():
    import torch

    rng = np.random.default_rng(5)
    users = rng.standard_normal((2000, 32)).astype(np.float32)
    items = rng.standard_normal((5000, 32)).astype(np.float32)
    seen = [rng.choice(5000, 20, replace=False) for _ in range(2000)]
    key = topk.order_key([f"i{j}" for j in range(5000)])
    ci, cs, _ = topk.topk_block(users, items, seen, 10, key)
    gi, gs, _ = topk.topk_block_torch(users, torch.as_tensor(items, device="cuda"), seen, 10,
                                      key)
    np.testing.assert_allclose(gs, cs, rtol=1e-5, atol=1e-5)
    same = (gi == ci).all(axis=1)
    # where the lists differ, it is an order swap between scores equal to float32 precision
    assert same.mean() > 0.99


@gpu
def test_the_list_policy_gives_the_same_lists_on_the_gpu_kernel():
    import torch

    from pipelines.model.card import ModelCard
    from pipelines.model.trainer import FoldInRule
    from pipelines.serving import policy
    from pipelines.serving.model import ServingModel

    rng = np.random.default_rng(6)
    ids = [f"i{j:04d}" for j in range(3000)]
    y = np.round(rng.standard_normal((3000, 16)) * 2).astype(np.float32)  # exact dot products
    model = ServingModel.build(1, ModelCard(), FoldInRule(1.0, 0.1), trained=(ids, y),
                               placed=([], np.zeros((0, 16))),
                               popular=(ids[:50], rng.random(50)))
    users = np.round(rng.standard_normal((500, 16)) * 2).astype(np.float32)
    seen = [np.sort(rng.choice(3000, 10, replace=False)) for _ in range(500)]
    indptr = np.concatenate([[0], np.cumsum([len(s) for s in seen])])
    csr = (indptr, np.concatenate(seen))
    kernel = recommend.gpu_kernel(model.index, torch.device("cuda", 0))
    cpu = policy.recommend(model, users, np.ones(500, bool), csr, k=10, slots=0,
                           model_source="als")
    gpu_ = policy.recommend(model, users, np.ones(500, bool), csr, k=10, slots=0,
                            model_source="als", kernel=kernel)
    assert np.array_equal(cpu.row, gpu_.row) and np.array_equal(cpu.score, gpu_.score)
