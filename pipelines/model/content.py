"""Content features: a ridge map from text embeddings to ALS item factors, and its evaluation.

Items the ALS model has never seen (new catalog entries, items without interactions in the
training window) have no factor vector, so collaborative scoring cannot rank them. Their text
can: on the warm items, where both are known, fit

    W = argmin_W ‖[E 1] W − Y‖² + λ ‖W_E‖²   (the bias row is not penalised)
      = (XᵀX + λ D)⁻¹ XᵀY,   X = [E 1],   D = diag(1, …, 1, 0)

with ``E`` the (unit-length) embeddings and ``Y`` the ALS item factors, and give each cold
item ``y = [e 1] W``. Its score for a user is then the usual ``x_uᵀ y``: the item is placed in
the factor space where similar texts sit, and it competes with the warm items on one scale
(``source = content`` in ``item_factors`` and ``recommendations``).

:func:`evaluate_cold_start` measures how much of the collaborative signal this recovers: it
hides a slice of warm items from the fit and ranks those items for their users three ways —
with their true ALS factors (the ceiling), with the mapped factors, and with random vectors
(the floor).

Example
-------
>>> w = fit_ridge(E_warm, Y_warm, reg=1.0)              # doctest: +SKIP
>>> y_cold = map_factors(E_cold, w)                     # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from pipelines.model.card import DEFAULTS

log = logging.getLogger(__name__)


def fit_ridge(emb: np.ndarray, factors: np.ndarray, *, reg: float) -> np.ndarray:
    """``(d + 1, rank)`` ridge weights mapping ``[embedding, 1]`` to factors (see module)."""
    e = np.asarray(emb, np.float64)
    y = np.asarray(factors, np.float64)
    if e.shape[0] != y.shape[0]:
        raise ValueError(f"{e.shape[0]} embeddings but {y.shape[0]} factor rows")
    if e.shape[0] == 0:
        raise ValueError("no warm items to fit the content map on")
    x = np.hstack([e, np.ones((e.shape[0], 1))])
    a = x.T @ x
    a[np.arange(e.shape[1]), np.arange(e.shape[1])] += reg
    # λ > 0 on E makes A positive definite unless the bias column is degenerate, which an
    # all-ones column never is; solve, not inv, for accuracy
    return np.linalg.solve(a, x.T @ y)


def map_factors(emb: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Factor vectors ``[e 1] W`` (float32) for embeddings ``emb``."""
    e = np.asarray(emb, np.float64)
    return (e @ w[:-1] + w[-1]).astype(np.float32)


def recall_at_k(user_vecs: np.ndarray, item_vecs: np.ndarray, positives: list[np.ndarray],
                k: int) -> float:
    """Mean over users of |top-k ∩ positives| / min(k, |positives|), ranking ``item_vecs``.

    ``positives[u]`` are row numbers into ``item_vecs``; users without positives are skipped.
    Ties break by row number (a stable sort of ``-score``).
    """
    scores = np.asarray(user_vecs, np.float64) @ np.asarray(item_vecs, np.float64).T
    out = []
    for u, pos in enumerate(positives):
        if len(pos) == 0:
            continue
        top = np.argsort(-scores[u], kind="stable")[:k]
        out.append(len(np.intersect1d(top, pos)) / min(k, len(pos)))
    return float(np.mean(out)) if out else float("nan")


@dataclass(frozen=True)
class ColdStartEval:
    """Recall@k of held-out items ranked for their users by true, mapped and random factors."""

    k: int
    items: int
    users: int
    recall_true: float
    recall_content: float
    recall_random: float
    factor_cosine: float  # mean cosine between mapped and true factors of the held-out items

    def as_metrics(self) -> dict[str, float]:
        return {f"cold_start_recall_at_{self.k}_true": self.recall_true,
                f"cold_start_recall_at_{self.k}_content": self.recall_content,
                f"cold_start_recall_at_{self.k}_random": self.recall_random,
                "cold_start_factor_cosine": self.factor_cosine,
                "cold_start_items": float(self.items), "cold_start_users": float(self.users)}


def evaluate_cold_start(user_vecs: np.ndarray, item_vecs: np.ndarray, emb: np.ndarray,
                        pairs: tuple[np.ndarray, np.ndarray], *, k: int = DEFAULTS.k,
                        holdout: float = 0.1, reg: float = 1.0, seed: int = 0
                        ) -> ColdStartEval:
    """Hold out ``holdout`` of the warm items, fit the map on the rest, rank the held-out ones.

    Parameters
    ----------
    user_vecs : (m, rank) ALS user factors
    item_vecs, emb : (n, rank) ALS factors and (n, d) embeddings of the same n warm items
    pairs : (user rows, item rows), the users' positive interactions
    k : cut-off; each user ranks only the held-out items (the cold-start protocol: the
        question is how well text orders new items, not how they fare against warm ones)

    Random vectors are Gaussian with the per-dimension mean and spread of the training
    items' factors, so only the direction carries (no) information.
    """
    rng = np.random.default_rng(seed)
    n = item_vecs.shape[0]
    n_test = max(1, int(round(holdout * n)))
    if n - n_test < 2:
        raise ValueError(f"{n} warm items: too few to hold out {holdout:.0%} and fit the rest")
    perm = rng.permutation(n)
    test, train = np.sort(perm[:n_test]), perm[n_test:]
    w = fit_ridge(emb[train], item_vecs[train], reg=reg)
    mapped = map_factors(emb[test], w)
    mu, sd = item_vecs[train].mean(0), item_vecs[train].std(0)
    rand = (mu + sd * rng.standard_normal((n_test, item_vecs.shape[1]))).astype(np.float32)

    where = np.full(n, -1, np.int64)
    where[test] = np.arange(n_test)
    u_rows, i_rows = (np.asarray(a, np.int64) for a in pairs)
    sel = where[i_rows] >= 0
    users, code = np.unique(u_rows[sel], return_inverse=True)
    order = np.argsort(code, kind="stable")
    cuts = np.searchsorted(code[order], np.arange(1, len(users)))
    positives = [np.unique(p) for p in np.split(where[i_rows[sel]][order], cuts)]
    u = user_vecs[users]
    true = item_vecs[test]
    cos = (mapped * true).sum(1) / np.maximum(
        np.linalg.norm(mapped, axis=1) * np.linalg.norm(true, axis=1), 1e-12)
    return ColdStartEval(k, n_test, len(users), recall_at_k(u, true, positives, k),
                         recall_at_k(u, mapped, positives, k),
                         recall_at_k(u, rand, positives, k), float(cos.mean()))
