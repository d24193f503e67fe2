"""EASE in factor form against the dense closed form; the gate's paired bootstrap against a
brute-force numpy bootstrap. Pure numpy: no Spark."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.model import ease, gate
from pipelines.model.als import fold_in_many, gram
from pipelines.model.trainer import FoldInRule

HISTORY = FoldInRule(alpha=1.0, reg=0.0, reg_per_entry=False, kind="history")


def scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    codes, rows = np.nonzero(x)
    users, z = fold_in_many(y, gram(y), codes, rows, np.ones(codes.size), x.shape[0],
                            rule=HISTORY)
    out = np.zeros(x.shape)
    out[users] = z.astype(np.float64) @ y.astype(np.float64).T
    return out


def test_dense_b_solves_the_constrained_ridge():
    # B = argmin |X - XB|² + λ|B|² with diag(B) = 0: the Lagrangian's stationarity gives
    # (G + λI) B = G - diag(μ); check it column by column with μ from the diagonal
    rng = np.random.default_rng(1)
    x = (rng.random((30, 8)) < 0.4).astype(float)
    g, lam = x.T @ x, 2.0
    b = ease.dense_b(g, lam)
    assert np.allclose(np.diag(b), 0)
    resid = (g + lam * np.eye(8)) @ b - g
    # the residual is diagonal (only the constraint's multipliers remain)
    assert np.allclose(resid - np.diag(np.diag(resid)), 0, atol=1e-9)


def test_known_answer_two_blocks():
    # items 0-2 and 3-5 are two tastes; a user of the first block gets its unseen item first
    x = np.zeros((8, 6))
    x[:4, :3] = 1
    x[4:, 3:] = 1
    x[0, 2] = 0
    x[4, 5] = 0
    s = scores(x, ease.item_vectors(x.T @ x, lam=1.0, rank=0))
    s[x > 0] = -np.inf
    assert int(np.argmax(s[0])) == 2
    assert int(np.argmax(s[4])) == 5


@pytest.mark.parametrize("seed", range(5))
def test_full_spectrum_equals_the_dense_closed_form_on_unseen_items(seed):
    rng = np.random.default_rng(seed)
    x = (rng.random((60, 15)) < rng.uniform(0.1, 0.5)).astype(float)
    lam = float(rng.uniform(0.5, 50))
    want = x @ ease.dense_b(x.T @ x, lam)
    got = scores(x, ease.item_vectors(x.T @ x, lam=lam, rank=0))
    unseen = x == 0
    assert np.allclose(got[unseen], want[unseen], rtol=1e-4, atol=1e-5)


def test_a_truncated_spectrum_still_finds_the_taste():
    # four tastes; within a taste the items are exchangeable, so the top-5 *sets* of the
    # exact and the truncated model may differ among near-ties: what must hold is that both
    # list the user's own taste
    rng = np.random.default_rng(7)
    taste = rng.integers(0, 4, 400)
    p = np.where((np.arange(40)[None, :] % 4) == taste[:, None], 0.35, 0.03)
    x = (rng.random((400, 40)) < p).astype(float)
    share = []
    for y in (ease.item_vectors(x.T @ x, lam=20.0, rank=0),
              ease.item_vectors(x.T @ x, lam=20.0, rank=8)):
        s = scores(x, y)
        s[x > 0] = -np.inf
        top = np.argsort(-s, axis=1)[:, :5]
        share.append(np.mean(top % 4 == taste[:, None]))
    exact, truncated = share
    # (random lists would hold a quarter; the truncation costs a few points here)
    assert exact > 0.8 and truncated > exact - 0.1


def test_fold_in_is_binary_and_order_free():
    rng = np.random.default_rng(3)
    x = (rng.random((20, 10)) < 0.4).astype(float)
    y = ease.item_vectors(x.T @ x, lam=5.0, rank=4)
    codes, rows = np.nonzero(x)
    u1, z1 = ease.fold_in(y, codes, rows, 20)
    perm = rng.permutation(codes.size)
    twice = np.concatenate([perm, perm])  # a pair counted twice is still one 1 of X
    u2, z2 = ease.fold_in(y, codes[twice], rows[twice], 20)
    assert np.array_equal(u1, u2) and np.array_equal(z1, z2)
    assert np.all(z1[:, -1] == 0)  # the scale coordinate never reaches a user


def brute_force_ci(d, level, n, seed):
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, d.size, d.size)].mean() for _ in range(n)])
    a = (1 - level) / 2
    return np.quantile(means, a), np.quantile(means, 1 - a)


@pytest.mark.parametrize("shift", [0.0, 0.01, 0.05])
def test_paired_bootstrap_matches_a_brute_force_bootstrap(shift):
    rng = np.random.default_rng(11)
    base = rng.random(800)
    chall = np.clip(base + shift + rng.normal(0, 0.2, 800), 0, 1)
    g = gate.paired_bootstrap(chall, base, n_resamples=3000, seed=2)
    lo, hi = brute_force_ci(chall - base, 0.95, 3000, 5)
    assert g.diff == pytest.approx(float((chall - base).mean()))
    width = hi - lo
    assert abs(g.low - lo) < 0.1 * width and abs(g.high - hi) < 0.1 * width
    assert g.users == 800


def test_decisions():
    rng = np.random.default_rng(0)
    base = rng.random(1000)
    better = gate.paired_bootstrap(base + 0.02, base)  # a constant gain: no spread
    assert better.significant and gate.decide(better, promote_if="significant")
    noise = gate.paired_bootstrap(base + rng.normal(0, 0.3, 1000), base, seed=1)
    assert noise.low < 0 < noise.high and not noise.significant
    assert not gate.decide(noise, promote_if="significant")
    assert gate.decide(noise, promote_if="better") == (noise.diff > 0)
    worse = gate.paired_bootstrap(base - 0.05 + rng.normal(0, 0.1, 1000), base, seed=1)
    assert worse.significant and not gate.decide(worse, promote_if="significant")
    assert gate.paired_bootstrap([], []).users == 0
    with pytest.raises(ValueError):
        gate.decide(better, promote_if="maybe")
