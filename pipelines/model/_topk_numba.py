"""The compiled heart of :mod:`pipelines.model.topk`: blocked GEMM, norm-bound pruning and selection.

Kept apart so that importing :mod:`pipelines.model.topk` does not pay numba's import, and so that
the compiled code is cached on disk (``cache=True``) and reused by every Python worker.
``np.dot`` inside numba calls SciPy's BLAS ``sgemm``; everything around it (which users are
still active, masking seen items, merging scores into the running top-k) runs here rather
than in Python, so tiles can be narrow without a per-tile interpreter cost.
"""

from __future__ import annotations

import numpy as np
from numba import njit

# Width of the segments the selection counts before it scans them (see _count_at_least).
_SEGMENT = 64


@njit(cache=True, nogil=True)
def _count_at_least(row, thr):  # pragma: no cover - compiled
    """How many entries of ``row`` are ``>= thr``.

    Branch-free, so LLVM vectorises it: about 0.08 ns an element here, against about 1 ns
    for the scan with its data-dependent branches. NaN counts as below.
    """
    c = 0
    for q in range(row.shape[0]):
        c += row[q] >= thr
    return c


@njit(cache=True, nogil=True)
def _insert(i, s, p, kp, best_s, best_i, best_k):  # pragma: no cover - compiled
    """Insert item ``p`` (score ``s``, tie key ``kp``) into row ``i``, dropping the k-th."""
    q = best_s.shape[1] - 1
    while q > 0 and (best_s[i, q - 1] < s or (best_s[i, q - 1] == s and best_k[i, q - 1] > kp)):
        best_s[i, q] = best_s[i, q - 1]
        best_i[i, q] = best_i[i, q - 1]
        best_k[i, q] = best_k[i, q - 1]
        q -= 1
    best_s[i, q] = s
    best_i[i, q] = p
    best_k[i, q] = kp


@njit(cache=True, nogil=True)
def topk_sorted(users, slack, items, item_norm, key, indptr, seen, block, first, step,
                best_s, best_i, best_k):  # pragma: no cover - compiled
    """Exact top-k of every user over items sorted by norm, descending; results in place.

    Parameters
    ----------
    users : (B, r) float32, C-contiguous
    slack : float
        Relative slack added to ``|u|`` in the bound, for float32 rounding of the scores.
    items : (N, r) float32, rows sorted by ``item_norm`` descending
    item_norm : (N,) float64, descending
    key : (N,) int64
        Tie-break key of each (sorted) item: lower wins among equal scores.
    indptr, seen : CSR of each user's excluded items, as positions in the sorted order
    block, first, step : int
        Users per block; width of the first item tile and of every later one.
    best_s, best_i, best_k : (B, k)
        Running top-k per user, sorted by (score desc, key asc); start as
        (-inf, -1, INT64_MAX). ``best_i`` holds sorted positions.

    For a block of users, item tiles are scored with one GEMM each, in norm order. Before
    each tile a user leaves the block when its k-th score beats ``|u| max_{j >= t0} |v_j|
    = |u| |v_t0|``, which by Cauchy-Schwarz bounds every score still to come; the block's
    GEMM then runs on the remaining users only. Seen items get ``-inf`` in the tile. Each
    user's row of the tile is taken in segments: a segment in which no score reaches the
    current k-th is passed over after a vectorised count, the others are scanned in order
    and merged, so the answer does not depend on the segmenting.
    """
    b, r = users.shape
    n = items.shape[0]
    neg_inf = -np.inf
    # buffers reused by every block and tile: with a fresh score matrix per GEMM, libc took
    # 18% of a Spark worker's samples in a native profile
    score_buf = np.empty(min(block, b) * max(first, step), np.float32)
    user_buf = np.empty((min(block, b), r), np.float32)
    bound_norm = np.empty(b)
    for i in range(b):
        acc = 0.0  # float64: the bound must not round below the float32 scores
        for d in range(r):
            acc += np.float64(users[i, d]) ** 2
        bound_norm[i] = np.sqrt(acc) * (1.0 + slack)
    for b0 in range(0, b, block):
        b1 = min(b, b0 + block)
        active = np.arange(b0, b1)
        na = b1 - b0
        user_buf[:na] = users[b0:b1]
        t0 = 0
        while t0 < n:
            bound = item_norm[t0]
            m = 0
            for a in range(na):
                i = active[a]
                if not (best_s[i, -1] > bound_norm[i] * bound + 1e-30):
                    if m < a:  # finished users leave the GEMM
                        active[m] = i
                        user_buf[m] = users[i]
                    m += 1
            na = m
            if na == 0:
                break
            t1 = min(n, t0 + (first if t0 == 0 else step))
            width = t1 - t0
            scores = score_buf[:na * width].reshape((na, width))
            np.dot(user_buf[:na], items[t0:t1].T, scores)  # float32 GEMM
            for a in range(na):
                i = active[a]
                row = scores[a]
                for e in range(indptr[i], indptr[i + 1]):
                    p = seen[e]
                    if p >= t0 and p < t1:
                        row[p - t0] = neg_inf
                thr = best_s[i, -1]
                thr_key = best_k[i, -1]
                for j0 in range(0, width, _SEGMENT):
                    j1 = min(width, j0 + _SEGMENT)
                    if _count_at_least(row[j0:j1], thr) == 0:
                        continue
                    for j in range(j0, j1):
                        s = row[j]
                        if not s >= thr or s == neg_inf:  # below the k-th, seen, or NaN
                            continue
                        p = t0 + j
                        kp = key[p]
                        if s == thr and kp >= thr_key:
                            continue
                        _insert(i, s, p, kp, best_s, best_i, best_k)
                        thr = best_s[i, -1]
                        thr_key = best_k[i, -1]
            t0 = t1
