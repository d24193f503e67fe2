"""The text -> factor ridge map and the cold-start evaluation, on data with a known answer."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.model.content import evaluate_cold_start, fit_ridge, map_factors, recall_at_k


def test_ridge_solves_its_normal_equations_and_leaves_the_bias_unpenalised():
    rng = np.random.default_rng(0)
    e, y = rng.normal(size=(50, 6)), rng.normal(size=(50, 3))
    w = fit_ridge(e, y, reg=2.5)
    x = np.hstack([e, np.ones((50, 1))])
    # gradient of ‖XW − Y‖² + λ‖W_E‖² is zero: Xᵀ(XW − Y) + λ D W = 0
    d = np.diag([1.0] * 6 + [0.0])
    np.testing.assert_allclose(x.T @ (x @ w - y) + 2.5 * d @ w, 0, atol=1e-9)


def test_ridge_recovers_an_exact_linear_map():
    rng = np.random.default_rng(1)
    e = rng.normal(size=(400, 8))
    a, b = rng.normal(size=(8, 4)), rng.normal(size=4)
    w = fit_ridge(e, e @ a + b, reg=1e-9)
    np.testing.assert_allclose(w[:-1], a, atol=1e-6)
    np.testing.assert_allclose(w[-1], b, atol=1e-6)
    np.testing.assert_allclose(map_factors(e[:5], w), e[:5] @ a + b, atol=1e-5)


def test_recall_at_k_by_hand():
    users = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    items = np.array([[3.0, 0.0], [2.0, 0.1], [0.0, 3.0], [0.1, 0.2]])
    # user 0 ranks 0, 1, ...: 1 of its 2 positives in the top 1 -> 1/min(1, 2) = 1
    # user 1 ranks 2 first: positive 3 missed -> 0; user 2 has no positives: skipped
    assert recall_at_k(users, items, [np.array([0, 3]), np.array([3]), np.array([])], 1) == 0.5
    assert recall_at_k(users, items, [np.array([1, 3])], 2) == 0.5


def _world(n_items=600, n_users=300, d=16, rank=4, signal=True, seed=0):
    """Items whose factors are (or are not) a linear function of their embeddings; users
    whose positives are their top items by true score."""
    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_items, d))
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    y = emb @ rng.normal(size=(d, rank)) if signal else rng.normal(size=(n_items, rank))
    x = rng.normal(size=(n_users, rank))
    top = np.argsort(-(x @ y.T), axis=1)[:, :20]
    pairs = (np.repeat(np.arange(n_users), 20), top.ravel())
    return x, y.astype(np.float32), emb.astype(np.float32), pairs


def test_text_that_determines_the_factors_recovers_the_true_ranking():
    x, y, emb, pairs = _world(signal=True)
    ev = evaluate_cold_start(x, y, emb, pairs, k=10, holdout=0.2, reg=1e-3, seed=1)
    assert ev.items == 120 and ev.users > 100
    assert ev.factor_cosine > 0.99
    assert ev.recall_content == pytest.approx(ev.recall_true, abs=0.02)
    assert ev.recall_content > 3 * ev.recall_random


def test_text_unrelated_to_the_factors_is_no_better_than_random():
    x, y, emb, pairs = _world(signal=False)
    ev = evaluate_cold_start(x, y, emb, pairs, k=10, holdout=0.2, reg=1.0, seed=1)
    assert ev.recall_true > 0.5
    assert abs(ev.recall_content - ev.recall_random) < 0.1
    assert ev.recall_content < ev.recall_true / 2


def test_too_few_items_to_hold_out_is_an_error():
    x, y, emb, pairs = _world(n_items=2, n_users=5)
    with pytest.raises(ValueError, match="too few"):
        evaluate_cold_start(x, y, emb, pairs, holdout=0.5)
