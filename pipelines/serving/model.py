"""The serving model: everything a list is made from, as numpy arrays prepared once.

One :class:`ServingModel` per (model version, placements, popularity window). ``score``
broadcasts it to the executors; the stream keeps it on the driver and refreshes it when the
champion or its placed items change. Both build it with
:func:`pipelines.batch.score.load_serving_model`, and both rank with
:func:`pipelines.serving.policy.recommend`, so a list cannot depend on which path made it.

Rows. ``items`` is the *universe*: every item a list may hold (items with trained factors,
items placed from their text, popular items), sorted by id, so a row number is also the
tie-break key of the top-K kernels. ``trained`` rows are in ``item_idx`` order, the order
the trainer produced them (the fold-in's ``YᵀY`` is summed in that order, so the stream's
vectors are the same bits as the ones solved at training).

Example
-------
>>> m = ServingModel.build(None, None, None, trained=([], np.zeros((0, 1), np.float32)),
...                        placed=([], np.zeros((0, 1), np.float32)),
...                        popular=(["b", "a"], np.array([0.5, 0.25], np.float32)))
>>> m.items, m.pop_rows.tolist()
(['a', 'b'], [1, 0])
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.model import als, topk
from pipelines.model.card import ModelCard
from pipelines.model.trainer import FoldInRule


@dataclass
class ServingModel:
    """See the module docstring. Build with :meth:`build`."""

    version: int | None
    card: ModelCard | None
    rule: FoldInRule | None
    items: list[str]  # the universe, sorted
    row: dict[str, int]  # item id -> universe row
    trained_rows: np.ndarray  # (n_t,) universe rows of the trained factors, item_idx order
    trained_y: np.ndarray  # (n_t, rank) float32
    yty: np.ndarray  # (rank, rank) float64: gram(trained_y)
    trained_pos: np.ndarray  # (n,) universe row -> row of trained_y, or -1
    factor_rows: np.ndarray  # (n_f,) universe rows of every item with factors (trained, placed)
    placed: np.ndarray  # (n_f,) bool: factors mapped from text, not trained
    factor_pos: np.ndarray  # (n,) universe row -> position in factor_rows, or -1
    index: topk.ItemIndex | None  # over every item with factors
    placed_pos: np.ndarray  # (n,) universe row -> position among the placed, or -1
    placed_index: topk.ItemIndex | None
    pop_rows: np.ndarray  # (n_p,) universe rows of the popular items
    pop_pos: np.ndarray  # (n,) universe row -> position among the popular, or -1
    pop_index: topk.ItemIndex | None

    @property
    def rank(self) -> int:
        return int(self.trained_y.shape[1])

    @classmethod
    def build(cls, version: int | None, card: ModelCard | None, rule: FoldInRule | None, *,
              trained: tuple[list[str], np.ndarray], placed: tuple[list[str], np.ndarray],
              popular: tuple[list[str], np.ndarray]) -> ServingModel:
        """From (ids, vectors) of the trained items (``item_idx`` order), the placed items and
        the popular items (ids, scores). A placed id that also has trained factors is
        ignored: training wins. Cost: ``O(items x rank)`` plus sorting the ids."""
        t_ids = list(trained[0])
        t_y = np.asarray(trained[1], np.float32)
        rank = int(t_y.shape[1]) if t_y.ndim == 2 and t_y.shape[1] else 1
        t_y = t_y.reshape(len(t_ids), rank)
        have = set(t_ids)
        keep = [j for j, i in enumerate(placed[0]) if i not in have]
        p_ids = [placed[0][j] for j in keep]
        p_y = np.asarray(placed[1], np.float32).reshape(len(placed[0]), -1)[keep] if keep \
            else np.zeros((0, rank), np.float32)
        pop_ids, pop_s = list(popular[0]), np.asarray(popular[1], np.float32).reshape(-1)
        items = sorted(set(t_ids) | set(p_ids) | set(pop_ids))
        row = {i: r for r, i in enumerate(items)}
        n = len(items)

        def rows_of(ids):
            return np.fromiter((row[i] for i in ids), np.int64, len(ids))

        def positions(rows):
            pos = np.full(n, -1, np.int64)
            pos[rows] = np.arange(len(rows))
            return pos

        t_rows, p_rows = rows_of(t_ids), rows_of(p_ids)
        f_rows = np.concatenate([t_rows, p_rows])
        f_y = np.concatenate([t_y, p_y]) if len(f_rows) else np.zeros((0, rank), np.float32)
        is_placed = np.concatenate([np.zeros(len(t_rows), bool), np.ones(len(p_rows), bool)])
        pop_rows = rows_of(pop_ids)
        return cls(
            version=version, card=card, rule=rule, items=items, row=row,
            trained_rows=t_rows, trained_y=t_y,
            yty=als.gram(t_y) if len(t_ids) else np.zeros((rank, rank)),
            trained_pos=positions(t_rows), factor_rows=f_rows, placed=is_placed,
            factor_pos=positions(f_rows),
            index=topk.index_items(f_y, f_rows) if len(f_rows) else None,
            placed_pos=positions(p_rows),
            placed_index=topk.index_items(p_y, p_rows) if len(p_rows) else None,
            pop_rows=pop_rows, pop_pos=positions(pop_rows),
            pop_index=topk.index_items(pop_s.reshape(-1, 1), pop_rows) if len(pop_rows)
            else None)
