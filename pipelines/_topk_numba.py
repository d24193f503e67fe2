"""The streaming selection at the heart of :mod:`pipelines.topk`, compiled with numba.

Kept apart so that importing :mod:`pipelines.topk` does not pay numba's import and so that
the compiled kernel is cached on disk (``cache=True``) and reused by every Python worker.
"""

from __future__ import annotations

import numpy as np
from numba import njit


@njit(cache=True, nogil=True)
def select_into(scores, t0, key, best_s, best_i, best_k):  # pragma: no cover - compiled
    """Merge a tile of scores into each row's running top-k, in place.

    ``scores[i, j]`` is the score of item ``t0 + j`` for row ``i``; ``-inf`` marks an item
    the row must not get. Each row of ``best_s/best_i/best_k`` is kept sorted by score
    descending, then tie key ascending, and starts as (-inf, -1, INT64_MAX). An item enters
    only if it beats the row's current k-th entry, so after the first few hundred items
    almost every element costs one comparison.
    """
    b, t = scores.shape
    k = best_s.shape[1]
    neg_inf = -np.inf
    for i in range(b):
        thr = best_s[i, k - 1]
        thr_key = best_k[i, k - 1]
        for j in range(t):
            s = scores[i, j]
            if s < thr or s == neg_inf or s != s:  # below the k-th, excluded, or NaN
                continue
            kj = key[t0 + j]
            if s == thr and kj >= thr_key:
                continue
            p = k - 1  # insertion into the sorted row
            while p > 0 and (best_s[i, p - 1] < s
                             or (best_s[i, p - 1] == s and best_k[i, p - 1] > kj)):
                best_s[i, p] = best_s[i, p - 1]
                best_i[i, p] = best_i[i, p - 1]
                best_k[i, p] = best_k[i, p - 1]
                p -= 1
            best_s[i, p] = s
            best_i[i, p] = t0 + j
            best_k[i, p] = kj
            thr = best_s[i, k - 1]
            thr_key = best_k[i, k - 1]
