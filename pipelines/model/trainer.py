"""The trainer seam: what a model family must provide so that lakerec can train, evaluate,
serve and fold in users with it.

A :class:`Trainer` fits item factors ``Y`` on ``(user_idx, item_idx, r)`` pairs and states
the :class:`FoldInRule` its objective implies: for fixed ``Y``, the user vector that model
would have learned from a history. Evaluation, ``score`` (through the users' served vectors)
and the stream (for every touched user) all solve that rule with
:func:`pipelines.model.als.fold_in_many`, so a new family plugs in with its ``fit`` and its
rule, and nothing downstream changes. :class:`pipelines.batch.trainers.SparkALS` is the first
implementation.

Example
-------
>>> rule = FoldInRule(alpha=5.0, reg=0.05)
>>> rule.ridge(4), FoldInRule(alpha=5.0, reg=0.05, reg_per_entry=False).ridge(4)
(0.2, 0.05)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np


@dataclass(frozen=True)
class FoldInRule:
    """The implicit-feedback least squares a user vector solves against fixed item factors.

        x_u = argmin_x  Σ_i c_ui (p_ui − xᵀy_i)² + λ_u |x|²,   c_ui = 1 + α r_ui,
        λ_u = reg · n_u  (``reg_per_entry``: Spark's ALS-WR)  or  reg,

    with ``p_ui = 1`` on the user's ``n_u`` items and 0 elsewhere. Its normal equations are

        (YᵀY + Σ_{i∈I_u} α r_ui y_i y_iᵀ + λ_u I) x_u = Σ_{i∈I_u} (1 + α r_ui) y_i.

    ``kind = "history"`` is the other rule: no solve, the user vector is a sum over the
    history's items (EASE, :func:`pipelines.model.ease.fold_in`); ``alpha`` and ``reg`` are
    then unused.
    """

    alpha: float
    reg: float
    reg_per_entry: bool = True
    kind: str = "ials"

    def __post_init__(self) -> None:
        if self.kind not in ("ials", "history"):
            raise ValueError(f"unknown fold-in kind {self.kind!r} (ials or history)")

    def ridge(self, n_items):
        """``λ_u`` for users with ``n_items`` entries (scalar or array)."""
        return self.reg * n_items if self.reg_per_entry else self.reg + 0 * np.asarray(n_items)

    def c1(self, r):
        """``c_ui − 1 = α r_ui``."""
        return self.alpha * np.asarray(r, dtype=np.float64)


@dataclass
class TrainedModel:
    """What a trainer returns: item factors for the items it learned, and its fold-in rule.

    Attributes
    ----------
    item_idx : (n,) int64, the ``item_index`` ids of the rows of ``y``
    y : (n, rank) float32 item factors
    rule : how users are solved against ``y``
    native : the framework's own model object (logged to MLflow as it is)
    """

    item_idx: np.ndarray
    y: np.ndarray
    rule: FoldInRule
    native: Any = field(default=None, repr=False)


class Trainer(Protocol):
    """A model family (see the module docstring)."""

    name: str

    def fit(self, spark, pairs, card) -> TrainedModel:
        """Fit on ``pairs`` (``user_idx, item_idx, r`` DataFrame) with the settings of ``card``."""

    def fold_in_rule(self, card) -> FoldInRule:
        """The rule this family's objective implies, for a model trained with ``card``."""

    def log_model(self, model: TrainedModel, card) -> Any:
        """Log ``model.native`` to the active MLflow run and register it; returns the info."""
