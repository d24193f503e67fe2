"""Implicit-feedback ALS: confidence weights, Spark ML training, and exact fold-in.

The model (Hu, Koren & Volinsky 2008, as implemented by Spark ML) gives user ``u`` and item
``i`` vectors ``x_u, y_i`` minimising

    sum_{u,i} c_ui (p_ui - x_u . y_i)^2 + lambda (sum_u n_u |x_u|^2 + sum_i n_i |y_i|^2)

with preference ``p_ui = 1`` if ``r_ui > 0`` else 0, confidence ``c_ui = 1 + alpha r_ui``, and
Spark's ALS-WR scaling of ``lambda`` by the number of observed entries ``n_u`` of the row.
For fixed item factors ``Y`` the user's optimum solves the normal equations

    (Y^T Y + sum_{i in I_u} alpha r_ui y_i y_i^T + lambda n_u I) x_u = sum_{i in I_u} (1 + alpha r_ui) y_i

:func:`fold_in` solves exactly these, so a user folded in against a trained model's item
factors gets the vector Spark's last half-iteration gave it (checked in the tests), and new or
changed users can be refreshed without retraining.

Example
-------
>>> r = confidence(events, weights=DEFAULT_WEIGHTS)        # doctest: +SKIP
>>> model = fit(indexed, rank=64, alpha=10.0, reg=0.05, max_iter=10)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

DEFAULT_WEIGHTS: Mapping[str, float] = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0,
                                        "purchase": 8.0}


def confidence(events: DataFrame, *, weights: Mapping[str, float] = DEFAULT_WEIGHTS,
               user_col: str = "user_id", item_col: str = "item_id") -> DataFrame:
    """Sum event weights per user-item pair: ``r_ui = sum_e w(type_e)``; ``rating`` counts its value.

    Event types missing from ``weights`` count 0; pairs whose sum is not positive are dropped
    (they carry no preference).
    """
    w = F.lit(0.0)
    for t, v in weights.items():
        w = F.when(F.col("event_type") == t, F.lit(float(v))).otherwise(w)
    w = F.when(F.col("event_type") == "rating", F.col("value")).otherwise(w)
    return (events.groupBy(user_col, item_col).agg(F.sum(w).alias("r"))
            .where(F.col("r") > 0))


def fit(ratings: DataFrame, *, rank: int, alpha: float, reg: float, max_iter: int,
        seed: int = 7, checkpoint_interval: int = 5, num_blocks: int | None = None):
    """Train Spark ML implicit ALS on ``(user_idx, item_idx, r)``; returns the ``ALSModel``.

    Needs a SparkContext checkpoint directory: without one, long lineages across iterations
    overflow the stack.
    """
    from pyspark.ml.recommendation import ALS

    als = ALS(rank=rank, maxIter=max_iter, regParam=reg, alpha=alpha, implicitPrefs=True,
              userCol="user_idx", itemCol="item_idx", ratingCol="r", seed=seed,
              nonnegative=False, checkpointInterval=checkpoint_interval,
              coldStartStrategy="drop", intermediateStorageLevel="MEMORY_AND_DISK")
    if num_blocks:
        als = als.setNumUserBlocks(num_blocks).setNumItemBlocks(num_blocks)
    return als.fit(ratings)


def gram(factors: np.ndarray) -> np.ndarray:
    """``Y^T Y`` in float64 (shared by every fold-in against the same item factors)."""
    y = np.asarray(factors, dtype=np.float64)
    return y.T @ y


def fold_in(item_factors: np.ndarray, yty: np.ndarray, items: np.ndarray, r: np.ndarray, *,
            alpha: float, reg: float) -> np.ndarray:
    """Solve one user's implicit-ALS normal equations against fixed item factors.

    Parameters
    ----------
    item_factors : (n_items, k) array
        ``Y``; rows indexed by ``items``.
    yty : (k, k) array
        ``gram(item_factors)``.
    items, r : arrays of equal length
        The user's items (row numbers of ``Y``) and their summed weights ``r_ui``.

    Returns
    -------
    (k,) float32 array; zeros when the user has no positive weight.
    """
    pos = r > 0
    items, r = np.asarray(items)[pos], np.asarray(r, dtype=np.float64)[pos]
    k = yty.shape[0]
    if items.size == 0:
        return np.zeros(k, dtype=np.float32)
    y = np.asarray(item_factors[items], dtype=np.float64)
    c1 = alpha * r  # c_ui - 1
    a = yty + (y.T * c1) @ y + reg * items.size * np.eye(k)
    b = y.T @ (1.0 + c1)
    return np.linalg.solve(a, b).astype(np.float32)


def fold_in_many(item_factors: np.ndarray, yty: np.ndarray, codes: np.ndarray,
                 items: np.ndarray, c1: np.ndarray, n_users: int, *, reg: float,
                 budget: int = 1 << 22) -> tuple[np.ndarray, np.ndarray]:
    """:func:`fold_in` for many users at once, as batched dense algebra.

    Parameters
    ----------
    codes, items, c1 : arrays of equal length, sorted by ``codes``
        One entry per (user, item) with a positive weight: the user's number
        (``0 <= code < n_users``), the item's row in ``item_factors`` and ``c_ui - 1 = α r_ui``.
    budget : int
        Most float64 elements of one padded ``(users, items, rank)`` block.

    Returns
    -------
    users : (m,) codes of the users with at least one entry
    x : (m, k) float32, their solutions of
        ``(YᵀY + Σ_i c1_ui y_i y_iᵀ + λ n_u I) x_u = Σ_i (1 + c1_ui) y_i``

    Users are grouped by history length and each group's items padded to its longest
    history (padding carries weight 0), so one batched matmul and one batched solve serve
    the group: the per-user Python loop costs ~50 µs a user, this a few.
    """
    k = yty.shape[0]
    bounds = np.searchsorted(codes, np.arange(n_users + 1))
    lens = np.diff(bounds)
    users = np.flatnonzero(lens > 0)
    x = np.empty((users.size, k), np.float32)
    if users.size == 0:
        return users, x
    y = np.asarray(item_factors, dtype=np.float64)
    order = np.argsort(lens[users], kind="stable")  # similar lengths share a block
    eye = np.eye(k)
    s = 0
    while s < order.size:
        # grow the block while the padded (B, L, k) array stays within the budget
        e = s + 1
        while e < order.size and (e + 1 - s) * lens[users[order[e]]] * k <= budget:
            e += 1
        sel = order[s:e]
        u = users[sel]
        n, width = lens[u], int(lens[u].max())
        row = np.repeat(np.arange(u.size), n)
        col = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        src = np.repeat(bounds[u], n) + col
        idx = np.zeros((u.size, width), np.int64)
        w = np.zeros((u.size, width))
        rhs_w = np.zeros((u.size, width))
        idx[row, col], w[row, col], rhs_w[row, col] = items[src], c1[src], 1.0 + c1[src]
        yu = y[idx]  # (B, L, k); padded rows point at item 0 with weight 0
        a = yty + np.matmul((yu * w[..., None]).transpose(0, 2, 1), yu) \
            + (reg * n)[:, None, None] * eye
        b = np.einsum("blk,bl->bk", yu, rhs_w)
        x[sel] = np.linalg.solve(a, b[..., None])[..., 0]
        s = e
    return users, x


def fold_in_users(spark, history: DataFrame, item_factors: np.ndarray, item_row: np.ndarray, *,
                  alpha: float, reg: float) -> DataFrame:
    """Fold in every user of ``history`` (``user_id, item_idx, r``) against fixed item factors.

    ``item_factors[j]`` is the vector of item ``item_row[j]`` (an item_idx). Items without a
    vector are ignored. Returns ``user_id, factors`` (array<float>), computed on executors with
    the factors broadcast once.
    """
    y = np.ascontiguousarray(item_factors, dtype=np.float32)
    lookup = {int(i): j for j, i in enumerate(item_row)}
    bc = spark.sparkContext.broadcast((y, gram(y), lookup))
    grouped = history.groupBy("user_id").agg(
        F.collect_list("item_idx").alias("items"), F.collect_list("r").alias("rs"))

    def solve(batches):
        import pandas as pd

        y_, yty_, lookup_ = bc.value
        for pdf in batches:
            out = []
            for items, rs in zip(pdf["items"], pdf["rs"], strict=True):
                rows = np.array([lookup_.get(int(i), -1) for i in items], dtype=np.int64)
                keep = rows >= 0
                out.append(fold_in(y_, yty_, rows[keep], np.asarray(rs)[keep],
                                   alpha=alpha, reg=reg).tolist())
            yield pd.DataFrame({"user_id": pdf["user_id"], "factors": out})

    return grouped.mapInPandas(solve, "user_id string, factors array<float>")
