"""Implicit-feedback least squares against fixed item factors: exact fold-in, in numpy.

The implicit ALS model (Hu, Koren & Volinsky 2008, as Spark ML implements it) gives user
``u`` and item ``i`` vectors ``x_u, y_i`` minimising

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

with preference ``p_ui = 1`` if ``r_ui > 0`` else 0 and confidence ``c_ui = 1 + alpha r_ui``.
For fixed item factors ``Y`` the user's optimum solves the normal equations of a
:class:`pipelines.model.trainer.FoldInRule`,

    (Y^T Y + sum_{i in I_u} alpha r_ui y_i y_i^T + lambda_u I) x_u = sum_{i in I_u} (1 + alpha r_ui) y_i

:func:`fold_in_many` solves exactly these, so a user folded in against a trained model's item
factors gets the vector Spark's last half-iteration gave it (checked in the tests), and new or
changed users are refreshed without retraining. Training (Spark), evaluation, the served
vectors and the stream all call it: one solver, one rule.

Example
-------
>>> import numpy as np
>>> from pipelines.model.trainer import FoldInRule
>>> y = np.eye(2, dtype=np.float32)
>>> users, x = fold_in_many(y, gram(y), np.array([0]), np.array([1]), np.array([1.0]), 1,
...                         rule=FoldInRule(alpha=1.0, reg=0.0))
>>> x.round(3).tolist()
[[0.0, 1.0]]
"""

from __future__ import annotations

import numpy as np

from pipelines.model.trainer import FoldInRule


def gram(factors: np.ndarray) -> np.ndarray:
    """``Y^T Y`` in float64 (shared by every fold-in against the same item factors)."""
    y = np.asarray(factors, dtype=np.float64)
    return y.T @ y


def fold_in(item_factors: np.ndarray, yty: np.ndarray, items: np.ndarray, r: np.ndarray, *,
            rule: FoldInRule) -> np.ndarray:
    """One user's solution (``(k,)`` float32; zeros when no weight is positive).

    ``items`` are row numbers of ``item_factors``, ``r`` their summed weights ``r_ui``. The
    same numbers as :func:`fold_in_many` for that one user.
    """
    r = np.asarray(r, dtype=np.float64)
    items = np.asarray(items, dtype=np.int64)
    pos = r > 0
    items, r = items[pos], r[pos]
    if items.size == 0:
        return np.zeros(yty.shape[0], dtype=np.float32)
    _, x = fold_in_many(item_factors, yty, np.zeros(items.size, np.int64), items,
                        rule.c1(r), 1, rule=rule)
    return x[0]


def fold_in_many(item_factors: np.ndarray, yty: np.ndarray, codes: np.ndarray,
                 items: np.ndarray, c1: np.ndarray, n_users: int, *, rule: FoldInRule,
                 budget: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """Solve the normal equations of many users at once, as batched dense algebra.

    Parameters
    ----------
    codes, items, c1 : arrays of equal length
        One entry per (user, item) with a positive weight: the user's number
        (``0 <= code < n_users``), the item's row in ``item_factors`` and ``c_ui - 1``
        (``rule.c1(r)``).
    rule : FoldInRule
        Gives ``lambda_u`` from the user's number of entries; a ``kind = "history"`` rule
        (EASE) sums the history instead (:func:`pipelines.model.ease.fold_in`).
    budget : int
        Most float64 elements of one group's ``(users, items, rank)`` block plus its
        ``(users, rank, rank)`` systems.

    Returns
    -------
    users : (m,) codes of the users with at least one entry
    x : (m, k) float32, their solutions

    Cost: ``O(nnz k^2 + m k^3)`` flops, memory a small multiple of ``budget`` float64s. Users are grouped by their
    exact number of entries, and each group is one batched matmul and one batched solve: no
    padding, so a user's vector is the same bits whoever shares the call (the stream, which
    solves a micro-batch's users, and ``score``'s vectors, solved at training, agree
    exactly). The per-user Python loop would cost ~50 us a user, this a few.
    """
    if rule.kind == "history":  # EASE: a sum over the history, no normal equations
        from pipelines.model import ease

        return ease.fold_in(item_factors, codes, items, n_users)
    k = yty.shape[0]
    codes = np.asarray(codes, dtype=np.int64)
    items = np.asarray(items, dtype=np.int64)
    c1 = np.asarray(c1, dtype=np.float64)
    # each user's entries in item order: the sums below then run in one order whoever calls
    canon = np.lexsort((items, codes))
    codes, items, c1 = codes[canon], items[canon], c1[canon]
    bounds = np.searchsorted(codes, np.arange(n_users + 1))
    lens = np.diff(bounds)
    users = np.flatnonzero(lens > 0)
    x = np.empty((users.size, k), np.float32)
    if users.size == 0:
        return users, x
    y = np.asarray(item_factors, dtype=np.float64)
    order = np.argsort(lens[users], kind="stable")
    sorted_lens = lens[users[order]]
    eye = np.eye(k)
    s = 0
    while s < order.size:
        width = int(sorted_lens[s])
        e = int(np.searchsorted(sorted_lens, width, side="right"))  # the group of this length
        # the (B, L, k) block and the (B, k, k) systems both count against the budget
        e = min(e, s + max(1, budget // max(1, width * k + k * k)))
        sel = order[s:e]
        u = users[sel]
        src = bounds[u][:, None] + np.arange(width)[None, :]  # (B, L): every entry, no padding
        yu = y[items[src]]  # (B, L, k)
        w = c1[src]
        a = yty + np.matmul(yu.transpose(0, 2, 1) * w[:, None, :], yu) \
            + np.asarray(rule.ridge(np.full(u.size, width)), np.float64)[:, None, None] * eye
        b = np.matmul(yu.transpose(0, 2, 1), (1.0 + w)[..., None])
        x[sel] = np.linalg.solve(a, b)[..., 0]
        s = e
    return users, x
