"""Exact top-K by dot product with each user's seen items excluded, block by block.

Users are processed in blocks of ``block`` rows and items in tiles of ``tile`` columns, so
memory is ``O(block x tile)`` whatever the catalog size: the users x items score matrix is
never materialised, and no cross join is ever planned. Within a tile, seen items are set to
``-inf`` before selection (no over-fetching of ``k + |seen|``), and a running top-K is
merged tile by tile.

Order is deterministic: score descending, then ``key`` ascending (the item id's position in
sorted order), ties at the K-th place included.

Example
-------
>>> idx, val, n = topk_block(U, V, seen=[np.array([3, 7])] * len(U), k=10, key=key)  # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

OUTPUT_SCHEMA = "user_id string, rank int, item_id string, score float"


def order_key(item_ids: np.ndarray | list[str]) -> np.ndarray:
    """Tie-break key: each item's position in the sorted list of ids."""
    ids = np.asarray(item_ids, dtype=object)
    key = np.empty(len(ids), dtype=np.int64)
    key[np.argsort(ids, kind="stable")] = np.arange(len(ids))
    return key


def _select(scores: np.ndarray, ids: np.ndarray, k: int, key: np.ndarray
            ) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the ``k`` best ``(score desc, key asc)`` of ``scores``/``ids``, ordered."""
    b, m = scores.shape
    if m > k:
        cut = m - k
        part = np.argpartition(scores, cut, axis=1)[:, cut:]
        top = np.take_along_axis(scores, part, 1)
        top_ids = np.take_along_axis(ids, part, 1)
        kth = top.min(axis=1)
        # argpartition picks ties at the boundary arbitrarily; redo those rows exactly
        n_eq = (scores == kth[:, None]).sum(1)
        n_eq_top = (top == kth[:, None]).sum(1)
        for row in np.nonzero((n_eq > n_eq_top) & np.isfinite(kth))[0]:
            s, i = scores[row], ids[row]
            above = np.nonzero(s > kth[row])[0]
            ties = np.nonzero(s == kth[row])[0]
            ties = ties[np.argsort(key[i[ties]], kind="stable")][: k - above.size]
            cols = np.concatenate([above, ties])
            top[row], top_ids[row] = s[cols], i[cols]
    else:
        top, top_ids = scores, ids
    tie = np.where(top_ids >= 0, key[np.maximum(top_ids, 0)], np.iinfo(np.int64).max)
    order = np.lexsort((tie, -top), axis=1)
    return np.take_along_axis(top, order, 1), np.take_along_axis(top_ids, order, 1)


def topk_block(users: np.ndarray, items: np.ndarray, seen: list[np.ndarray], k: int,
               key: np.ndarray, *, tile: int = 8192) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Top-``k`` items for a block of users.

    Parameters
    ----------
    users : (B, r) float32
    items : (N, r) float32
    seen : list of B int arrays
        Row numbers (into ``items``) each user must not get.
    k : int
    key : (N,) int64
        Tie-break order (:func:`order_key`).

    Returns
    -------
    idx : (B, k) int64 item rows (-1 where fewer than ``k`` unseen items exist)
    score : (B, k) float32
    count : (B,) number of valid entries per row
    """
    b = users.shape[0]
    n = items.shape[0]
    lens = np.fromiter((len(s) for s in seen), dtype=np.int64, count=b)
    seen_rows = np.repeat(np.arange(b), lens)
    seen_cols = np.concatenate(seen).astype(np.int64) if lens.sum() else np.zeros(0, np.int64)
    best = np.full((b, 0), -np.inf, dtype=np.float32)
    best_ids = np.full((b, 0), -1, dtype=np.int64)
    for t0 in range(0, n, tile):
        t1 = min(n, t0 + tile)
        s = users @ items[t0:t1].T  # float32 GEMM: (B, r) x (r, T)
        m = (seen_cols >= t0) & (seen_cols < t1)
        s[seen_rows[m], seen_cols[m] - t0] = -np.inf
        ids = np.broadcast_to(np.arange(t0, t1, dtype=np.int64), s.shape)
        cand = np.concatenate([best, s], axis=1)
        cand_ids = np.concatenate([best_ids, ids], axis=1)
        best, best_ids = _select(cand, cand_ids, k, key)
    if best.shape[1] < k:  # fewer items than k in the whole catalog
        pad = k - best.shape[1]
        best = np.pad(best, ((0, 0), (0, pad)), constant_values=-np.inf)
        best_ids = np.pad(best_ids, ((0, 0), (0, pad)), constant_values=-1)
    valid = np.isfinite(best)
    best_ids = np.where(valid, best_ids, -1)
    return best_ids, best.astype(np.float32), valid.sum(1)


def brute_force(users: np.ndarray, items: np.ndarray, seen: list[np.ndarray], k: int,
                key: np.ndarray) -> list[list[tuple[int, float]]]:
    """Reference: full score matrix and a per-user sort (tests only; O(B x N) memory)."""
    out = []
    scores = users @ items.T
    for u in range(users.shape[0]):
        allowed = np.setdiff1d(np.arange(items.shape[0]), seen[u])
        order = sorted(allowed, key=lambda i: (-scores[u, i], key[i]))[:k]
        out.append([(int(i), float(scores[u, i])) for i in order])
    return out


def recommend(spark, users: DataFrame, item_ids: list[str], item_factors: np.ndarray, *, k: int,
              block: int = 512, tile: int = 8192) -> DataFrame:
    """Top-``k`` for every row of ``users`` (``user_id, factors array<float>, seen array<int>``).

    ``seen`` holds row numbers into ``item_factors``/``item_ids``. Runs on executors with the
    item matrix broadcast once; returns ``user_id, rank, item_id, score``.
    """
    ids = np.asarray(item_ids, dtype=object)
    v = np.ascontiguousarray(item_factors, dtype=np.float32)
    bc = spark.sparkContext.broadcast((v, ids, order_key(ids)))

    def run(batches):
        import pandas as pd

        v_, ids_, key_ = bc.value
        for pdf in batches:
            for s in range(0, len(pdf), block):
                part = pdf.iloc[s:s + block]
                u = np.stack([np.asarray(f, dtype=np.float32) for f in part["factors"]]) \
                    if len(part) else np.zeros((0, v_.shape[1]), np.float32)
                seen = [np.asarray(x if x is not None else [], dtype=np.int64)
                        for x in part["seen"]]
                idx, score, count = topk_block(u, v_, seen, k, key_, tile=tile)
                rows = np.repeat(np.arange(len(part)), count)
                ranks = np.concatenate([np.arange(1, c + 1) for c in count]) if len(part) \
                    else np.zeros(0, np.int64)
                flat = idx[np.arange(k)[None, :] < count[:, None]]
                sc = score[np.arange(k)[None, :] < count[:, None]]
                yield pd.DataFrame({
                    "user_id": part["user_id"].to_numpy()[rows],
                    "rank": ranks.astype(np.int32),
                    "item_id": ids_[flat],
                    "score": sc.astype(np.float32),
                })

    return users.select("user_id", "factors", "seen").mapInPandas(run, OUTPUT_SCHEMA)


def seen_rows(seen: DataFrame, item_ids: list[str], spark) -> DataFrame:
    """``user_id, item_id`` pairs -> ``user_id, seen`` (array of row numbers into ``item_ids``).

    Items outside ``item_ids`` cannot be recommended anyway and are dropped.
    """
    rows = spark.createDataFrame([(i, r) for r, i in enumerate(item_ids)],
                                 "item_id string, row int")
    return (seen.join(F.broadcast(rows), "item_id")
            .groupBy("user_id").agg(F.collect_list("row").alias("seen")))
