"""Pure-numpy/Python reference implementations the Spark code is checked against."""

from __future__ import annotations

import math

import numpy as np


def precision_at_k(recs: list, rel: set, k: int) -> float:
    return sum(1 for i in recs[:k] if i in rel) / k


def recall_at_k(recs: list, rel: set, k: int) -> float:
    return sum(1 for i in recs[:k] if i in rel) / len(rel)


def ndcg_at_k(recs: list, rel: set, k: int) -> float:
    dcg = sum(1.0 / math.log2(j + 2) for j, i in enumerate(recs[:k]) if i in rel)
    idcg = sum(1.0 / math.log2(j + 2) for j in range(min(k, len(rel))))
    return dcg / idcg


def ap_at_k(recs: list, rel: set, k: int) -> float:
    hits, total = 0, 0.0
    for j, i in enumerate(recs[:k], start=1):
        if i in rel:
            hits += 1
            total += hits / j
    return total / min(k, len(rel))


def mean_metrics(recs: dict, relevant: dict, k: int, catalog_size: int) -> dict:
    """Averages over users with relevant items; users without recommendations score 0."""
    users = [u for u, r in relevant.items() if r]
    out = {}
    for name, fn in (("precision", precision_at_k), ("recall", recall_at_k),
                     ("ndcg", ndcg_at_k), ("map", ap_at_k)):
        out[name] = float(np.mean([fn(recs.get(u, []), set(relevant[u]), k) for u in users]))
    out["coverage"] = len({i for lst in recs.values() for i in lst[:k]}) / catalog_size
    out["users"] = len(users)
    return out
