"""The one recommendation-list policy, and the one definition of popularity.

``score`` (inside its per-batch function, on the executors) and the stream's refresh (on the
driver) both call :func:`recommend`; nothing else decides what a list holds. For each user,
with ``seen`` every item of their history:

1. **Model rows.** A user with a vector gets the top ``k`` unseen items with factors by
   ``x_u . y_i`` (trained and text-placed items on one scale), ties broken by item id
   (:func:`pipelines.model.topk.topk_block`); the score written is that dot product in
   float64, rounded to float32, so it depends on nothing but the two vectors. ``source`` is ``model_source`` (``als`` in
   ``score``, ``fold_in`` in the stream), or ``content`` for a placed item.
2. **New-item slots.** The last ``slots`` places go to the user's best unseen placed items
   not already in the first ``k - slots``; the rest of the model list fills what is left. A
   ridge-mapped factor is a shrunk conditional mean and rarely out-scores the popular warm
   items on its own, so without the slots new items would never be shown, and never
   collect the interactions the next training needs.
3. **Popular top-up.** A list shorter than ``k`` (no vector, or nearly everything seen) is
   filled with the most popular items that are neither seen nor already listed
   (``source = popular``), by :func:`popularity` scores, ties by item id.

So every user gets exactly ``k`` rows unless fewer than ``k`` recommendable items are unseen.

Popularity (:func:`popularity`) is the share of the distinct users of a window who touched
the item; the window (:func:`popularity_window`) is the model's own: the last
``popularity_days`` of its training window (chosen at training on the validation split; the
whole window when unset), fixed per model version so the stream's appends do not move it;
with no model, the last ``DEFAULTS.popularity_days`` of the data.

Example
-------
>>> lists = recommend(model, vectors, has_vec, (indptr, seen_rows), k=10, slots=1,
...                   model_source="als")                          # doctest: +SKIP
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.model import topk
from pipelines.model.card import DEFAULTS, ModelCard
from pipelines.serving.model import ServingModel

# the sources of trained rows (one per trainer: ``item_factors.source``, ``score``'s model
# rows); ``fold_in`` marks the stream's refreshed vectors, ``content`` text-placed items
TRAINED_SOURCES = ("als", "ease")
SOURCES = (*TRAINED_SOURCES, "fold_in", "content", "popular")
Kernel = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class PopularityWindow:
    """Events with ``start <= ts < end`` (``end`` open when ``None``) that arrived on or
    before ``max_dt`` (any arrival date when ``None``)."""

    start: _dt.datetime | None
    end: _dt.datetime | None
    max_dt: _dt.date | None


def popularity_window(card: ModelCard | None, *, latest: _dt.datetime | None,
                      days: int | None = None) -> PopularityWindow:
    """The window popularity is counted over (see the module docstring).

    ``days`` narrows it to the last ``days`` before its end; ``latest`` (the newest event
    time) anchors the window when there is no trained model.
    """
    if card is not None and card.end is not None:
        return PopularityWindow(
            card.end - _dt.timedelta(days=days or card.popularity_days or card.window_days),
            card.end, card.as_of)
    if latest is None:
        return PopularityWindow(None, None, None)
    return PopularityWindow(latest - _dt.timedelta(days=days or DEFAULTS.popularity_days),
                            None, None)


def popularity(item_ids: Sequence[str], users_per_item, total_users: int
               ) -> tuple[list[str], np.ndarray]:
    """Items and their popularity: the share of the window's users who touched each.

    ``users_per_item`` are distinct-user counts (Spark or pandas computes them; this is the
    only place they become scores). Returns ids sorted, float32 scores.
    """
    counts = np.asarray(users_per_item, dtype=np.float64).reshape(-1)
    order = np.argsort(np.asarray(item_ids, dtype=object), kind="stable")
    share = counts[order] / max(1, int(total_users))
    return [item_ids[j] for j in order], share.astype(np.float32)


@dataclass
class Lists:
    """Flat output of :func:`recommend`: one entry per list row, users in input order."""

    user: np.ndarray  # (m,) int64 position of the user in the input
    rank: np.ndarray  # (m,) int32, 1 = best
    row: np.ndarray  # (m,) int64 universe row of the item
    score: np.ndarray  # (m,) float32
    source: np.ndarray  # (m,) object: one of SOURCES

    def __len__(self) -> int:
        return int(self.user.size)


def _csr_take(indptr: np.ndarray, rows: np.ndarray, pos: np.ndarray, users: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """For the given users, their seen universe rows mapped through ``pos`` (dropping -1)."""
    lens = indptr[users + 1] - indptr[users]
    starts = np.repeat(indptr[users] - (np.cumsum(lens) - lens), lens)
    take = starts + np.arange(int(lens.sum()))
    mapped = pos[rows[take]] if take.size else np.zeros(0, np.int64)
    keep = mapped >= 0
    owner = np.repeat(np.arange(users.size), lens)[keep]
    out_ptr = np.zeros(users.size + 1, np.int64)
    np.cumsum(np.bincount(owner, minlength=users.size), out=out_ptr[1:])
    return out_ptr, mapped[keep].astype(np.int64)


def _exact_scores(u: np.ndarray, index, idx: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The chosen items' scores again, each one dot product in float64 rounded to float32.

    The kernels' float32 GEMM rounds a score differently with the other users of its block
    (BLAS edge kernels), so the same user could get scores one ulp apart from ``score`` and
    from the stream. Recomputed here, a score depends only on the two vectors. Cost:
    ``O(B k rank)``.
    """
    out = np.full(idx.shape, -np.inf, np.float32)
    valid = np.arange(idx.shape[1])[None, :] < count[:, None]
    if valid.any():
        rows, cols = np.nonzero(valid)
        v = index.factors[index.position[idx[rows, cols]]].astype(np.float64)
        out[rows, cols] = (u[rows].astype(np.float64) * v).sum(axis=1).astype(np.float32)
    return out


def recommend(model: ServingModel, vectors: np.ndarray, has_vec: np.ndarray,
              seen: tuple[np.ndarray, np.ndarray], *, k: int, slots: int,
              model_source: str, kernel: Kernel | None = None) -> Lists:
    """The lists of ``B`` users (see the module docstring for the rules).

    Parameters
    ----------
    vectors : (B, rank) float32; rows where ``has_vec`` is false are ignored
    has_vec : (B,) bool
    seen : CSR ``(indptr, rows)``: each user's seen items as universe rows (``model.row``)
    k, slots : list length and new-item slots
    model_source : the trainer's name (``als``, ``ease``) or ``fold_in``
    kernel : the top-K kernel for the model rows (default the CPU kernel,
        :func:`pipelines.model.topk.topk_block`; ``score`` passes the GPU one on GPU tasks)

    Cost: one kernel call over the users with vectors (``O(B x scored items x rank)``, the
    norm bound keeps most of the catalog unscored), one over the placed items when there are
    slots, one over the popular items for short lists; ``O(B k)`` Python for the merges.
    """
    kernel = kernel or topk.topk_block
    b = len(has_vec)
    indptr, rows = (np.asarray(seen[0], np.int64), np.asarray(seen[1], np.int64))
    lists: list[list[tuple[int, float, str]]] = [[] for _ in range(b)]
    with_vec = np.flatnonzero(np.asarray(has_vec, bool))
    if with_vec.size and model.index is not None and k > 0:
        u = np.ascontiguousarray(np.asarray(vectors, np.float32)[with_vec])
        idx, _, count = kernel(u, model.index, _csr_take(indptr, rows, model.factor_pos,
                                                         with_vec), k)
        score = _exact_scores(u, model.index, idx, count)
        n_slots = min(slots, k) if model.placed_index is not None else 0
        if n_slots:
            c_idx, _, c_count = topk.topk_block(
                u, model.placed_index, _csr_take(indptr, rows, model.placed_pos, with_vec),
                n_slots)
            c_score = _exact_scores(u, model.placed_index, c_idx, c_count)
        n_trained = len(model.trained_rows)
        for j, user in enumerate(with_vec):
            main = [(int(model.factor_rows[idx[j, q]]), float(score[j, q]),
                     "content" if model.placed[idx[j, q]] else model_source)
                    for q in range(int(count[j]))]
            # in the order of the scores written (the kernel's float32 ones may differ in
            # the last bit), ties by item id
            main.sort(key=lambda e: (-e[1], e[0]))
            if n_slots:
                head = main[:k - n_slots]
                taken = {r for r, _, _ in head}
                head += [(int(model.factor_rows[n_trained + c_idx[j, q]]), float(c_score[j, q]),
                          "content") for q in range(int(c_count[j]))
                         if int(model.factor_rows[n_trained + c_idx[j, q]]) not in taken]
                taken = {r for r, _, _ in head}
                main = (head + [e for e in main[k - n_slots:] if e[0] not in taken])[:k]
            lists[user] = main
    short = np.array([u for u in range(b) if len(lists[u]) < k], np.int64)
    if short.size and model.pop_index is not None and k > 0:
        s_ptr, s_rows = _csr_take(indptr, rows, model.pop_pos, short)
        excl = []
        for j, user in enumerate(short):
            listed = [model.pop_pos[r] for r, _, _ in lists[user]]
            excl.append(np.concatenate([s_rows[s_ptr[j]:s_ptr[j + 1]],
                                        np.array([p for p in listed if p >= 0], np.int64)]))
        idx, score, count = topk.topk_block(np.ones((short.size, 1), np.float32),
                                            model.pop_index, excl, k)
        for j, user in enumerate(short):
            need = k - len(lists[user])
            lists[user] += [(int(model.pop_rows[idx[j, q]]), float(score[j, q]), "popular")
                            for q in range(min(int(count[j]), need))]
    lens = np.fromiter((len(x) for x in lists), np.int64, b)
    flat = [e for x in lists for e in x]
    return Lists(
        user=np.repeat(np.arange(b), lens),
        rank=np.concatenate([np.arange(1, n + 1, dtype=np.int32) for n in lens])
        if b else np.zeros(0, np.int32),
        row=np.fromiter((e[0] for e in flat), np.int64, len(flat)),
        score=np.fromiter((e[1] for e in flat), np.float32, len(flat)),
        source=np.array([e[2] for e in flat], dtype=object))
